"""Memory: resident set size of an idle fleet-mcp HTTP server and of one under concurrent sessions."""

from __future__ import annotations

import asyncio

from benchmarks.common import RunContext, mib, proc_rss
from benchmarks.mcpload import FleetInstance, concurrent_load, http_client, start_floor_http
from benchmarks.toolcalls import echo_args, pick_read_tool

NAME = "memory"
TITLE = "Memory"
DESCRIPTION = (
    "RSS of the server process (`/proc/<pid>/status`), fleet-mcp's `serve --transport http` on SQLite next to "
    "the echo floor server: idle (after start-up and a few calls), and the highest value sampled every 50 ms "
    "while concurrent HTTP sessions call a read tool (each session its own agent token and principal)."
)


async def run(ctx: RunContext) -> None:
    sessions, calls = (6, 10) if ctx.quick else (50, 40)
    fleet = FleetInstance(ctx.tmp)
    token = fleet.token("bench-mem", "admin")
    floor_srv = start_floor_http(ctx.tmp)
    try:
        fleet_srv = fleet.start_http()
        async with http_client(fleet_srv.url, token) as fc, http_client(floor_srv.url) as ec:
            tool, args, note = await pick_read_tool(fc, fleet)
            for _ in range(5):
                await fc.call_tool(tool, args(0, 0))
                await ec.call_tool("echo", echo_args(0, 0))
        await asyncio.sleep(1.0)
        idle_fleet, idle_floor = proc_rss(fleet_srv.pid)[0], proc_rss(floor_srv.pid)[0]
        ctx.add("idle", "idle server RSS", mib(idle_fleet), "MiB", floor=mib(idle_floor),
                floor_label="echo server, idle", note="after start-up and 5 calls")
        peaks = {}
        for key, srv, make, t, a in (
            ("floor", floor_srv, lambda: http_client(floor_srv.url), "echo", echo_args),
            ("fleet", fleet_srv, fleet.agent_clients(fleet_srv.url, sessions), tool, args),
        ):
            peak = [proc_rss(srv.pid)[0]]
            res = await concurrent_load(make, t, a, sessions, calls,
                                        on_tick=lambda srv=srv, peak=peak: peak.append(proc_rss(srv.pid)[0]))
            peaks[key] = (max(peak), res)
        shape = f"{sessions} sessions × {calls} calls"
        ctx.add("load", f"server RSS under {shape}, peak", mib(peaks["fleet"][0]), "MiB",
                floor=mib(peaks["floor"][0]), floor_label="echo server, same load",
                errors=peaks["fleet"][1].stats.errors + peaks["fleet"][1].connect_errors,
                note=f"{tool}; {note}".rstrip("; "))
        ctx.add("load.growth", f"server RSS growth under {shape}", mib(peaks["fleet"][0] - idle_fleet), "MiB",
                floor=mib(max(1, peaks["floor"][0] - idle_floor)), floor_label="echo server growth")
    finally:
        floor_srv.stop()
        fleet.close()
