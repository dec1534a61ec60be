"""MCP servers as users run them (echo floor and fleet-mcp, stdio and HTTP subprocesses) and client load drivers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import free_port, percentile, python_env

PERMISSIVE_POLICY = """\
# Benchmark policy: every call is auto-approved, but the policy engine still evaluates each one.
version: 1
default: deny
rules:
  - name: all
    match: {}
    decision: auto_approve
"""


class HttpProc:
    """A server subprocess on a local port, ready once `ready_path` answers any HTTP status."""

    def __init__(self, args: list[str], env: dict[str, str], port: int, log: Path, ready_path: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen([sys.executable, *args], env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                tail = log.read_text().strip().splitlines()[-3:]
                raise RuntimeError(f"server exited ({self.proc.returncode}): {' | '.join(tail)}")
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # it answered
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server on port {port} did not become ready") from None
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def floor_stdio_params() -> Any:
    from mcp import StdioServerParameters

    return StdioServerParameters(command=sys.executable, args=["-m", "benchmarks.echo_server"], env=python_env())


def start_floor_http(tmp: Path) -> HttpProc:
    port = free_port()
    return HttpProc(["-m", "benchmarks.echo_server", "--http", str(port)], python_env(), port,
                    tmp / f"echo-{port}.log", "/mcp")


class FleetInstance:
    """A fleet-mcp data dir (SQLite) with the permissive benchmark policy; servers and tokens on it."""

    def __init__(self, tmp: Path, *, database_url: str | None = None, env: dict[str, str] | None = None) -> None:
        self.dir = tmp
        self.data_dir = tmp / "data"
        self.policy = tmp / "bench-policy.yaml"
        self.policy.write_text(PERMISSIVE_POLICY)
        self.database_url = database_url
        self.repo_dir = tmp / "repo"
        extra = {
            "FLEET_MCP_DATA_DIR": str(self.data_dir),
            "FLEET_MCP_POLICY": str(self.policy),
            "FLEET_MCP_SCHEDULER": "false",
            "FLEET_MCP_LOG_LEVEL": "WARNING",
            "FLEET_MCP_ALLOW_LOCAL_REPOS": "true",
        }
        if database_url:
            extra["FLEET_MCP_DATABASE_URL"] = database_url
        extra.update(env or {})
        self.env = python_env(**extra)
        self.servers: list[HttpProc] = []
        self._agent_tokens: list[str] = []

    def cli(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "fleet_mcp", *args], env=self.env, capture_output=True,
                              text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"fleet-mcp {' '.join(args)} failed: {proc.stderr[-2000:]}")
        return proc.stdout

    def last_server_error(self) -> str:
        """The last exception line in the HTTP servers' logs ("" when there is none)."""
        found = ""
        for srv in self.servers:
            with contextlib.suppress(OSError):
                for line in srv.log.read_text(errors="replace").splitlines():
                    if re.match(r"^[A-Za-z_.]+(Error|Exception|Conflict|Denied)\b.*:", line):
                        found = line.strip()
        return f"server log: {found[:300]}" if found else ""

    def token(self, label: str, role: str = "admin", account: str = "default") -> str:
        return self.cli("token", "create", "--account", account, "--name", label, "--role", role
                        ).strip().splitlines()[-1]

    def agent_tokens(self, n: int, role: str = "admin") -> list[str]:
        """One token per concurrent session, each its own principal (`agent-0` …): many agents, as in a real
        deployment. Sessions sharing one principal would meet the per-principal concurrency limit
        (FLEET_MCP_MAX_CONCURRENT_CALLS_PER_PRINCIPAL) and be answered `busy` — that limit is not what a
        throughput figure measures. Created once per instance (through the audited CLI), not timed."""
        while len(self._agent_tokens) < n:
            self._agent_tokens.append(self.token(f"agent-{len(self._agent_tokens)}", role))
        return self._agent_tokens[:n]

    def agent_clients(self, url: str, n: int) -> Callable[[], Any]:
        """A `make_client` for `concurrent_load`: each new client gets the next agent's token."""
        tokens = itertools.cycle(self.agent_tokens(n))
        return lambda: http_client(url, next(tokens))

    def stdio_params(self) -> Any:
        from mcp import StdioServerParameters

        return StdioServerParameters(command=sys.executable, args=["-m", "fleet_mcp", "serve"], env=self.env)

    def start_http(self) -> HttpProc:
        port = free_port()
        srv = HttpProc(["-m", "fleet_mcp", "serve", "--transport", "http", "--port", str(port)], self.env, port,
                       self.dir / f"fleet-http-{port}.log", "/healthz")
        self.servers.append(srv)
        return srv

    def audit_counts(self) -> dict[str, int]:
        """Audit rows per tool, read straight from the SQLite file."""
        db = self.data_dir / "fleet.db"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
            return dict(conn.execute("SELECT tool, COUNT(*) FROM audit_log GROUP BY tool").fetchall())

    def close(self) -> None:
        for s in self.servers:
            s.stop()

    def make_git_repo(self, content: str) -> Path:
        """A local git repository with fleet.yaml on main (for the GitOps read tool)."""
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        git = ["git", "-C", str(self.repo_dir), "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
        subprocess.run([*git[:3], "init", "-q", "-b", "main"], check=True)
        (self.repo_dir / "fleet.yaml").write_text(content)
        subprocess.run([*git, "add", "fleet.yaml"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "fleet"], check=True)
        return self.repo_dir


def http_client(url: str, token: str | None = None) -> Any:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(streamable_http_client(url + "/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=120)))


@dataclass
class CallStats:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None

    def record(self, seconds: float, result: Any) -> None:
        self.latencies.append(seconds)
        if getattr(result, "is_error", False):
            self.errors += 1
            if self.first_error is None:
                self.first_error = str(getattr(result, "content", result))[:300]

    @property
    def median(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


ArgsFn = Callable[[int, int], dict[str, Any]]


async def call_sequence(client: Any, tool: str, args: ArgsFn, n: int, session: int = 0,
                        stats: CallStats | None = None) -> CallStats:
    """n sequential calls; each latency is the client-observed round trip."""
    stats = stats or CallStats()
    perf = time.perf_counter
    for i in range(n):
        t0 = perf()
        try:
            result = await client.call_tool(tool, args(session, i))
        except Exception as exc:  # noqa: BLE001 - a transport failure is an error of the run, not a crash
            stats.record(perf() - t0, _Failed(exc))
            continue
        stats.record(perf() - t0, result)
    return stats


@dataclass
class _Failed:
    exc: BaseException
    is_error: bool = True

    @property
    def content(self) -> str:
        return f"{type(self.exc).__name__}: {self.exc}"


@dataclass
class LoadResult:
    sessions: int
    calls: int
    wall: float
    stats: CallStats
    connect_errors: int = 0
    #: Untimed calls made first (one per session); they reach the server (and its audit log) too.
    warmups: int = 0

    @property
    def throughput(self) -> float:
        return len(self.stats.latencies) / self.wall if self.wall > 0 else 0.0


async def concurrent_load(make_client: Callable[[], Any], tool: str, args: ArgsFn, sessions: int, calls: int,
                          on_tick: Callable[[], None] | None = None) -> LoadResult:
    """`sessions` clients connect first; then all call `tool` `calls` times each at once; wall time of the calls."""
    stats = CallStats()
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        connect_errors = 0
        for _ in range(sessions):
            try:
                clients.append(await stack.enter_async_context(make_client()))
            except Exception:  # noqa: BLE001
                connect_errors += 1
        for i, c in enumerate(clients):  # one warm-up call each (not timed)
            await call_sequence(c, tool, args, 1, session=10_000 + i)
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                if on_tick:
                    on_tick()
                await asyncio.sleep(0.05)

        tick = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        await asyncio.gather(*(call_sequence(c, tool, args, calls, session=i, stats=stats)
                               for i, c in enumerate(clients)))
        wall = time.perf_counter() - t0
        stop.set()
        await tick
    return LoadResult(sessions=sessions, calls=calls, wall=wall, stats=stats, connect_errors=connect_errors,
                      warmups=len(clients))
