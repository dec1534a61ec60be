"""The runnable examples and `fleet-mcp demo` work end to end, as a user runs them (CI runs them here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*/run.py"))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLEET_MCP_")}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_example_runs(script: Path) -> None:
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=_env(),
                          cwd=ROOT)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def test_demo_runs_end_to_end() -> None:
    proc = subprocess.run([sys.executable, "-m", "fleet_mcp", "demo"], capture_output=True, text=True, timeout=600,
                          env=_env(), cwd=ROOT)
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    out = proc.stdout
    assert "approved in the client" in out and "demo finished" in out
    assert "Traceback" not in out + proc.stderr
