"""`python -m benchmarks [--quick] [--only NAME,...]`: run the families, write results JSON, render the report."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import importlib
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import FAMILIES
from benchmarks.common import RESULTS_DIR, ROOT, Figure, RunContext, machine_info, scratch_dir, today
from benchmarks.report import (
    DOCS,
    FULL_MARKER,
    PLOT,
    console_table,
    latest,
    merge,
    plot_groups,
    render_markdown,
    result_path,
    retired_only,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes (CI)")
    p.add_argument("--only", default="", help=f"comma list of families: {', '.join(FAMILIES)}")
    p.add_argument("--docs", choices=["auto", "always", "never"], default="auto",
                   help="render docs/BENCHMARKS.md (auto: unless a quick run would overwrite a full run's page)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a family crashed (never for missed targets)")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: re-render docs/BENCHMARKS.md from the latest results of this mode")
    return p.parse_args(argv)


def describe_error(exc: BaseException) -> str:
    """The innermost exception's type and the last line of its message (task groups unwrapped)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def run_family(name: str, quick: bool, machine: dict[str, Any]) -> tuple[RunContext | None, dict[str, Any]]:
    # The machine and the commit (with its dirty flag) go with each family: a report merged from several
    # runs (--only) shows for every family where and on what code it was measured.
    meta: dict[str, Any] = {"title": name, "ran_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                            "machine": machine}
    t0 = time.monotonic()
    try:
        mod = importlib.import_module(f"benchmarks.{name}")
    except Exception as exc:  # noqa: BLE001 - a broken family must not stop the others
        meta.update(error=f"{type(exc).__name__}: {exc}", duration_s=0.0)
        print(f"== {name}: could not import: {exc}", flush=True)
        return None, meta
    meta.update(title=mod.TITLE, description=getattr(mod, "DESCRIPTION", ""))
    print(f"\n== {mod.TITLE} ({name}) ==", flush=True)
    with scratch_dir(name) as tmp:
        ctx = RunContext(quick=quick, family=name, tmp=tmp, machine=machine)
        try:
            asyncio.run(mod.run(ctx))
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            meta["error"] = describe_error(exc)
            print(f"  !! {name} failed: {meta['error']}", flush=True)
    meta["duration_s"] = round(time.monotonic() - t0, 1)
    meta["facts"] = ctx.facts
    if ctx.details is not None:
        meta["details"] = ctx.details
    print(f"  ({name} took {meta['duration_s']:.0f} s)", flush=True)
    return ctx, meta


def render(results: dict[str, Any], *, quick_over_full: bool = False) -> None:
    from benchmarks.findings import FINDINGS
    from benchmarks.plot import write_plot
    from benchmarks.scaleout import write_reliability

    groups = plot_groups(results["series"])
    plot_rel = None
    if groups:
        writer = write_plot(PLOT, groups)
        plot_rel = Path("..", PLOT.relative_to(ROOT)).as_posix()
        print(f"plot: {PLOT.relative_to(ROOT)} ({writer})")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(render_markdown(results, plot_rel, FINDINGS, FAMILIES))
    print(f"report: {DOCS.relative_to(ROOT)}")
    # docs/RELIABILITY.md: the scale-out family's own page, generated the same way.
    write_reliability(results, allow_quick_over_full=quick_over_full)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if ns.render_only:
        found = latest(ns.quick)
        if found is None:
            print(f"no {'quick' if ns.quick else 'full'} results in {RESULTS_DIR.relative_to(ROOT)}", file=sys.stderr)
            return 1
        found["families"] = dict(sorted(found["families"].items(), key=lambda kv: list(FAMILIES).index(kv[0])
                                        if kv[0] in FAMILIES else len(FAMILIES)))
        render(found, quick_over_full=ns.docs == "always")
        return 0
    only = [n.strip() for n in ns.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in FAMILIES]
    if unknown:
        print(f"unknown families: {', '.join(unknown)}; known: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    names = only or list(FAMILIES)
    started = dt.datetime.now(dt.UTC)
    machine = machine_info()
    print(f"fleet-mcp benchmarks ({'quick' if ns.quick else 'full'}): {', '.join(names)}; "
          f"{machine['cpu_count']} CPUs, Python {machine['python']}, SQLite {machine['sqlite']}", flush=True)
    figures: list[Figure] = []
    series: list[dict[str, Any]] = []
    families: dict[str, Any] = {}
    crashed = False
    for name in names:
        ctx, meta = run_family(name, ns.quick, machine)
        families[name] = meta
        crashed |= "error" in meta
        if ctx is not None:
            figures += ctx.figures
            series += [{**dataclasses.asdict(s), "family": name} for s in ctx.series]
    current = {
        "version": 1,
        "mode": "quick" if ns.quick else "full",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
        "machine": machine,
        "family_order": list(FAMILIES),
        "families": families,
        "figures": [f.to_json() for f in figures],
        "series": series,
    }
    # --only keeps the other families' last figures; a full run keeps only retired families' (as a record).
    previous = latest(ns.quick)
    results = merge(previous if only else retired_only(previous, FAMILIES), current)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = result_path(today(), ns.quick)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")

    print("\n" + console_table([Figure.from_json(f) for f in current["figures"]]), flush=True)
    print(f"\nresults: {out.relative_to(ROOT)} ({current['duration_s']:.0f} s)")

    docs_has_full = DOCS.exists() and FULL_MARKER in DOCS.read_text()
    if ns.docs == "always" or (ns.docs == "auto" and not (ns.quick and docs_has_full)):
        render(results, quick_over_full=ns.docs == "always")
    elif ns.docs == "auto":
        print(f"report: {DOCS.relative_to(ROOT)} holds a full run; a quick run leaves it alone (--docs always)")
        from benchmarks.scaleout import write_reliability

        write_reliability(results, allow_quick_over_full=False)
    missed = [f for f in current["figures"] if f["met"] is False]
    if missed:
        print(f"{len(missed)} target(s) missed (reported above; not a failure)")
    return 1 if (crashed and ns.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
