"""The SQLite driver decision: fleet-mcp's tool-call figures on the inline driver and on aiosqlite."""

from __future__ import annotations

import contextlib

from benchmarks.common import RunContext, median
from benchmarks.mcpload import CallStats, FleetInstance, concurrent_load, http_client
from benchmarks.toolcalls import _rounds, pick_read_tool, write_args

NAME = "sqlitedriver"
TITLE = "SQLite driver: inline against aiosqlite"
#: The inline driver is kept only if it is at least this much faster than aiosqlite on the tool-call figures.
KEEP_INLINE = (">=", 1.5)
DRIVERS = ("inline", "aiosqlite")
DESCRIPTION = (
    "The same tool-call figures as the tool-call family (stdio and streamable HTTP read and write medians, "
    "concurrent HTTP sessions' throughput), measured on two fleet-mcp servers that differ only in "
    "`FLEET_MCP_SQLITE_DRIVER`: `inline` (`fleet_mcp.db.sqlite_inline`: statements on the event loop's "
    "thread) and `aiosqlite` (statements on aiosqlite's worker thread). Both run with every other "
    "optimization in place, interleaved round by round. A row's ratio is the inline driver's speed-up over "
    f"aiosqlite (aiosqlite's time ÷ inline's, or inline's rate ÷ aiosqlite's); the inline driver is kept as "
    f"the default only if every speed-up is {KEEP_INLINE[0]} {KEEP_INLINE[1]:g} — the decision row says which."
)


def _speedup(ctx: RunContext, name: str, label: str, inline: float, aio: float, unit: str, *, errors: int,
             higher_is_better: bool = False) -> bool | None:
    ctx.add(f"{name}.aiosqlite", f"{label}, aiosqlite", aio, unit)
    ratio = (inline / aio if higher_is_better else aio / inline) if inline and aio else None
    fig = ctx.add(f"{name}.inline", f"{label}, inline: speed-up over aiosqlite", inline, unit, floor=aio,
                  floor_label="aiosqlite, same run", ratio=ratio, target=KEEP_INLINE, compare="speed-up",
                  errors=errors)
    return fig.met


async def run(ctx: RunContext) -> None:
    from mcp import Client

    calls, rounds = ctx.reps(30, 120), ctx.reps(2, 4)
    sessions, per_session = (8, 12) if ctx.quick else (50, 40)
    for d in DRIVERS:
        (ctx.tmp / d).mkdir(parents=True, exist_ok=True)
    fleets = {d: FleetInstance(ctx.tmp / d, env={"FLEET_MCP_SQLITE_DRIVER": d}) for d in DRIVERS}
    verdicts: list[bool | None] = []
    try:
        tokens = {d: f.token("bench", "admin") for d, f in fleets.items()}
        # -- stdio ------------------------------------------------------------------------------------------
        async with Client(fleets["inline"].stdio_params()) as ci, Client(fleets["aiosqlite"].stdio_params()) as ca:
            read_tool, ri, _ = await pick_read_tool(ci, fleets["inline"])
            _, ra, _ = await pick_read_tool(ca, fleets["aiosqlite"])
            res = await _rounds(ctx, {"inline.read": (ci, read_tool, ri), "aiosqlite.read": (ca, read_tool, ra),
                                      "inline.write": (ci, "system_put_template", write_args),
                                      "aiosqlite.write": (ca, "system_put_template", write_args)}, calls, rounds)
        verdicts += _report(ctx, "stdio", res, read_tool)

        # -- streamable HTTP --------------------------------------------------------------------------------
        servers = {d: f.start_http() for d, f in fleets.items()}
        async with http_client(servers["inline"].url, tokens["inline"]) as ci, \
                http_client(servers["aiosqlite"].url, tokens["aiosqlite"]) as ca:
            res = await _rounds(ctx, {"inline.read": (ci, read_tool, ri), "aiosqlite.read": (ca, read_tool, ra),
                                      "inline.write": (ci, "system_put_template", write_args),
                                      "aiosqlite.write": (ca, "system_put_template", write_args)}, calls, rounds)
        verdicts += _report(ctx, "http", res, read_tool)

        # -- concurrent HTTP sessions -----------------------------------------------------------------------
        for key, tool, n_calls in (("read", read_tool, per_session), ("write", "system_put_template", per_session)):
            loads = {}
            for d in DRIVERS:
                args = (ri if d == "inline" else ra) if key == "read" else write_args
                loads[d] = await concurrent_load(lambda d=d: http_client(servers[d].url, tokens[d]), tool, args,
                                                 sessions, n_calls)
            errors = sum(x.stats.errors + x.connect_errors for x in loads.values())
            verdicts.append(_speedup(ctx, f"http.concurrent.{key}", f"http {sessions} sessions × {n_calls} calls: "
                                     f"{key} ({tool}), throughput", loads["inline"].throughput,
                                     loads["aiosqlite"].throughput, "calls/s", errors=errors,
                                     higher_is_better=True))
    finally:
        for f in fleets.values():
            with contextlib.suppress(Exception):
                f.close()
    keep = bool(verdicts) and all(v is True for v in verdicts)
    decision = "inline" if keep else "aiosqlite"
    from fleet_mcp.settings import Settings

    default = Settings.model_fields["sqlite_driver"].default
    ctx.facts.update(decision_by_rule=decision, default_driver=default)
    ctx.add("decision", f"decision by the {KEEP_INLINE[1]:g}× rule: {decision}; the shipped default is {default}",
            None, "", met=None, note=(
                f"the inline driver stays only if every speed-up row is {KEEP_INLINE[0]} {KEEP_INLINE[1]:g}; "
                f"{sum(v is True for v in verdicts)} of {len(verdicts)} are"
                + ("" if decision == default else
                   "; the default differs from the rule's outcome: see the closing note")))


def _report(ctx: RunContext, transport: str, res: dict[str, list[CallStats]], read_tool: str) -> list[bool | None]:
    out = []
    for key, label in (("read", f"read ({read_tool})"), ("write", "write (system_put_template)")):
        inline = median([s.median for s in res[f"inline.{key}"]])
        aio = median([s.median for s in res[f"aiosqlite.{key}"]])
        errors = sum(s.errors for k in (f"inline.{key}", f"aiosqlite.{key}") for s in res[k])
        out.append(_speedup(ctx, f"{transport}.{key}.median", f"{transport}: {label}, median", inline, aio, "s",
                            errors=errors))
    return out

