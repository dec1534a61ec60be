"""MCP resources (read-only views a client can show): proposals and sync runs, read through the gate."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from mcp.server.mcpserver import Context, MCPServer

if TYPE_CHECKING:
    from fleet_mcp.app import App
    from fleet_mcp.gate import Gate


def register_resources(server: MCPServer, app: App, gate: Gate) -> None:
    """Each resource reads through the matching read-only tool, so permission, policy and audit apply."""
    from fleet_mcp.callers import caller_for
    from fleet_mcp.registry import load_tools

    tools = load_tools()

    def add(uri: str, tool_name: str, arg: str, title: str) -> None:
        if tool_name not in tools:
            return
        spec = tools[tool_name]

        async def read(ctx: Context, **kwargs: str) -> str:
            caller = caller_for(app, ctx.headers)
            outcome = await gate.call(spec, caller, {arg: int(kwargs[arg])})
            return json.dumps(outcome.data if outcome.ok else {"error": outcome.message}, indent=2, default=str)

        import inspect

        read.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context),
             inspect.Parameter(arg, inspect.Parameter.KEYWORD_ONLY, annotation=str)]
        )
        read.__annotations__ = {"ctx": Context, arg: str, "return": str}
        read.__name__ = f"resource_{tool_name}"
        server.resource(uri, name=tool_name.removeprefix("system_"), title=title, mime_type="application/json")(read)

    add("fleet://proposals/{proposal_id}", "system_gitops_get_proposal", "proposal_id", "GitOps proposal")
    add("fleet://sync-runs/{sync_run_id}", "system_gitops_get_sync_run", "sync_run_id", "GitOps sync run")
