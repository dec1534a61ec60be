"""The `tools/` contracts: one JSON file per tool, generated from the registry."""

from __future__ import annotations

import json
from pathlib import Path

from fleet_mcp.registry import select


def render() -> dict[str, str]:
    return {f"{s.name}.json": json.dumps(s.contract(), indent=2, sort_keys=True) + "\n" for s in select()}


def write_contracts(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    files = render()
    for old in out.glob("system_*.json"):
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        (out / name).write_text(text)
    return len(files)


def check_contracts(out: Path) -> list[str]:
    files = render()
    problems = []
    for name, text in files.items():
        path = out / name
        if not path.exists():
            problems.append(f"missing: {path}")
        elif path.read_text() != text:
            problems.append(f"stale: {path}")
    for old in out.glob("system_*.json") if out.exists() else []:
        if old.name not in files:
            problems.append(f"no such tool any more: {old}")
    return problems
