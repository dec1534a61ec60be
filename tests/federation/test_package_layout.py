"""The federation service package holds services only: client presentation code (the demo section) lives
with the other top-level demo modules, and nothing in the package imports MCP, the gate or the registry."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import fleet_mcp.federation

PACKAGE = Path(fleet_mcp.federation.__file__).parent


def test_the_demo_section_is_not_in_the_service_package() -> None:
    assert importlib.util.find_spec("fleet_mcp.federation.demo") is None
    from fleet_mcp.demo_federation import federation_section
    from fleet_mcp.demo_sections import SECTIONS

    assert federation_section in SECTIONS


def test_no_federation_module_imports_mcp_the_gate_or_the_registry() -> None:
    banned = ("mcp", "fleet_mcp.gate", "fleet_mcp.registry", "fleet_mcp.server", "fleet_mcp.tools")
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            for name in names:
                assert not any(name == b or name.startswith(b + ".") for b in banned), (path.name, name)
