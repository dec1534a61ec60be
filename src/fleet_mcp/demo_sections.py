"""Demo sections of the three capabilities, run in order by `fleet-mcp demo` after the core section.
Each takes the Demo and the connected clients (alice/bob/root in acme, gina in globex) as keywords."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fleet_mcp.demo_federation import federation_section
from fleet_mcp.demo_gitops import gitops_section
from fleet_mcp.demo_vault import vault_section

SECTIONS: list[Callable[..., Awaitable[None]]] = [gitops_section, federation_section, vault_section]
