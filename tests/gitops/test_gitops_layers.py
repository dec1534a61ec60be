"""Layering of the GitOps code: the service package never reaches up to the gate, the tool registry,
the scheduler, MCP or client presentation code; the jobs that call tools live in `fleet_mcp.jobs`
and `serve`'s scheduler still registers them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fleet_mcp

PACKAGE = Path(fleet_mcp.__file__).parent
ABOVE_SERVICES = ("fleet_mcp.gate", "fleet_mcp.registry", "fleet_mcp.scheduler", "fleet_mcp.app",
                  "fleet_mcp.context", "fleet_mcp.tools", "fleet_mcp.jobs", "fleet_mcp.server",
                  "fleet_mcp.demo", "fleet_mcp.cli", "mcp")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # module level and inside functions
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_the_gitops_service_package_imports_nothing_above_it() -> None:
    offenders = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in sorted((PACKAGE / "gitops").glob("*.py"))
        for name in _imports(path)
        if any(name == top or name.startswith(top + ".") for top in ABOVE_SERVICES)
    }
    assert offenders == set()


def test_no_client_presentation_code_in_the_service_package() -> None:
    # The demo drives tools through a client and prints: it belongs beside fleet_mcp/demo.py.
    assert not (PACKAGE / "gitops" / "demo.py").exists()
    assert (PACKAGE / "demo_gitops.py").exists()


def test_serve_registers_the_gitops_jobs() -> None:
    """In a fresh interpreter, as `serve` does: the scheduler imports the job modules itself."""
    code = (
        "import anyio\n"
        "from fleet_mcp import scheduler\n"
        "async def main():\n"
        "    async with scheduler.run_scheduler(None, enabled=False):\n"
        "        pass\n"
        "anyio.run(main)\n"
        "print(' '.join(f'{name}={fn.__module__}' for name, _, fn, _ in scheduler.JOBS))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    jobs = dict(pair.split("=") for pair in out)
    assert {n: m for n, m in jobs.items() if n.startswith("gitops.")} == {
        "gitops.drift_sensor": "fleet_mcp.jobs.gitops", "gitops.auto_sync": "fleet_mcp.jobs.gitops"}
