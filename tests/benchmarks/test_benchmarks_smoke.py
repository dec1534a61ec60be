"""The benchmark suite's building blocks do what the report claims (no timings asserted)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from benchmarks.common import Figure, Series, judge, percentile
from benchmarks.gitops import apply_yaml, fleet_yaml
from benchmarks.plot import Canvas, write_plot
from benchmarks.report import console_table, merge, plot_groups, render_markdown
from benchmarks.rotation import AesFloor, local_sqlite_floor


def test_percentile_and_targets() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    assert judge(1.4, "<=", 1.5) is True and judge(1.6, "<=", 1.5) is False
    assert judge(0.69, ">=", 0.7) is False and judge(1.0, "==", 1) is True
    assert judge(None, "<=", 1.5) is None


def test_generated_fleet_files_parse_to_the_requested_size() -> None:
    from fleet_mcp.gitops.fleetfile import parse_fleet_file

    assert parse_fleet_file(fleet_yaml(1000)).count == 1000
    desired = parse_fleet_file(apply_yaml(10, "x"))
    assert desired.count == 10 and len(desired.resources["template"]) == 5


def test_rotation_floor_rewraps_every_row_and_keeps_plaintexts(tmp_path: Path) -> None:
    aes = AesFloor()
    ct = aes.encrypt(b"secret", 1)
    v2 = aes.rotate()
    new = aes.rewrap(ct, v2)
    assert new.startswith("vault:v2:") and new != ct
    assert aes.rewrap(new, aes.rotate()).startswith("vault:v3:")
    times, n = local_sqlite_floor(tmp_path, 2500, 2)
    assert n == 2500 and len(times) == 2  # it raises unless every row was rewrapped on each pass


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    raw = zlib.decompress(data[idat + 4 : idat + 4 + length])
    assert len(raw) == height * (1 + 3 * width)
    return width, height


def test_plot_writes_a_valid_png(tmp_path: Path) -> None:
    cv = Canvas(20, 10)
    cv.line(0, 0, 19, 9, (255, 0, 0))
    assert _png_size(cv.png()) == (20, 10)
    out = tmp_path / "plot.png"
    groups = {"cost": [Series("cost", "a", [(1000, 0.01), (10_000, 0.1)]), Series("cost", "b", [(1000, 0.5)])]}
    writer = write_plot(out, groups)
    if writer == "builtin":
        assert _png_size(out.read_bytes())[0] == 760


def _results(fam: str, value: float, mode: str = "full") -> dict:
    fig = Figure(family=fam, name="x", label=f"{fam} figure", value=value, unit="s", floor_value=0.5,
                 floor_label="floor", ratio=value / 0.5, target_op="<=", target=1.5, met=value / 0.5 <= 1.5,
                 command=f"python -m benchmarks --only {fam}")
    return {"mode": mode, "started_at": "2026-01-01T00:00:00+00:00", "family_order": ["a", "b"],
            "machine": {"cpu_count": 2, "python": "3.11", "sqlite": "3.40", "commit": "abc", "packages": {}},
            "families": {fam: {"title": fam.upper(), "description": "d", "duration_s": 1.0, "ran_at": "t"}},
            "figures": [fig.to_json()], "series": [{"plot": "p", "label": "l", "points": [[1, 1.0], [10, 2.0]],
                                                    "family": fam}]}


def test_report_states_floors_ratios_misses_and_rerun_commands() -> None:
    merged = merge(_results("a", 0.6), _results("b", 2.0))
    assert [f["family"] for f in merged["figures"]] == ["a", "b"] and set(merged["families"]) == {"a", "b"}
    md = render_markdown(merged, "../plot.png", {"b/x": "the cause found with the profiler"})
    assert "python -m benchmarks --only a" in md and "python -m benchmarks --only b" in md
    assert "**MISSED**" in md and "the cause found with the profiler" in md
    assert "500.00 ms (floor)" in md and "| 4.00 |" in md
    assert "![cost against size](../plot.png)" in md
    table = console_table([Figure.from_json(f) for f in merged["figures"]])
    assert "MISSED" in table and "met" in table
    assert plot_groups(merged["series"])["p"][0].points == [(1, 1.0), (10, 2.0)]
    json.dumps(merged)


def test_a_retired_family_stays_as_a_record_and_judges_nothing() -> None:
    """A family whose subject was removed (not in the run's family order) keeps its last figures, marked
    retired with its finding beside them; its missed rows are not listed as today's misses."""
    old = _results("gone", 2.0)  # a missed row
    current = _results("a", 0.6)
    merged = merge(old, current)
    assert set(merged["families"]) == {"gone", "a"}
    md = render_markdown(merged, None, {"gone": "why it was retired"})
    assert "## GONE (retired)" in md and "why it was retired" in md and "no longer exists" in md
    assert "**MISSED**" in md  # its row still shows what it measured
    assert "No stated target was missed in this run." in md and "Nothing was missed in this run." in md
    # A full run (no --only) keeps nothing of the previous run but the retired families.
    from benchmarks.report import retired_only

    full = merge(retired_only(merge(old, _results("b", 0.6)), ["a", "b"]), current)
    assert set(full["families"]) == {"gone", "a"} and {f["family"] for f in full["figures"]} == {"gone", "a"}


def test_a_row_with_error_results_is_judged_missed(tmp_path: Path) -> None:
    from benchmarks.common import RunContext

    ctx = RunContext(quick=True, family="f", tmp=tmp_path, machine={})
    good = ctx.add("a", "fast but failing", 1.0, "s", floor=1.0, target=("<=", 1.5), errors=3)
    assert good.met is False and "3 error results" in good.note
    assert ctx.add("b", "fast", 1.0, "s", floor=1.0, target=("<=", 1.5)).met is True
    assert ctx.add("c", "no target, failing", 1.0, "MiB", errors=1).met is False


def test_report_shows_each_familys_machine_and_names_speed_ups(tmp_path: Path) -> None:
    from benchmarks.common import RunContext

    res = _results("a", 0.6)
    res["families"]["a"]["machine"] = {"cpu_count": 2, "cpu_model": "Test CPU 9000", "memory_bytes": 8 * 2**30,
                                       "python": "3.11", "sqlite": "3.40", "commit": "c0ffee", "dirty": True}
    ctx = RunContext(quick=True, family="a", tmp=tmp_path, machine={})
    ctx.add("tick", "tick: speed-up", 0.01, "s", floor=1.0, floor_label="full report", ratio=100.0,
            target=(">=", 20.0), compare="speed-up")
    res["figures"].append(ctx.figures[-1].to_json())
    md = render_markdown(res, None, {})
    assert "Test CPU 9000" in md and "8.0 GiB memory" in md and "`c0ffee` (with uncommitted changes)" in md
    assert "*speed-up over* 1.00 s (full report)" in md


def test_strict_run_fails_when_a_family_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    import benchmarks.__main__ as runner

    crashy = types.ModuleType("benchmarks.crashy")
    crashy.TITLE = "Crashy"  # type: ignore[attr-defined]

    async def run(ctx: object) -> None:
        raise RuntimeError("boom")

    crashy.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.crashy", crashy)
    monkeypatch.setattr(runner, "FAMILIES", ("crashy",))
    monkeypatch.setattr(runner, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(runner, "ROOT", tmp_path)
    monkeypatch.setattr(runner, "result_path", lambda date, quick: tmp_path / "r.json")
    monkeypatch.setattr(runner, "latest", lambda quick: None)
    monkeypatch.setattr(runner, "machine_info", lambda: {"cpu_count": 1, "python": "3", "sqlite": "3"})
    assert runner.main(["--quick", "--only", "crashy", "--docs", "never", "--strict"]) == 1
    assert runner.main(["--quick", "--only", "crashy", "--docs", "never"]) == 0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert "boom" in saved["families"]["crashy"]["error"] and saved["families"]["crashy"]["machine"]
