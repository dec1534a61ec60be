"""The scale-out suite's invariant checker can fail: a deliberately broken outcome of a run (a duplicated write
row, a lost write, a change without its audit row, an approval run twice, a credential left behind) is caught,
and a violation fails the family, so `python -m benchmarks --quick --strict` fails CI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from benchmarks.scaleout import Outcome, check_invariants, render_reliability


def _good() -> Outcome:
    return Outcome(
        acknowledged={"template": ["fr-w0-1", "fr-w0-2"], "credential": ["fr-c0-1"]},
        # fr-gone-0: its client went away mid-call, so it was not acknowledged; present with its audit row is fine.
        present={"template": {"fr-w0-1": 1, "fr-w0-2": 1, "fr-gone-0": 1}, "credential": {"fr-c0-1": 1}},
        audited_ok={"template": {"fr-w0-1": 1, "fr-w0-2": 1, "fr-gone-0": 1}, "credential": {"fr-c0-1": 1}},
        calls_by_tool={"system_put_template": 3}, audit_by_tool={"system_put_template": 3},
        executions={"apr_1": 1, "apr_2": 0, "in-client:fr-del-1": 1},
        credentials=1500, credentials_undecryptable=0, credentials_behind=0, latest_version=2,
        rotation_status="completed", applied_revisions={"fr-synct00000": 1, "fr-syncm00000": 1},
        applied_proposals={"fr-synct00000": 1}, sync_applies_ok=1, sync_expected=2,
    )


def test_a_clean_outcome_passes() -> None:
    assert check_invariants(_good()) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"present": {"template": {"fr-w0-1": 2, "fr-w0-2": 1, "fr-gone-0": 1}, "credential": {"fr-c0-1": 1}}},
     "template write(s) duplicated (e.g. fr-w0-1 ×2)"),
    ({"present": {"template": {"fr-w0-1": 1, "fr-gone-0": 1}, "credential": {"fr-c0-1": 1}}},
     "1 acknowledged template write(s) lost (e.g. fr-w0-2)"),
    ({"audited_ok": {"template": {"fr-w0-1": 1, "fr-w0-2": 1}, "credential": {"fr-c0-1": 1}}},
     "1 template change(s) without their audit row (e.g. fr-gone-0)"),
    ({"audit_by_tool": {"system_put_template": 2}}, "system_put_template: 2 audit rows for 3 calls"),
    ({"audit_verify_ok": False, "audit_verify_text": "audit chain BROKEN at seq 7"}, "audit chain BROKEN at seq 7"),
    ({"executions": {"apr_1": 2}}, "1 approval(s) executed more than once (e.g. apr_1 ×2)"),
    ({"replays_run": 1}, "replayed in-client approval answer(s) ran the operation again"),
    ({"credentials_undecryptable": 3}, "3 of 1500 credentials do not decrypt"),
    ({"credentials_behind": 40}, "40 of 1500 credentials are not on the latest key version (v2)"),
    ({"rotation_status": "paused"}, "the pepper rotation ended paused"),
    ({"applied_revisions": {"fr-synct00000": 2, "fr-syncm00000": 1}}, "applied more than once (e.g. fr-synct00000 at revision 2)"),
    ({"sync_applies_ok": 2}, "the sync run was applied 2 times"),
    ({"applied_revisions": {"fr-synct00000": 1}}, "the sync run applied 1 of its 2 resources"),
])
def test_a_broken_outcome_is_caught(change: dict, expected: str) -> None:
    bad = check_invariants(dataclasses.replace(_good(), **change))
    assert len(bad) == 1 and expected in bad[0], bad


def test_a_violation_fails_the_family_and_the_strict_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The family raises on a violated invariant; the runner records it as the family's error and --strict
    exits 1, and docs/RELIABILITY.md names the violation."""
    import sys
    import types

    import benchmarks.__main__ as runner
    import benchmarks.scaleout as scaleout

    broken = dataclasses.replace(_good(), present={"template": {"fr-w0-1": 2, "fr-w0-2": 1, "fr-gone-0": 1},
                                                   "credential": {"fr-c0-1": 1}})
    fake = types.ModuleType("benchmarks.brokenscaleout")
    fake.TITLE = scaleout.TITLE  # type: ignore[attr-defined]

    async def run(ctx: object) -> None:
        bad = check_invariants(broken)
        ctx.details = {"faults": None}  # type: ignore[attr-defined]
        if bad:
            raise scaleout.InvariantViolated("; ".join(bad))

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.brokenscaleout", fake)
    monkeypatch.setattr(runner, "FAMILIES", ("brokenscaleout",))
    monkeypatch.setattr(runner, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(runner, "ROOT", tmp_path)
    monkeypatch.setattr(runner, "result_path", lambda date, quick: tmp_path / "r.json")
    monkeypatch.setattr(runner, "latest", lambda quick: None)
    monkeypatch.setattr(runner, "machine_info", lambda: {"cpu_count": 2, "python": "3", "sqlite": "3"})
    assert runner.main(["--quick", "--only", "brokenscaleout", "--docs", "never", "--strict"]) == 1
    saved = json.loads((tmp_path / "r.json").read_text())
    err = saved["families"]["brokenscaleout"]["error"]
    assert err.startswith("InvariantViolated") and "duplicated" in err

    # The page names the failure when the family is the scale-out one.
    saved["families"] = {"scaleout": saved["families"]["brokenscaleout"]}
    page = render_reliability(saved)
    assert page is not None and "**This run failed:**" in page and "duplicated" in page
