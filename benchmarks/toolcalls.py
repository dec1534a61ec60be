"""Tool-call overhead over stdio and streamable HTTP through the SDK client, against the bare echo tool."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from benchmarks.common import RunContext, median
from benchmarks.mcpload import (
    ArgsFn,
    CallStats,
    FleetInstance,
    call_sequence,
    concurrent_load,
    floor_stdio_params,
    http_client,
    start_floor_http,
)

NAME = "toolcalls"
TITLE = "Tool-call overhead"
DESCRIPTION = (
    "Client-observed round trip of one `tools/call` through the MCP SDK client, sequential and under "
    "concurrent HTTP sessions. Floor: the SDK's bare `echo` tool on a plain `MCPServer` (benchmarks/echo_server.py) "
    "served the same way in the same run. fleet-mcp calls include bearer auth (HTTP), permission check, "
    "policy evaluation (a permissive policy file, so every call runs), the database work and the audit row. "
    "Concurrent sessions are as many agents, each with its own token and principal (the default "
    "per-principal concurrency limit stays in force; one principal's sessions beyond it are answered busy)."
)

SMALL_FLEET = "templates:\n  web:\n    node_platform: linux\n"
READ_TARGET = ("<=", 1.5)
WRITE_TARGET = ("<=", 2.0)
CONCURRENT_TARGET = (">=", 0.7)


def echo_args(_s: int, i: int) -> dict[str, Any]:
    return {"text": f"ping {i}"}


def write_args(s: int, i: int) -> dict[str, Any]:
    # One template per session, a new description each call: every call really updates a row.
    return {"name": f"bench-s{s}", "spec": {"description": f"call {i}", "node_platform": "linux"}}


def _find_id(value: Any) -> int | None:
    if isinstance(value, dict):
        for key in ("repository_id", "id"):
            if isinstance(value.get(key), int):
                return value[key]
        for v in value.values():
            found = _find_id(v)
            if found is not None:
                return found
    return None


async def pick_read_tool(client: Any, fleet: FleetInstance) -> tuple[str, ArgsFn, str]:
    """system_gitops_get_repository on a registered local repository, else system_list_templates."""
    names = {t.name for t in (await client.list_tools()).tools}
    if {"system_gitops_get_repository", "system_gitops_register_repository"} <= names:
        repo = fleet.make_git_repo(SMALL_FLEET)
        r = await client.call_tool("system_gitops_register_repository",
                                   {"name": "bench", "repo_url": f"file://{repo}", "branch": "main"})
        rid = None if r.is_error else _find_id(r.structured_content)
        if rid is not None:
            probe = await client.call_tool("system_gitops_get_repository", {"repository_id": rid})
            if not probe.is_error:
                return "system_gitops_get_repository", lambda _s, _i: {"repository_id": rid}, ""
            why = str(probe.content)[:200]
        else:
            why = str(r.content)[:200]
        return "system_list_templates", lambda _s, _i: {}, (
            f"system_gitops_get_repository failed here ({why}); measured system_list_templates instead")
    return "system_list_templates", lambda _s, _i: {}, (
        "system_gitops_get_repository is not in the tree yet; measured the read tool system_list_templates")


async def _rounds(ctx: RunContext, clients: dict[str, tuple[Any, str, ArgsFn]], calls: int, rounds: int
                  ) -> dict[str, list[CallStats]]:
    """Interleave the floor and the fleet tools round by round, so drift of a noisy machine hits all alike."""
    out: dict[str, list[CallStats]] = {k: [] for k in clients}
    for key, (client, tool, args) in clients.items():
        await call_sequence(client, tool, args, max(10, calls // 5))  # warm-up
    for _ in range(rounds):
        for key, (client, tool, args) in clients.items():
            out[key].append(await call_sequence(client, tool, args, calls))
    return out


def _report_sequential(ctx: RunContext, transport: str, res: dict[str, list[CallStats]], read_tool: str,
                       read_note: str, server_error: str = "") -> None:
    def stat(key: str, fn: Callable[[CallStats], float]) -> float:
        return median([fn(s) for s in res[key]])

    floor_med, floor_p99 = stat("floor", lambda s: s.median), stat("floor", lambda s: s.p99)
    calls = sum(len(s.latencies) for s in res["floor"])
    ctx.add(f"{transport}.floor.median", f"{transport}: echo floor, median", floor_med, "s", note=f"{calls} calls")
    ctx.add(f"{transport}.floor.p99", f"{transport}: echo floor, p99", floor_p99, "s")
    for key, label, target, note in (("read", f"read ({read_tool})", READ_TARGET, read_note),
                                     ("write", "write (system_put_template)", WRITE_TARGET, "")):
        errors = sum(s.errors for s in res[key])
        first = next((s.first_error for s in res[key] if s.first_error), None)
        err_note = f"first error: {first}" if errors else ""
        ctx.add(f"{transport}.{key}.median", f"{transport}: {label}, median", stat(key, lambda s: s.median), "s",
                floor=floor_med, floor_label="echo median", target=target, errors=errors,
                note="; ".join(n for n in (note, err_note, server_error if errors else "") if n))
        ctx.add(f"{transport}.{key}.p99", f"{transport}: {label}, p99", stat(key, lambda s: s.p99), "s",
                floor=floor_p99, floor_label="echo p99")


async def run(ctx: RunContext) -> None:
    from mcp import Client

    calls, rounds = ctx.reps(30, 120), ctx.reps(2, 4)
    sessions, per_session = (8, 12) if ctx.quick else (50, 100)
    fleet = FleetInstance(ctx.tmp)
    token = fleet.token("bench", "admin")
    try:
        # -- stdio -------------------------------------------------------------------------------------
        async with Client(floor_stdio_params()) as floor, Client(fleet.stdio_params()) as fc:
            read_tool, read_args, read_note = await pick_read_tool(fc, fleet)
            res = await _rounds(ctx, {"floor": (floor, "echo", echo_args), "read": (fc, read_tool, read_args),
                                      "write": (fc, "system_put_template", write_args)}, calls, rounds)
        _report_sequential(ctx, "stdio", res, read_tool, read_note)

        # -- streamable HTTP ---------------------------------------------------------------------------
        floor_srv = start_floor_http(ctx.tmp)
        try:
            fleet_srv = fleet.start_http()
            async with http_client(floor_srv.url) as floor, http_client(fleet_srv.url, token) as fc:
                res = await _rounds(ctx, {"floor": (floor, "echo", echo_args),
                                          "read": (fc, read_tool, read_args),
                                          "write": (fc, "system_put_template", write_args)}, calls, rounds)
            _report_sequential(ctx, "http", res, read_tool, read_note, fleet.last_server_error())

            # -- concurrent sessions -----------------------------------------------------------------------
            # Each figure's floor runs the same shape (sessions × calls, streamable HTTP) in the same run.
            # Writes serialize on SQLite: fewer calls per session keep the full run inside its time budget.
            write_calls = per_session if ctx.quick else 40
            floors: dict[int, Any] = {}
            for n_calls in sorted({per_session, write_calls}):
                shape = f"{sessions} sessions × {n_calls} calls"
                load = await concurrent_load(lambda: http_client(floor_srv.url), "echo", echo_args, sessions,
                                             n_calls)
                floors[n_calls] = load
                ctx.add(f"http.concurrent.floor.{n_calls}.throughput", f"http {shape}: echo floor, throughput",
                        load.throughput, "calls/s", note=f"{load.stats.errors + load.connect_errors} errors")
                ctx.add(f"http.concurrent.floor.{n_calls}.p99", f"http {shape}: echo floor, p99", load.stats.p99,
                        "s")
            for key, tool, args, n_calls in (("read", read_tool, read_args, per_session),
                                             ("write", "system_put_template", write_args, write_calls)):
                shape = f"{sessions} sessions × {n_calls} calls"
                floor_tp, floor_p99 = floors[n_calls].throughput, floors[n_calls].stats.p99
                before = fleet.audit_counts().get(tool, 0)
                load = await concurrent_load(fleet.agent_clients(fleet_srv.url, sessions), tool, args, sessions,
                                             n_calls)
                rows = fleet.audit_counts().get(tool, 0) - before
                made = len(load.stats.latencies) + load.warmups
                failed = load.stats.errors + load.connect_errors
                ctx.add(f"http.concurrent.{key}.throughput", f"http {shape}: {key} ({tool}), throughput",
                        load.throughput, "calls/s", floor=floor_tp, floor_label="echo throughput, same shape",
                        target=CONCURRENT_TARGET, errors=failed, note=read_note if key == "read" else "")
                ctx.add(f"http.concurrent.{key}.p99", f"http {shape}: {key} ({tool}), p99", load.stats.p99, "s",
                        floor=floor_p99, floor_label="echo p99, same shape")
                ctx.add(f"http.concurrent.{key}.errors", f"http {shape}: {key}, error results", float(failed), "",
                        ratio=float(failed), target=("<=", 0),
                        note="; ".join(n for n in (load.stats.first_error or "",
                                                   fleet.last_server_error() if failed else "") if n))
                ctx.add(f"http.concurrent.{key}.audit", f"http {shape}: {key}, audit rows per call",
                        rows / made if made else None, "", ratio=rows / made if made else None, target=("==", 1),
                        note=f"{rows} audit rows for {made} calls")
        finally:
            with contextlib.suppress(Exception):
                floor_srv.stop()
    finally:
        fleet.close()
