"""Tool modules: importing this package registers every `system_*` tool."""

from __future__ import annotations

import importlib

TOOL_MODULES = ("fleet", "admin", "approvals", "gitops", "federation", "vault")

for _name in TOOL_MODULES:
    importlib.import_module(f"fleet_mcp.tools.{_name}")
