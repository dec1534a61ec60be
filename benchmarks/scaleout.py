"""Several replicas on one PostgreSQL and one OpenBao: throughput and p99 by replica count against as many echo
floors, then a fault run (a replica SIGKILLed mid-rotation and mid-apply, PostgreSQL restarted, OpenBao sealed and
unsealed, a client gone mid-call) under mixed load with in-client and queued approvals. The invariants are
checked after every run; a violated one fails the family (so `--strict` fails CI)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, RunContext, free_port, percentile, python_env, start_openbao, start_postgres
from benchmarks.gitops import apply_yaml, git_commit
from benchmarks.mcpload import HttpProc, start_floor_http

NAME = "scaleout"
TITLE = "Replicas, faults and invariants"
DOCS = ROOT / "docs" / "RELIABILITY.md"
FULL_MARKER = "<!-- reliability mode: full -->"
PEPPER = "pepper-scaleout"

DESCRIPTION = (
    "`fleet-mcp serve --transport http` as 1, 2 and 3 separate processes on one throwaway PostgreSQL and one "
    "OpenBao dev server, every replica with the same settings (database, audit key, request-state key file, "
    "`FLEET_MCP_TRANSIT=vault`, policy; see docs/runbooks/deploy.md). Clients are the MCP SDK's streamable "
    "HTTP client, spread round-robin over the replicas. Floor: the SDK's bare `echo` tool "
    "(benchmarks/echo_server.py) served by as many processes, same sessions and calls, same run. Then a fault "
    "run on 3 replicas under mixed load; its counts and invariants are in docs/RELIABILITY.md."
)

POLICY = """\
# Scale-out suite policy: reads and writes run at once; deleting a template asks the human in the client
# (protocol 2026-07-28: the answer rides the sealed requestState), creating a module through the queue.
version: 1
default: deny
rules:
  - name: reads
    match: {read_only: true}
    decision: auto_approve
  - name: delete-template-in-client
    match: {tools: [system_delete_template]}
    decision: require_approval
    approval: {mode: elicit}
  - name: module-through-the-queue
    match: {tools: [system_put_module]}
    decision: require_approval
    approval: {mode: queue}
  - name: everything-else
    match: {}
    decision: auto_approve
"""

READ_TOOL = "system_get_template"
READ_NAME = "scaleout-read"
STATUSES = ("ok", "busy", "unavailable", "failed")
#: How a call that raised (no answer reached the client) is marked.
TRANSPORT = "transport: "
#: A client's connection lost (its replica died) or refused while reconnecting: recorded, not a call.
CONNECTION = "connection lost or refused"


# -- the cluster ---------------------------------------------------------------------------------------------
class Cluster:
    """One PostgreSQL, one OpenBao dev server, shared keys and policy; replicas started on demand."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pg = start_postgres()
        try:
            self.bao = start_openbao()
        except Exception:
            self.pg.stop()
            raise
        self.pg.psql("CREATE DATABASE fleet")
        self.db_url = self.pg.url("fleet")
        self.dsn = self.db_url.replace("+asyncpg", "")
        self.policy = tmp / "scaleout-policy.yaml"
        self.policy.write_text(POLICY)
        self.state_keys = tmp / "request-state.keys"
        self.state_keys.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        self.state_keys.chmod(0o600)
        self.audit_key = secrets.token_urlsafe(32)
        self.replicas: dict[int, HttpProc] = {}
        self.floors: list[HttpProc] = []
        self.killed: list[int] = []

    def env(self, i: int) -> dict[str, str]:
        data = self.tmp / f"replica-{i}"
        data.mkdir(parents=True, exist_ok=True)
        return python_env(
            FLEET_MCP_DATA_DIR=str(data), FLEET_MCP_DATABASE_URL=self.db_url, FLEET_MCP_POLICY=str(self.policy),
            FLEET_MCP_AUDIT_KEY=self.audit_key, FLEET_MCP_REQUEST_STATE_KEY_FILE=str(self.state_keys),
            FLEET_MCP_TRANSIT="vault", FLEET_MCP_VAULT_ADDR=self.bao.addr, FLEET_MCP_VAULT_TOKEN=self.bao.token,
            FLEET_MCP_VAULT_ADMIN_TOKEN=self.bao.token, FLEET_MCP_PEPPER_KEY=PEPPER, FLEET_MCP_SCHEDULER="true",
            FLEET_MCP_LOG_LEVEL="WARNING", FLEET_MCP_ALLOW_LOCAL_REPOS="true",
            # The whole sync run in one apply (the default opens at most 25 proposals per sync).
            FLEET_MCP_MAX_PROPOSALS_PER_SYNC="1000",
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "fleet_mcp", *args], env=self.env(0), capture_output=True,
                              text=True, timeout=180)
        if check and proc.returncode != 0:
            raise RuntimeError(f"fleet-mcp {' '.join(args)} failed: {proc.stderr[-1500:]}")
        return proc

    def token(self, name: str, account: str = "default") -> str:
        return self.cli("token", "create", "--account", account, "--name", name, "--role", "admin"
                        ).stdout.strip().splitlines()[-1]

    def start_replica(self, i: int) -> HttpProc:
        port = free_port()
        srv = HttpProc(["-m", "fleet_mcp", "serve", "--transport", "http", "--port", str(port)], self.env(i), port,
                       self.tmp / f"replica-{i}.log", "/healthz")
        self.replicas[i] = srv
        return srv

    def kill(self, i: int) -> None:
        """SIGKILL: no drain, no cleanup, the lease and the in-flight calls are left as they are."""
        srv = self.replicas.pop(i)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        self.killed.append(i)

    def live(self) -> list[HttpProc]:
        return [self.replicas[i] for i in sorted(self.replicas)]

    def pg_ctl(self, *args: str) -> None:
        self.pg._run([str(self.pg.bindir / "pg_ctl"), "-D", str(self.pg.data), *args])

    def restart_postgres(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")
        opts = (f"-p {self.pg.port} -k {self.pg.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self.pg_ctl("-o", opts, "-l", str(self.pg.dir / "log"), "-w", "start")

    def last_server_error(self) -> str:
        import re

        found = ""
        for log in sorted(self.tmp.glob("replica-*.log")):
            with contextlib.suppress(OSError):
                for line in log.read_text(errors="replace").splitlines():
                    if re.match(r"^[A-Za-z_.]+(Error|Exception)\b.*:", line):
                        found = f"{log.name}: {line.strip()}"
        return found[:300]

    def close(self) -> None:
        for srv in [*self.replicas.values(), *self.floors]:
            with contextlib.suppress(Exception):
                srv.stop()
        with contextlib.suppress(Exception):
            self.bao.cleanup()
        with contextlib.suppress(Exception):
            self.pg.stop()


# -- clients and calls ---------------------------------------------------------------------------------------
async def _accept(_ctx: Any, _params: Any) -> Any:
    from mcp_types import ElicitResult

    return ElicitResult(action="accept", content={"approve": True})


def client(url: str, token: str | None = None, on_request: Callable[[Any], Any] | None = None) -> Any:
    """The SDK's streamable HTTP client (protocol negotiated: 2026-07-28 with fleet-mcp), able to answer."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    hooks = {"request": [on_request]} if on_request else {}
    http = httpx2.AsyncClient(headers=headers, timeout=60, event_hooks=hooks)
    return Client(streamable_http_client(url + "/mcp", http_client=http), elicitation_callback=_accept)


def classify(result: Any = None, exc: BaseException | None = None) -> tuple[str, str]:
    """ok / busy / unavailable (a retryable answer, or the replica could not be reached) / failed, and why."""
    if exc is not None:
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        text = f"{type(exc).__name__}: {exc}"[:200]
        transport = ("Connect", "ReadError", "RemoteProtocol", "ClosedResource", "EndOfStream", "ReadTimeout",
                     "WriteError", "BrokenResource", "Disconnected")
        # fleet-mcp's own HTTP-level refusals (database unreachable before the gate) are JSON-RPC errors whose
        # message starts "unavailable:" — retryable, like the gate's `unavailable` results.
        retryable = any(t in type(exc).__name__ for t in transport) or str(exc).startswith("unavailable:")
        return ("unavailable" if retryable else "failed"), TRANSPORT + text
    if not getattr(result, "is_error", False):
        return "ok", ""
    sc = getattr(result, "structured_content", None) or {}
    content = getattr(result, "content", None) or []
    text = " ".join(getattr(c, "text", "") for c in content if getattr(c, "text", "")) or str(content)
    text = text[:200]
    if sc.get("status") == "busy":
        return "busy", text
    code = (sc.get("error") or {}).get("code") if isinstance(sc.get("error"), dict) else None
    if isinstance(code, str) and (code == "external_error" or code.endswith("unavailable")):
        return "unavailable", text
    return "failed", text


def find_key(value: Any, *keys: str) -> Any:
    if isinstance(value, dict):
        for k in keys:
            if k in value and value[k] is not None:
                return value[k]
        for v in value.values():
            found = find_key(v, *keys)
            if found is not None:
                return found
    if isinstance(value, list):
        for v in value:
            found = find_key(v, *keys)
            if found is not None:
                return found
    return None


@dataclasses.dataclass
class Call:
    tool: str
    key: str | None
    status: str
    seconds: float
    phase: str
    why: str = ""


class Recorder:
    """Every call of a run, with the phase (fault) it fell in."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.phase = "load"
        self.ok_since: Counter[str] = Counter()

    def add(self, tool: str, key: str | None, status: str, seconds: float, why: str = "") -> Call:
        c = Call(tool, key, status, seconds, self.phase, why)
        self.calls.append(c)
        self.ok_since[status] += 1
        return c

    def counts(self, phase: str | None = None) -> dict[str, int]:
        """Calls per outcome (a lost or refused connection is not a call: it is counted on its own)."""
        cs = Counter(c.status for c in self.calls if c.tool != CONNECTION and (phase is None or c.phase == phase))
        out = {s: cs.get(s, 0) for s in STATUSES}
        out["connections_lost"] = sum(1 for c in self.calls if c.tool == CONNECTION and c.phase == phase)
        return out

    def acknowledged(self, tool: str) -> list[str]:
        return [c.key for c in self.calls if c.tool == tool and c.status == "ok" and c.key]

    def made(self) -> Counter[str]:
        return Counter(c.tool for c in self.calls)


async def timed_call(rec: Recorder, c: Any, tool: str, args: dict[str, Any], key: str | None = None) -> Call:
    t0 = time.perf_counter()
    try:
        result = await c.call_tool(tool, args)
    except Exception as exc:  # noqa: BLE001 - a transport failure is a counted outcome, not a crash
        status, why = classify(exc=exc)
        return rec.add(tool, key, status, time.perf_counter() - t0, why)
    status, why = classify(result)
    return rec.add(tool, key, status, time.perf_counter() - t0, why)


# -- the invariants ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    """What a run left behind, read from PostgreSQL, OpenBao and the CLI after it: pure data, so the checker
    can be shown to fail on a deliberately broken one (tests/benchmarks/test_scaleout_invariants.py)."""

    #: kind ("template", "credential", ...) -> keys whose write the client saw acknowledged.
    acknowledged: dict[str, list[str]]
    #: kind -> key -> rows found in the database (for every key of the run's prefix, acknowledged or not).
    present: dict[str, dict[str, int]]
    #: kind -> key -> audit rows with outcome ok for that write.
    audited_ok: dict[str, dict[str, int]]
    #: calls made per tool and audit rows per tool, for runs without faults (every call reaches the server).
    calls_by_tool: dict[str, int] | None = None
    audit_by_tool: dict[str, int] | None = None
    audit_verify_ok: bool = True
    audit_verify_text: str = ""
    #: approval id -> executions (audit rows of the approved operation with outcome ok).
    executions: dict[str, int] = dataclasses.field(default_factory=dict)
    #: in-client approvals answered once more (a replayed requestState) that ran again.
    replays_run: int = 0
    credentials: int = 0
    credentials_undecryptable: int | None = 0
    credentials_behind: int = 0
    latest_version: int | None = None
    rotation_status: str | None = None
    #: resource key -> revision after the sync-run apply (1: applied once), proposals applied per key.
    applied_revisions: dict[str, int] = dataclasses.field(default_factory=dict)
    applied_proposals: dict[str, int] = dataclasses.field(default_factory=dict)
    sync_applies_ok: int = 0
    #: resources in the sync run (all or nothing: every one applied once the run was applied).
    sync_expected: int | None = None


def check_invariants(o: Outcome) -> list[str]:
    """Every violated invariant, in words; an empty list when all hold."""
    bad: list[str] = []
    for kind, keys in o.acknowledged.items():
        present = o.present.get(kind, {})
        lost = [k for k in keys if present.get(k, 0) == 0]
        dup = [k for k, n in present.items() if n > 1]
        if lost:
            bad.append(f"{len(lost)} acknowledged {kind} write(s) lost (e.g. {lost[0]})")
        if dup:
            bad.append(f"{len(dup)} {kind} write(s) duplicated (e.g. {dup[0]} ×{present[dup[0]]})")
        audited = o.audited_ok.get(kind, {})
        unaudited = [k for k, n in present.items() if n and audited.get(k, 0) == 0]
        if unaudited:
            bad.append(f"{len(unaudited)} {kind} change(s) without their audit row (e.g. {unaudited[0]})")
        twice = [k for k, n in audited.items() if n > 1]
        if twice:
            bad.append(f"{len(twice)} {kind} write(s) with more than one ok audit row (e.g. {twice[0]})")
    if o.calls_by_tool is not None and o.audit_by_tool is not None:
        for tool, n in sorted(o.calls_by_tool.items()):
            rows = o.audit_by_tool.get(tool, 0)
            if rows != n:
                bad.append(f"{tool}: {rows} audit rows for {n} calls (one per call expected)")
    if not o.audit_verify_ok:
        bad.append(f"fleet-mcp audit verify failed: {o.audit_verify_text}")
    many = {a: n for a, n in o.executions.items() if n > 1}
    if many:
        a = next(iter(many))
        bad.append(f"{len(many)} approval(s) executed more than once (e.g. {a} ×{many[a]})")
    if o.replays_run:
        bad.append(f"{o.replays_run} replayed in-client approval answer(s) ran the operation again")
    if o.credentials_undecryptable is None:
        bad.append("the credentials could not be verified")
    elif o.credentials_undecryptable:
        bad.append(f"{o.credentials_undecryptable} of {o.credentials} credentials do not decrypt")
    if o.credentials_behind:
        bad.append(f"{o.credentials_behind} of {o.credentials} credentials are not on the latest key version "
                   f"(v{o.latest_version}) after the rotation")
    if o.rotation_status not in (None, "completed"):
        bad.append(f"the pepper rotation ended {o.rotation_status}, not completed")
    twice_applied = {k: r for k, r in o.applied_revisions.items() if r != 1}
    if twice_applied:
        k = next(iter(twice_applied))
        bad.append(f"{len(twice_applied)} sync-run resource(s) applied more than once (e.g. {k} at revision "
                   f"{twice_applied[k]})")
    multi = {k: n for k, n in o.applied_proposals.items() if n > 1}
    if multi:
        bad.append(f"{len(multi)} resource(s) with more than one applied proposal")
    if o.sync_applies_ok > 1:
        bad.append(f"the sync run was applied {o.sync_applies_ok} times")
    if o.sync_expected is not None and o.sync_applies_ok and len(o.applied_revisions) != o.sync_expected:
        bad.append(f"the sync run applied {len(o.applied_revisions)} of its {o.sync_expected} resources "
                   "(all or nothing)")
    return bad


class InvariantViolated(RuntimeError):
    pass


async def read_outcome(cl: Cluster, rec: Recorder, prefix: str, *, token: str,
                       baseline: Counter[str] | None = None, sync_run_id: int | None = None,
                       sync_expected: int | None = None, approvals: list[str] | None = None,
                       in_client: list[str] | None = None, replays_run: int = 0,
                       check_credentials: bool = False) -> Outcome:
    import asyncpg

    conn = await asyncpg.connect(cl.dsn)
    try:
        async def names(table: str) -> dict[str, int]:
            rows = await conn.fetch(f"SELECT name, count(*) AS n FROM {table} WHERE name LIKE $1 GROUP BY name",
                                    prefix + "%")
            return {r["name"]: r["n"] for r in rows}

        audit = await conn.fetch("SELECT tool, arguments, outcome, approval_id FROM audit_log")

        def arg_name(a: Any) -> str | None:
            if isinstance(a, str):
                with contextlib.suppress(ValueError):
                    a = json.loads(a)
            return a.get("name") if isinstance(a, dict) else None

        audited: dict[str, Counter[str]] = {"template": Counter(), "credential": Counter()}
        by_tool: Counter[str] = Counter()
        executions: Counter[str] = Counter()
        for r in audit:
            name = arg_name(r["arguments"])
            by_tool[r["tool"]] += 1
            if r["outcome"] == "ok" and name and name.startswith(prefix):
                kind = {"system_put_template": "template", "system_vault_store_credential": "credential"}.get(r["tool"])
                if kind:
                    audited[kind][name] += 1
            if r["approval_id"] and r["outcome"] == "ok" and not r["tool"].startswith("system_approvals_"):
                executions[r["approval_id"]] += 1
        for name in in_client or []:  # an in-client approval has no queue id: its operation's ok rows count
            executions[f"in-client:{name}"] = sum(
                1 for r in audit if r["tool"] == "system_delete_template" and r["outcome"] == "ok"
                and arg_name(r["arguments"]) == name)
        for a in approvals or []:
            executions.setdefault(a, 0)
        templates = await names("templates")
        creds = await names("credentials")
        o = Outcome(
            acknowledged={"template": [k for k in rec.acknowledged("system_put_template") if k.startswith(prefix)],
                          "credential": [k for k in rec.acknowledged("system_vault_store_credential")
                                         if k.startswith(prefix)]},
            # In-client approvals delete their own templates; the sync run's are checked on their own.
            present={"template": {k: v for k, v in templates.items()
                                  if not k.startswith((prefix + "del-", prefix + "sync"))},
                     "credential": creds},
            audited_ok={k: dict(v) for k, v in audited.items()},
            executions=dict(executions), replays_run=replays_run,
        )
        if baseline is not None:  # a run without faults: every call reached a replica and has its row
            made = rec.made()
            o.calls_by_tool = dict(made)
            o.audit_by_tool = {t: by_tool.get(t, 0) - baseline.get(t, 0) for t in made}
        if sync_run_id is not None:
            rows = await conn.fetch("SELECT name, revision FROM templates WHERE name LIKE $1 UNION ALL "
                                    "SELECT name, revision FROM modules WHERE name LIKE $1", prefix + "sync%")
            o.applied_revisions = {r["name"]: r["revision"] for r in rows}
            o.sync_expected = sync_expected
            props = await conn.fetch("SELECT * FROM gitops_proposals WHERE sync_run_id = $1", sync_run_id)
            applied: Counter[str] = Counter()
            for p in props:
                if p["status"] == "applied":
                    applied[str(p.get("resource_name") or p.get("name") or p["id"])] += 1
            o.applied_proposals = dict(applied)
            o.sync_applies_ok = sum(1 for r in audit if r["tool"] == "system_gitops_apply_sync_run"
                                    and r["outcome"] == "ok")
        if check_credentials:
            job = await conn.fetchrow("SELECT status, to_version FROM rotation_jobs ORDER BY id DESC LIMIT 1")
            o.rotation_status = job["status"] if job else None
            latest = int(cl.bao.client().secrets.transit.read_key(PEPPER)["data"]["latest_version"])
            o.latest_version = latest
            o.credentials = await conn.fetchval("SELECT count(*) FROM credentials")
            o.credentials_behind = await conn.fetchval("SELECT count(*) FROM credentials WHERE key_version < $1",
                                                       latest)
    finally:
        await conn.close()
    if check_credentials:
        o.credentials_undecryptable = await verify_credentials(cl, token)
    verify = await asyncio.to_thread(cl.cli, "audit", "verify", check=False)
    o.audit_verify_ok = verify.returncode == 0
    o.audit_verify_text = (verify.stdout + verify.stderr).strip()[-300:]
    return o


async def audit_baseline(cl: Cluster) -> Counter[str]:
    import asyncpg

    conn = await asyncpg.connect(cl.dsn)
    try:
        return Counter({r["tool"]: r["n"] for r in await conn.fetch(
            "SELECT tool, count(*) AS n FROM audit_log GROUP BY tool")})
    finally:
        await conn.close()


async def verify_credentials(cl: Cluster, token: str) -> int | None:
    """Failures of system_vault_verify_credentials (every account), on a live replica; None when it failed."""
    async with client(cl.live()[0].url, token) as c:
        r = await c.call_tool("system_vault_verify_credentials", {})
    if r.is_error:
        return None
    failed = find_key(r.structured_content, "failed", "failures")
    return int(failed) if isinstance(failed, int) else None


# -- the load runs -------------------------------------------------------------------------------------------
async def drive(urls: list[str], token: str | None, sessions: int, calls: int, op: Callable[[int, int], Any],
                rec: Recorder) -> tuple[float, list[float]]:
    """`sessions` clients round-robin over `urls` connect, make one untimed call each, then all make `calls`
    calls at once. Returns the wall time and the timed latencies."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client(urls[s % len(urls)], token)) for s in range(sessions)]
        for s, c in enumerate(clients):
            tool, args, key = op(s, -1)
            await timed_call(rec, c, tool, args, key)
        before = len(rec.calls)

        async def session(s: int, c: Any) -> None:
            for i in range(calls):
                tool, args, key = op(s, i)
                await timed_call(rec, c, tool, args, key)

        t0 = time.perf_counter()
        await asyncio.gather(*(session(s, c) for s, c in enumerate(clients)))
        wall = time.perf_counter() - t0
    timed = rec.calls[before:]
    return wall, [c.seconds for c in timed]


async def load_runs(ctx: RunContext, cl: Cluster, token: str, report: dict[str, Any]) -> None:
    sessions, calls = (8, 25) if ctx.quick else (24, 40)
    report["load"] = {"sessions": sessions, "calls_per_session": calls, "rows": []}
    await asyncio.to_thread(cl.start_replica, 0)
    async with client(cl.live()[0].url, token) as c:
        r = await c.call_tool("system_put_template", {"name": READ_NAME, "spec": {"description": "read me"}})
        if r.is_error:
            raise RuntimeError(f"could not seed the read template: {r.content}")
    tp1: dict[str, float] = {}
    for n in (1, 2, 3):
        while len(cl.replicas) < n:
            await asyncio.to_thread(cl.start_replica, len(cl.replicas))
        while len(cl.floors) < n:
            cl.floors.append(await asyncio.to_thread(start_floor_http, cl.tmp))
        urls = [s.url for s in cl.live()]
        floor_rec = Recorder()
        fwall, flat = await drive([f.url for f in cl.floors], None, sessions, calls,
                                  lambda s, i: ("echo", {"text": f"ping {i}"}, None), floor_rec)
        floor_tp, floor_p99 = len(flat) / fwall, percentile(flat, 99)
        ctx.add(f"n{n}.floor.throughput", f"{n} process(es): echo floor, throughput", floor_tp, "calls/s",
                note=f"{sessions} sessions × {calls} calls; {floor_rec.counts()['ok']} ok")
        ctx.add(f"n{n}.floor.p99", f"{n} process(es): echo floor, p99", floor_p99, "s")
        prefix = f"so{n}-"
        baseline = await audit_baseline(cl)
        rec = Recorder()
        row: dict[str, Any] = {"replicas": n, "floor_throughput": floor_tp, "floor_p99": floor_p99}
        for kind, op in (
            ("read", lambda s, i: (READ_TOOL, {"name": READ_NAME}, None)),
            ("write", lambda s, i, p=prefix: ("system_put_template",
                                              {"name": f"{p}s{s}c{i}", "spec": {"description": f"call {i}"}},
                                              f"{p}s{s}c{i}")),
        ):
            wall, lat = await drive(urls, token, sessions, calls, op, rec)
            tool = READ_TOOL if kind == "read" else "system_put_template"
            errors = sum(1 for c in rec.calls if c.tool == tool and c.status != "ok")
            tp, p99 = len(lat) / wall, percentile(lat, 99)
            first = next((c.why for c in rec.calls if c.tool == tool and c.status != "ok"), "")
            ctx.add(f"n{n}.{kind}.throughput", f"{n} replica(s): {kind} ({tool}), throughput", tp, "calls/s",
                    floor=floor_tp, floor_label=f"echo on {n} process(es), same shape", errors=errors,
                    note=f"first error: {first}; {cl.last_server_error()}" if errors else "")
            ctx.add(f"n{n}.{kind}.p99", f"{n} replica(s): {kind}, p99", p99, "s", floor=floor_p99,
                    floor_label="echo p99, same shape")
            if n == 1:
                tp1[kind] = tp
            else:
                ctx.add(f"n{n}.{kind}.scaling", f"{n} replicas: {kind} throughput against 1 replica's", tp,
                        "calls/s", floor=tp1[kind], floor_label="1 replica", compare="speed-up")
            row.update({f"{kind}_throughput": tp, f"{kind}_p99": p99, f"{kind}_errors": errors})
        outcome = await read_outcome(cl, rec, prefix, token=token, baseline=baseline)
        bad = check_invariants(outcome)
        row["invariants"] = bad
        row["calls"] = len(rec.calls)
        report["load"]["rows"].append(row)
        ctx.add(f"n{n}.invariants", f"{n} replica(s): invariant violations", float(len(bad)), "",
                ratio=float(len(bad)), target=("<=", 0), note="; ".join(bad))


# -- the fault run -------------------------------------------------------------------------------------------
class FaultRun:
    def __init__(self, ctx: RunContext, cl: Cluster, token: str, approver: str, gitops: str) -> None:
        self.ctx, self.cl, self.token, self.approver, self.gitops = ctx, cl, token, approver, gitops
        self.rec = Recorder()
        self.stop = asyncio.Event()
        self.prefix = "fr-"
        self.notes: dict[str, str] = {}
        self.queued: list[str] = []
        self.in_client: list[str] = []
        self.replays_run = 0
        self.rr = 0
        self.progress = asyncio.Event()

    def url(self, offset: int = 0) -> str:
        live = self.cl.live()
        self.rr += 1
        return live[(self.rr + offset) % len(live)].url

    async def worker(self, w: int) -> None:
        """Mixed load: reads, template writes and credential writes; on a dead replica, reconnect to another
        (what a load balancer's health check does), counting the failed call."""
        i = 0
        while not self.stop.is_set():
            try:
                async with client(self.url(w), self.token) as c:
                    while not self.stop.is_set():
                        i += 1
                        kind = i % 10
                        if kind < 5:
                            call = await timed_call(self.rec, c, READ_TOOL, {"name": READ_NAME})
                        elif kind < 8:
                            name = f"{self.prefix}w{w}-{i}"
                            call = await timed_call(self.rec, c, "system_put_template",
                                                    {"name": name, "spec": {"description": f"w{w}"}}, name)
                        else:
                            name = f"{self.prefix}c{w}-{i}"
                            call = await timed_call(self.rec, c, "system_vault_store_credential",
                                                    {"name": name, "kind": "generic",
                                                     "secret": secrets.token_urlsafe(24)}, name)
                        self.progress.set()
                        if call.why.startswith(TRANSPORT):
                            break  # the replica went away: reconnect
            except Exception as exc:  # noqa: BLE001 - connecting to a dead replica: count and retry elsewhere
                self.rec.add(CONNECTION, None, classify(exc=exc)[0], 0.0, classify(exc=exc)[1])
                await asyncio.sleep(0.2)

    async def calls_after(self, n: int, status: str = "ok", within: float = 60) -> bool:
        """Wait until `n` more calls with `status` ("not ok": any other) were recorded (progress, not time)."""
        def count() -> int:
            return sum(1 for c in self.rec.calls if c.tool != CONNECTION
                       and (c.status != "ok" if status == "not ok" else c.status == status))

        start = count()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if count() >= start + n:
                return True
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), 1)
        return False

    async def approvals(self) -> None:
        """In-client approvals answered on another replica than the one that asked, the answer replayed on a
        third (it must not run again); queued approvals decided on another replica, twice at once."""
        from mcp_types import ElicitResult, InputRequiredResult

        n = 0
        while not self.stop.is_set():
            n += 1
            name = f"{self.prefix}del-{n}"
            try:
                async with client(self.url(), self.token) as ca, client(self.url(1), self.token) as cb, \
                        client(self.url(2), self.token) as cc:
                    await timed_call(self.rec, ca, "system_put_template", {"name": name, "spec": {}})
                    t0 = time.perf_counter()
                    first = await ca.session.call_tool("system_delete_template", {"name": name},
                                                       allow_input_required=True)
                    if isinstance(first, InputRequiredResult):
                        answers = {k: ElicitResult(action="accept", content={"approve": True})
                                   for k in first.input_requests}
                        try:
                            second = await cb.session.call_tool("system_delete_template", {"name": name},
                                                                input_responses=answers,
                                                                request_state=first.request_state)
                            st, why = classify(second)
                        except Exception as exc:  # noqa: BLE001
                            st, why = classify(exc=exc)
                        self.rec.add("in-client approval", name, st, time.perf_counter() - t0, why)
                        self.in_client.append(name)
                        with contextlib.suppress(Exception):
                            again = await cc.session.call_tool("system_delete_template", {"name": name},
                                                               input_responses=answers,
                                                               request_state=first.request_state)
                            if not again.is_error and find_key(again.structured_content, "deleted") is True:
                                self.replays_run += 1
                    else:
                        self.rec.add("in-client approval", name, classify(first)[0], time.perf_counter() - t0,
                                     "no input was asked: " + classify(first)[1])
                    # Queued: requested here, approved on two other replicas at once; it must run once.
                    mod = f"{self.prefix}mod-{n}"
                    r = await ca.call_tool("system_put_module", {"name": mod, "spec": {"variety": "role"}})
                    apr = find_key(r.structured_content, "approval_id")
                    if apr:
                        self.queued.append(apr)
                        t0 = time.perf_counter()
                        async with client(self.url(1), self.approver) as d1, \
                                client(self.url(2), self.approver) as d2:
                            res = await asyncio.gather(
                                d1.call_tool("system_approvals_decide", {"approval_id": apr, "decision": "approve",
                                                                         "reason": "scale-out suite"}),
                                d2.call_tool("system_approvals_decide", {"approval_id": apr, "decision": "approve",
                                                                         "reason": "scale-out suite, again"}),
                                return_exceptions=True)
                        outcomes = [classify(exc=x) if isinstance(x, BaseException) else classify(x) for x in res]
                        oks = [o for o in outcomes if o[0] == "ok"]
                        # One approval is enough; the second finds it decided. Neither ok: the first reason.
                        st, why = ("ok", "") if oks else outcomes[0]
                        self.rec.add("queued approval", apr, st, time.perf_counter() - t0, why)
                    else:
                        self.rec.add("queued approval", mod, classify(r)[0], 0.0, "not queued: " + classify(r)[1])
            except Exception as exc:  # noqa: BLE001
                status, why = classify(exc=exc)
                self.rec.add("approval round", name, status, 0.0, why)
                await asyncio.sleep(0.2)

    async def job(self) -> dict[str, Any] | None:
        import asyncpg

        conn = await asyncpg.connect(self.cl.dsn)
        try:
            r = await conn.fetchrow("SELECT id, status, rewrapped, total, owner, to_version FROM rotation_jobs "
                                    "ORDER BY id DESC LIMIT 1")
            return dict(r) if r else None
        finally:
            await conn.close()

    async def wait_job(self, cond: Callable[[dict[str, Any]], bool], within: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(Exception):
                j = await self.job()
                if j and cond(j):
                    return j
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)

    async def tool(self, url: str, name: str, args: dict[str, Any], token: str | None = None,
                   sent: asyncio.Event | None = None) -> Any:
        """One call on its own client; `sent` is set once the tools/call request has left."""
        async def hook(request: Any) -> None:
            if sent is not None and request.method == "POST" and b"tools/call" in request.content:
                sent.set()

        async with client(url, token or self.token, on_request=hook if sent is not None else None) as c:
            return await c.call_tool(name, args)

    async def resume(self, job_id: int, why: str) -> str:
        """Resume the job on a surviving replica unless another replica already took it over."""
        j = await self.job()
        if j and j["status"] == "completed":
            return "already completed"
        r = await self.tool(self.url(), "system_vault_resume_rotation_job", {"job_id": job_id})
        text = classify(r)[1]
        self.notes.setdefault("resumes", "")
        done = "resumed through system_vault_resume_rotation_job" if not r.is_error else text
        self.notes["resumes"] += f"{why[:1].upper()}{why[1:]}: {done}. "
        return "resumed through system_vault_resume_rotation_job on a surviving replica" if not r.is_error else text

    async def run(self, credentials: int, batch: int, sync_items: int, workers: int) -> dict[str, Any]:
        cl = self.cl
        out: dict[str, Any] = {"credentials": credentials, "batch": batch, "sync_items": sync_items,
                               "workers": workers, "faults": []}
        # Seeding (not timed): credentials on the pepper's v1, a git repository with the sync run's resources.
        await seed_credentials(cl, credentials)
        repo = cl.tmp / "gitops-repo"
        await asyncio.to_thread(git_commit, repo, apply_yaml(sync_items, f"{self.prefix}sync"))
        # Its own account: a sync run proposes deleting the account's live resources that fleet.yaml lacks.
        r = await self.tool(self.url(), "system_gitops_register_repository",
                            {"name": "scaleout", "repo_url": f"file://{repo}", "branch": "main"}, self.gitops)
        repo_id = find_key(r.structured_content, "repository_id", "id")
        r = await self.tool(self.url(), "system_gitops_sync_repository", {"repository_id": repo_id}, self.gitops)
        sync_run_id = find_key(r.structured_content, "sync_run_id", "id")
        if r.is_error or not isinstance(sync_run_id, int):
            raise RuntimeError(f"sync failed: {r.content}")

        tasks = [asyncio.create_task(self.worker(w)) for w in range(workers)]
        tasks.append(asyncio.create_task(self.approvals()))
        try:
            await self.calls_after(workers * 3)

            # 1. A replica SIGKILLed mid-rotation and mid-apply; the rotation finishes on another replica.
            self.rec.phase = "replica SIGKILLed mid-rotation and mid-apply"
            victim = max(cl.replicas)
            vurl = cl.replicas[victim].url
            r = await self.tool(vurl, "system_rotate_vault_transit_pepper", {"batch_size": batch})
            job_id = find_key(r.structured_content, "job_id", "id")
            if r.is_error or not isinstance(job_id, int):
                raise RuntimeError(f"rotation did not start: {r.content}")
            await self.wait_job(lambda j: j["rewrapped"] > 0 or j["status"] != "running", 120)
            apply_sent = asyncio.Event()
            apply_task = asyncio.create_task(self.tool(vurl, "system_gitops_apply_sync_run",
                                                       {"sync_run_id": sync_run_id}, self.gitops, apply_sent))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(apply_sent.wait(), 30)
            await asyncio.to_thread(cl.kill, victim)
            killed_at = await self.job() or {}
            try:
                first_apply = classify(await apply_task)
            except Exception as exc:  # noqa: BLE001 - the replica died under it
                first_apply = classify(exc=exc)
            out["killed"] = {"replica": victim, "rewrapped_before": killed_at.get("rewrapped"),
                             "total": killed_at.get("total"), "status_before": killed_at.get("status"),
                             "apply_on_victim": first_apply[0] + (f" ({first_apply[1][:120]})" if first_apply[1]
                                                                  else "")}
            # The apply, retried on a survivor: it runs, or is refused because the first one committed.
            r = await self.tool(self.url(), "system_gitops_apply_sync_run", {"sync_run_id": sync_run_id},
                                self.gitops)
            out["apply_retry"] = "applied" if not r.is_error else classify(r)[1]
            # Automatic takeover: a surviving replica's takeover tick (vault.resume_rotations) claims a job
            # whose owner is gone. Wait one tick interval (and a margin) for another owner to drive it; only
            # then resume it by hand on a survivor, and say so.
            wait = takeover_interval() + 15
            t0 = time.monotonic()
            taken = await self.wait_job(lambda j: j["status"] not in ("running", "pending", "paused") or (
                j["owner"] not in (None, killed_at.get("owner"))
                and j["rewrapped"] > (killed_at.get("rewrapped") or 0)), wait)
            if taken is not None:
                out["takeover"] = (f"taken over automatically by a surviving replica's takeover tick (every "
                                   f"{takeover_interval():.0f} s) {time.monotonic() - t0:.1f} s after the kill")
            else:
                out["takeover"] = (f"not taken over automatically within {wait} s; "
                                   + await self.resume(job_id, "after the SIGKILL"))
            await self.wait_job(lambda j: j["rewrapped"] > (killed_at.get("rewrapped") or 0)
                                or j["status"] != "running", 60)
            self.fault("replica SIGKILLed mid-rotation and mid-apply")

            # 2. OpenBao sealed (mid-rotation when it is still running) and unsealed.
            self.rec.phase = "OpenBao sealed and unsealed"
            before = await self.job()
            await asyncio.to_thread(cl.bao.seal)
            paused = await self.wait_job(lambda j: j["status"] != "running", 30)
            await self.calls_after(workers, "not ok", within=15)
            await asyncio.to_thread(cl.bao.unseal)
            out["seal"] = {"status_before": (before or {}).get("status"), "status_sealed": (paused or {}).get("status")}
            await self.calls_after(workers, "ok", within=60)
            j = await self.job()
            if j and j["status"] in ("paused", "pending", "running"):
                if j["status"] != "running":
                    await self.resume(job_id, "after the unseal")
            done = await self.wait_job(lambda j: j["status"] not in ("running", "pending", "paused"),
                                       300 if not self.ctx.quick else 120)
            out["rotation"] = {"status": (done or await self.job() or {}).get("status")}
            self.fault("OpenBao sealed and unsealed")

            # 3. PostgreSQL restarted.
            self.rec.phase = "PostgreSQL restarted"
            await asyncio.to_thread(cl.pg_ctl, "-m", "fast", "-w", "stop")
            await self.calls_after(workers, "not ok", within=15)
            opts = (f"-p {cl.pg.port} -k {cl.pg.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            await asyncio.to_thread(cl.pg_ctl, "-o", opts, "-l", str(cl.pg.dir / "log"), "-w", "start")
            out["pg_recovered"] = await self.calls_after(workers * 3, "ok", within=60)
            self.fault("PostgreSQL restarted")

            # 4. Clients gone mid-call: the request has left, then the client disappears.
            self.rec.phase = "client disconnected mid-call"
            for k in range(3 if self.ctx.quick else 8):
                await self.disconnect(k)
            await self.calls_after(workers, "ok", within=30)
            self.fault("client disconnected mid-call")
        finally:
            self.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        out["sync_run_id"] = sync_run_id
        return out

    async def disconnect(self, k: int) -> None:
        """Send a write, and drop the client as soon as the tools/call request has left."""
        sent = asyncio.Event()

        async def hook(request: Any) -> None:
            if request.method == "POST" and b"tools/call" in request.content:
                sent.set()

        name = f"{self.prefix}gone-{k}"

        async def call() -> None:
            async with client(self.url(), self.token, on_request=hook) as c:
                await c.call_tool("system_put_template", {"name": name, "spec": {"description": "gone"}})

        task = asyncio.create_task(call())
        t0 = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sent.wait(), 30)
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        # Not acknowledged: the write may or may not have happened; the invariants require its audit row if so.
        self.rec.add("disconnected call", name, "unavailable" if not task.done() or task.cancelled() else "ok",
                     time.perf_counter() - t0, "[client went away]")

    def fault(self, phase: str) -> None:
        self.notes.setdefault("order", "")
        self.notes["order"] += phase + "; "


def takeover_interval() -> float:
    """Seconds between the scheduler's takeover ticks (the default every replica runs with here)."""
    from fleet_mcp.settings import Settings

    field = Settings.model_fields.get("job_takeover_interval")
    return float(field.default) if field is not None and isinstance(field.default, int | float) else 60.0


async def seed_credentials(cl: Cluster, n: int) -> None:
    from benchmarks.rotation import seed_fleet

    env = {"FLEET_MCP_DATA_DIR": str(cl.tmp / "seed" / "app-data"), "FLEET_MCP_DATABASE_URL": cl.db_url,
           "FLEET_MCP_TRANSIT": "vault", "FLEET_MCP_VAULT_ADDR": cl.bao.addr, "FLEET_MCP_VAULT_TOKEN": cl.bao.token,
           "FLEET_MCP_PEPPER_KEY": PEPPER, "FLEET_MCP_AUDIT_KEY": cl.audit_key}
    await seed_fleet(env, cl.tmp / "seed", n)


async def fault_run(ctx: RunContext, cl: Cluster, token: str, approver: str, gitops: str,
                    report: dict[str, Any]) -> list[str]:
    fr = FaultRun(ctx, cl, token, approver, gitops)
    credentials, batch, sync_items, workers = (1500, 20, 20, 4) if ctx.quick else (12_000, 100, 200, 8)
    t0 = time.perf_counter()
    out = await fr.run(credentials, batch, sync_items, workers)
    out["seconds"] = time.perf_counter() - t0
    outcome = await read_outcome(cl, fr.rec, fr.prefix, token=token, sync_run_id=out["sync_run_id"],
                                 sync_expected=sync_items,
                                 approvals=fr.queued, in_client=fr.in_client, replays_run=fr.replays_run,
                                 check_credentials=True)
    bad = check_invariants(outcome)
    phases = [p for p in dict.fromkeys(c.phase for c in fr.rec.calls)]
    out["phases"] = {p: fr.rec.counts(p) for p in phases}
    out["by_tool"] = {t: dict(Counter(c.status for c in fr.rec.calls if c.tool == t))
                      for t in sorted({c.tool for c in fr.rec.calls})}
    out["invariants"] = bad
    out["notes"] = fr.notes
    out["outcome"] = {"acknowledged": {k: len(v) for k, v in outcome.acknowledged.items()},
                      "present": {k: sum(v.values()) for k, v in outcome.present.items()},
                      "queued_approvals": len(fr.queued), "in_client_approvals": len(fr.in_client),
                      "executions": sum(outcome.executions.values()), "replays_run": outcome.replays_run,
                      "credentials": outcome.credentials, "undecryptable": outcome.credentials_undecryptable,
                      "behind": outcome.credentials_behind, "latest_version": outcome.latest_version,
                      "rotation": outcome.rotation_status, "sync_applies_ok": outcome.sync_applies_ok,
                      "sync_resources": len(outcome.applied_revisions), "audit_verify": outcome.audit_verify_text}
    first_fail = next((f"{c.tool}: {c.why}" for c in fr.rec.calls if c.status == "failed"), "")
    out["first_failure"] = first_fail
    out["first_why"] = {f"{c.tool}|{c.status}": c.why for c in reversed(fr.rec.calls) if c.status != "ok"}
    report["faults"] = out
    for phase, counts in out["phases"].items():
        ctx.add(f"fault.{phase}", f"fault run: {phase}: calls ok", float(counts["ok"]), "calls",
                note=f"ok {counts['ok']} / busy {counts['busy']} / unavailable {counts['unavailable']} / failed "
                f"{counts['failed']}; connections lost or refused {counts['connections_lost']}", **counts)
    ctx.add("fault.invariants", "fault run (3 replicas): invariant violations", float(len(bad)), "",
            ratio=float(len(bad)), target=("<=", 0), note="; ".join(bad))
    return bad


# -- the family ----------------------------------------------------------------------------------------------
LIMITS = (
    "On {cpus} CPU core(s), every replica, every echo process, PostgreSQL, OpenBao and the load-generating "
    "client share the same cores: adding replicas adds processes competing for them, not capacity, so "
    "throughput cannot grow with the replica count here (the floor's does not either, and other work on the "
    "machine moves both). Beyond the cores, every call — a read too — appends its audit row to one hash chain "
    "whose head row (`audit_head`) each append locks, so audited calls serialize on that row across replicas "
    "whatever the core count. The figures show what replicas cost against as many bare echo processes on the "
    "same cores, and that the invariants hold under contention — not how far replicas scale on a machine "
    "with a core per replica."
)


async def run(ctx: RunContext) -> None:
    report: dict[str, Any] = {"quick": ctx.quick}
    ctx.details = report
    try:
        cl = await asyncio.to_thread(Cluster, ctx.tmp)
    except RuntimeError as exc:
        ctx.unavailable("cluster", "replicas on PostgreSQL and OpenBao", str(exc))
        report["error"] = str(exc)
        return
    violations: list[str] = []
    try:
        await asyncio.to_thread(cl.cli, "db", "upgrade")
        token = await asyncio.to_thread(cl.token, "scaleout")
        approver = await asyncio.to_thread(cl.token, "scaleout-approver")
        await asyncio.to_thread(cl.cli, "account", "create", "gitops")
        gitops = await asyncio.to_thread(cl.token, "scaleout-gitops", "gitops")
        report["limits"] = LIMITS.format(cpus=ctx.machine.get("cpu_count"))
        await load_runs(ctx, cl, token, report)
        violations += [f"load, {row['replicas']} replica(s): {b}" for row in report["load"]["rows"]
                       for b in row["invariants"]]
        violations += [f"fault run: {b}" for b in await fault_run(ctx, cl, token, approver, gitops, report)]
    finally:
        await asyncio.to_thread(cl.close)
    ctx.facts.update(replicas="1, 2, 3", cpu_limit=f"{ctx.machine.get('cpu_count')} cores shared by all processes")
    if violations:
        raise InvariantViolated("; ".join(violations))


# -- docs/RELIABILITY.md -------------------------------------------------------------------------------------
def render_reliability(results: dict[str, Any]) -> str | None:
    """docs/RELIABILITY.md from a results file's scaleout family (None when it holds none)."""
    from benchmarks.common import Figure, fmt_value
    from benchmarks.report import _machine_text

    meta = results.get("families", {}).get(NAME)
    if not meta:
        return None
    d = meta.get("details") or {}
    figs = {f["name"]: Figure.from_json(f) for f in results.get("figures", []) if f["family"] == NAME}
    quick = results.get("mode") == "quick"
    out = [] if quick else [FULL_MARKER]
    out += [
        "<!-- generated by `python -m benchmarks --only scaleout`; edit benchmarks/scaleout.py, not this file -->",
        "# Reliability: replicas, faults and invariants",
        "",
        f"Measured {meta.get('ran_at', '?')[:16].replace('T', ' ')} UTC ({results.get('mode')} run, "
        f"{meta.get('duration_s', 0):.0f} s) on {_machine_text(meta.get('machine') or results['machine'])}.",
        "",
        DESCRIPTION,
        "",
        "Rerun: `python -m benchmarks --only scaleout` (full) or `python -m benchmarks --quick --only scaleout` "
        "(the variant CI runs with `--strict`: a violated invariant fails it).",
        "",
    ]
    if meta.get("error"):
        out += [f"**This run failed:** `{meta['error']}`", ""]
    out += ["## What the machine limits", "", d.get("limits", ""), ""]
    load = d.get("load") or {}
    if load.get("rows"):
        out += ["## Throughput and p99 by replica count", "",
                f"{load['sessions']} client sessions round-robin over the replicas, {load['calls_per_session']} "
                "calls each, all at once (one untimed call per session first). Ratio = fleet-mcp ÷ the echo floor "
                "on as many processes.", "",
                "| Replicas | Echo floor | Reads | Ratio | Writes | Ratio | Echo p99 | Read p99 | Write p99 | "
                "Invariants |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in load["rows"]:
            ft = r["floor_throughput"]
            inv = "hold" if not r["invariants"] else "**VIOLATED**: " + "; ".join(r["invariants"])
            out.append(
                f"| {r['replicas']} | {fmt_value(ft, 'calls/s')} | {fmt_value(r['read_throughput'], 'calls/s')} | "
                f"{r['read_throughput'] / ft:.2f} | {fmt_value(r['write_throughput'], 'calls/s')} | "
                f"{r['write_throughput'] / ft:.2f} | {fmt_value(r['floor_p99'], 's')} | "
                f"{fmt_value(r['read_p99'], 's')} | {fmt_value(r['write_p99'], 's')} | {inv} |")
        out.append("")
        errs = [f"{r['replicas']} replica(s): {r['read_errors']} read / {r['write_errors']} write error results"
                for r in load["rows"] if r.get("read_errors") or r.get("write_errors")]
        out += ["Error results: " + ("; ".join(errs) if errs else "none") + ".", ""]
    f = d.get("faults")
    if f:
        o = f.get("outcome", {})
        out += ["## Fault run (3 replicas, mixed load)", "",
                f"{f['workers']} load clients (half reads, three tenths template writes, a fifth credential writes), "
                "an approvals client (in-client approvals whose answer goes to another replica than the one that "
                "asked and is then replayed on a third; queued approvals approved on two other replicas at once), "
                f"a pepper rotation over {f['credentials']:,} credentials (batches of {f['batch']}) and a sync-run "
                f"apply of {f['sync_items']} resources. The faults, in order; a client whose replica died "
                "reconnects to another (as a load balancer's health check would), the failed call counted. "
                f"The run took {f.get('seconds', 0):.0f} s.", "",
                "| Phase | Calls ok | Busy | Unavailable | Failed | Connections lost or refused |",
                "|---|---:|---:|---:|---:|---:|"]
        for phase, c in f["phases"].items():
            out.append(f"| {phase} | {c['ok']} | {c['busy']} | {c['unavailable']} | {c['failed']} | "
                       f"{c.get('connections_lost', 0)} |")
        out += ["", "| Call | " + " | ".join(STATUSES) + " |", "|---|" + "---:|" * len(STATUSES)]
        for tool, c in f["by_tool"].items():
            out.append(f"| {tool} | " + " | ".join(str(c.get(s, 0)) for s in STATUSES) + " |")
        whys = f.get("first_why") or {}
        if any("MCPError: Server returned an error response" in w for w in whys.values()):
            out += ["", "`MCPError: Server returned an error response` is how the SDK client reports an HTTP error "
                    "status without a JSON-RPC error body instead of a tool result. Such calls changed nothing "
                    "(the invariants below hold); they are counted as *failed*."]
        if whys:
            out += ["", "The first answer of each kind that was not ok (`transport:` — the SDK client raised, no tool "
                    f"result reached it; *{CONNECTION}* rows are connections, not calls):", "",
                    "| Call | Outcome | First reason |", "|---|---|---|"]
            for key in sorted(whys):
                tool, _, status = key.partition("|")
                out.append(f"| {tool} | {status} | {_md(whys[key])} |")
        k = f.get("killed", {})
        out += ["",
                f"- Replica {k.get('replica')} was SIGKILLed with the rotation {k.get('status_before')} at "
                f"{k.get('rewrapped_before')} of {k.get('total')} rows and a sync-run apply in flight on it. "
                f"Takeover of the rotation: {f.get('takeover')}. The apply on the killed replica: "
                f"{k.get('apply_on_victim')}; retried on a survivor: {f.get('apply_retry')}.",
                f"- OpenBao sealed: the rotation went from {f.get('seal', {}).get('status_before')} to "
                f"{f.get('seal', {}).get('status_sealed')}; after the unseal it ended "
                f"{f.get('rotation', {}).get('status')}. {f.get('notes', {}).get('resumes', '')}",
                f"- PostgreSQL restarted (fast stop, start): the replicas served again without a restart: "
                f"{f.get('pg_recovered')}.",
                f"- First failed call (if any): {f.get('first_failure') or 'none'}.",
                "",
                "## Invariants checked after the fault run", "",
                f"- Acknowledged writes: {o.get('acknowledged')}; rows present for the run's names: "
                f"{o.get('present')} (each acknowledged write exactly once; a write whose client saw no answer may "
                "be present, but never without its audit row).",
                f"- Approvals: {o.get('in_client_approvals')} in-client, {o.get('queued_approvals')} queued; "
                f"{o.get('executions')} executions, each at most once; replayed answers that ran again: "
                f"{o.get('replays_run')}.",
                f"- Credentials: {o.get('credentials')}, undecryptable {o.get('undecryptable')}, not on the latest "
                f"key version (v{o.get('latest_version')}) {o.get('behind')}; rotation {o.get('rotation')}.",
                f"- Sync run: {o.get('sync_resources')} resources, applied {o.get('sync_applies_ok')} time(s), "
                "each at revision 1.",
                f"- `fleet-mcp audit verify`: {o.get('audit_verify')}.",
                "",
                ("All invariants hold." if not f["invariants"] else
                 "**Violated:** " + "; ".join(f["invariants"])), ""]
    fi = figs.get("fault.invariants")
    if fi is None and not f:
        out += ["The fault run did not complete in this run.", ""]
    return "\n".join(out).rstrip() + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:240]


def write_reliability(results: dict[str, Any], *, allow_quick_over_full: bool) -> Path | None:
    text = render_reliability(results)
    if text is None:
        return None
    if (results.get("mode") == "quick" and not allow_quick_over_full and DOCS.exists()
            and FULL_MARKER in DOCS.read_text()):
        print(f"reliability: {DOCS.relative_to(ROOT)} holds a full run; a quick run leaves it alone")
        return None
    DOCS.write_text(text)
    print(f"reliability: {DOCS.relative_to(ROOT)}")
    return DOCS
