"""Golden change sets: one folder per case under fixtures/gitops/ (desired.yaml, live.yaml, expected.json).

Regenerate after an intended change with FLEET_MCP_REGEN_GOLDEN=1, then review the JSON diff.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet_mcp.fleet.spec import KIND_BY_SECTION, SPEC_BY_KIND, fingerprint
from fleet_mcp.gitops.diff import LiveResource, Suppression, diff
from fleet_mcp.gitops.fleetfile import parse_fleet_file

CASES_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "gitops"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "desired.yaml").exists())
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _defaults(kind: str) -> dict[str, Any]:
    out = {}
    for name, f in SPEC_BY_KIND[kind].model_fields.items():
        if not f.is_required():
            out[name] = f.get_default(call_default_factory=True)
    return out


def load_live(path: Path) -> tuple[list[LiveResource], dict[tuple[str, str], Suppression]]:
    """live.yaml holds stored attributes as-is (top-level defaults filled, nothing validated: legacy rows)."""
    doc = yaml.safe_load(path.read_text()) or {}
    live = []
    for section, kind in KIND_BY_SECTION.items():
        for name, attrs in (doc.get(section) or {}).items():
            defaults = _defaults(kind)
            full = {k: attrs.get(k, defaults.get(k)) for k in SPEC_BY_KIND[kind].model_fields}
            full.update({k: v for k, v in attrs.items() if k not in full})
            live.append(LiveResource(kind=kind, name=name, attributes=full, fingerprint=fingerprint(full)))
    suppressed = {}
    for s in doc.get("suppressed") or []:
        until = dt.datetime.fromisoformat(s["until"]) if s.get("until") else None
        suppressed[(s["kind"], s["name"])] = Suppression(until=until, reason=s.get("reason"))
    return live, suppressed


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 8


@pytest.mark.parametrize("case", CASES)
def test_golden_changeset(case: str) -> None:
    folder = CASES_DIR / case
    desired = parse_fleet_file((folder / "desired.yaml").read_bytes())
    live, suppressed = load_live(folder / "live.yaml")
    got = diff(desired, live, suppressed, NOW).to_json(fingerprints=False)
    expected_file = folder / "expected.json"
    if os.environ.get("FLEET_MCP_REGEN_GOLDEN"):
        expected_file.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    assert got == json.loads(expected_file.read_text())
    # Secrets never leave the diff, whatever the case.
    text = json.dumps(got)
    for secret in ("hunter2", "s3cr3t", "abc123", "AAAA"):
        assert secret not in text


def test_diff_is_pure_and_deterministic() -> None:
    folder = CASES_DIR / "mixed_ordering"
    desired = parse_fleet_file((folder / "desired.yaml").read_bytes())
    live, suppressed = load_live(folder / "live.yaml")
    a = diff(desired, live, suppressed, NOW).to_json()
    b = diff(desired, list(reversed(live)), suppressed, NOW).to_json()
    assert a == b


def test_expiring_suppression_needs_now() -> None:
    folder = CASES_DIR / "suppressed"
    desired = parse_fleet_file((folder / "desired.yaml").read_bytes())
    live, suppressed = load_live(folder / "live.yaml")
    with pytest.raises(ValueError, match="needs `now`"):
        diff(desired, live, suppressed)
