"""Issue 15 (5, 6): health checks and draining, on a real `fleet-mcp serve --transport http` process.

/readyz follows the database (503 `database_unreachable` while PostgreSQL is stopped, 200 again once it is
back, without a restart) while /livez stays 200. SIGTERM drains: /readyz answers 503 `draining`, a new
session is refused with 503 and Retry-After, a new call on an open session is refused as busy (retryable),
the call in flight (held inside OpenBao by a proxy) completes for its client with its audit row, and the
process exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import HttpServer, PostgresServer, cli_env, run_cli
from tests.vault.bao_server import OpenBaoServer, need_bao
from tests.vault.holding_proxy import HoldingProxy

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
ALLOW_ALL = Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "allow-all.yaml"


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(probe, what: str, timeout: float = 60.0) -> Any:  # noqa: ANN001
    """Poll `probe` until it returns something truthy (a condition with a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out := probe():
            return out
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def pg() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own: the test stops and starts it."""
    try:
        server = PostgresServer()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL could not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


def _pg_ctl(server: PostgresServer, *args: str) -> None:
    server._run([str(server.bindir / "pg_ctl"), "-D", str(server.data), *args])


def test_readyz_follows_the_database_and_livez_the_process(pg: PostgresServer, tmp_path: Path) -> None:
    pg.psql("CREATE DATABASE health")
    env = cli_env(tmp_path / "data", pg.url("health"))
    server = HttpServer(env)
    try:
        code, ready = get(server.url + "/readyz")
        assert (code, ready["status"]) == (200, "ok"), ready
        assert get(server.url + "/livez") == (200, {"status": "alive", "version": ready["version"]})
        run_cli(env, "account", "create", "acme")
        token = run_cli(env, "token", "create", "--account", "acme", "--name", "alice", "--role", "viewer"
                        ).stdout.strip().splitlines()[-1]
        assert new_session(server.url, token)[0] == 200
        _pg_ctl(pg, "-m", "fast", "-w", "stop")
        for path in ("/readyz", "/healthz"):
            code, body = get(server.url + path)
            assert (code, body["reason"]) == (503, "database_unreachable"), (path, body)
        assert get(server.url + "/livez") == (200, {"status": "alive", "version": ready["version"]})
        # A request whose token cannot be checked is answered 503 with Retry-After (retryable, nothing ran),
        # not 500; the body is a JSON-RPC error, so an MCP client shows the agent why.
        code, headers, body = new_session(server.url, token)
        assert code == 503 and body["error"]["data"] == {"code": "unavailable", "retry_after_s": 2}, (code, body)
        assert body["error"]["message"].startswith("unavailable: the database cannot be reached")
        assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "2"
        assert token not in json.dumps(body)
        opts = f"-p {pg.port} -k {pg.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        _pg_ctl(pg, "-o", opts, "-l", str(pg.dir / "log"), "-w", "start")
        wait_for(lambda: get(server.url + "/readyz")[0] == 200, "/readyz to answer 200 again")
        assert new_session(server.url, token)[0] == 200
        assert server.proc.poll() is None  # the same process: no restart
    finally:
        server.stop()


# -- draining on SIGTERM -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBaoServer]:
    server = OpenBaoServer(need_bao(), dev=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def vault_env(data: Path, db_url: str, proxy: HoldingProxy, key: str, **extra: str) -> dict[str, str]:
    return cli_env(data, db_url, FLEET_MCP_TRANSIT="vault", FLEET_MCP_VAULT_ADDR=proxy.addr,
                   FLEET_MCP_VAULT_TOKEN="root", FLEET_MCP_PEPPER_KEY=key, FLEET_MCP_POLICY=str(ALLOW_ALL), **extra)


def client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120)
    return Client(streamable_http_client(url + "/mcp", http_client=http))


def new_session(url: str, token: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).encode()
    req = urllib.request.Request(url + "/mcp", data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), {}
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def drain_setup(bao: OpenBaoServer, pg: PostgresServer, tmp_path: Path, *, drain_timeout: str
                ) -> tuple[HoldingProxy, dict[str, str], str]:
    """A fresh PostgreSQL database and pepper key behind a holding proxy, migrated, with an admin token."""
    key = f"pepper-{uuid.uuid4().hex[:10]}"
    proxy = HoldingProxy(bao.port, f"/transit/encrypt/{key}".encode())
    db = "d_" + uuid.uuid4().hex[:12]
    pg.psql(f"CREATE DATABASE {db}")
    env = vault_env(tmp_path / "data", pg.url(db), proxy, key, FLEET_MCP_DRAIN_TIMEOUT=drain_timeout)
    run_cli(env, "db", "upgrade")
    run_cli(env, "account", "create", "acme")
    token = run_cli(env, "token", "create", "--account", "acme", "--name", "alice", "--role", "admin"
                    ).stdout.strip().splitlines()[-1]
    return proxy, env, token


async def test_sigterm_drains_the_call_in_flight_and_exits_0(
    bao: OpenBaoServer, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    proxy, env, token = drain_setup(bao, postgres_server, tmp_path, drain_timeout="120")
    server = HttpServer(env)
    try:
        async with client(server.url, token) as c:
            proxy.hold()  # the next encrypt waits inside the proxy: the call is in flight
            async with anyio.create_task_group() as tg:
                results: dict[str, Any] = {}

                async def slow_call() -> None:
                    results["slow"] = await c.call_tool("system_vault_store_credential",
                                                        {"name": "db", "kind": "password", "secret": "s3cret!"})

                tg.start_soon(slow_call)
                assert await anyio.to_thread.run_sync(proxy.held.wait, 60), "the call never reached OpenBao"
                server.proc.send_signal(signal.SIGTERM)
                code, body = await anyio.to_thread.run_sync(
                    wait_for, lambda: (r := get(server.url + "/readyz"))[0] == 503 and r, "/readyz to say draining")
                assert body["reason"] == "draining", body
                assert get(server.url + "/livez")[0] == 200
                code, headers, refused = new_session(server.url, token)
                assert (code, refused["error"]["data"]["code"]) == (503, "draining"), refused
                assert headers.get("retry-after") == "1" and "shutting down" in refused["error"]["message"]
                busy = await c.call_tool("system_list_templates", {})
                assert busy.is_error and busy.structured_content["status"] == "busy", busy.structured_content
                assert busy.structured_content["retry_after"] > 0
                assert server.proc.poll() is None  # still draining: the held call has not ended
                proxy.release()
            slow = results["slow"]
            assert not slow.is_error, slow.content
        assert await anyio.to_thread.run_sync(server.proc.wait, 120) == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        proxy.close()
    log = Path(server.log.name).read_text()
    assert "Traceback" not in log, log
    env["FLEET_MCP_VAULT_ADDR"] = bao.addr  # the proxy is gone
    assert "audit chain ok" in run_cli(env, "audit", "verify").stdout
    rows = [json.loads(line) for line in run_cli(env, "audit", "export").stdout.splitlines()]
    stored = [r for r in rows if r["tool"] == "system_vault_store_credential"]
    assert [(r["principal"], r["outcome"]) for r in stored] == [("acme/alice", "ok")], stored
    assert [r["tool"] for r in rows if r["outcome"] == "busy"] == ["system_list_templates"]


def test_the_drain_is_bounded(bao: OpenBaoServer, postgres_server: PostgresServer, tmp_path: Path) -> None:
    """A call that never ends does not keep the process: after FLEET_MCP_DRAIN_TIMEOUT it exits anyway, and
    the call's unit of work rolls back (no credential, no 'ok' row), the audit chain whole."""
    proxy, env, token = drain_setup(bao, postgres_server, tmp_path, drain_timeout="1")
    server = HttpServer(env)
    caller = None
    try:
        proxy.hold()
        call = json.dumps({"name": "db", "kind": "password", "secret": "s3cret!"})
        caller = subprocess.Popen(  # a client in another process, so this test only waits on processes
            [__import__("sys").executable, "-c", _CLIENT, server.url, token, call],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proxy.held.wait(60), "the call never reached OpenBao"
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(120) == 0
    finally:
        proxy.close()
        if server.proc.poll() is None:
            server.proc.kill()
        if caller is not None:
            caller.wait(60)
    assert "drain timeout: 1 call(s)" in Path(server.log.name).read_text()
    env["FLEET_MCP_VAULT_ADDR"] = bao.addr  # the proxy is gone
    assert "audit chain ok" in run_cli(env, "audit", "verify").stdout
    rows = [json.loads(line) for line in run_cli(env, "audit", "export").stdout.splitlines()]
    assert not [r for r in rows if r["tool"] == "system_vault_store_credential" and r["outcome"] == "ok"]


_CLIENT = """
import asyncio, json, sys
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

async def main():
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {sys.argv[2]}"}, timeout=120)
    try:
        async with Client(streamable_http_client(sys.argv[1] + "/mcp", http_client=http)) as c:
            await c.call_tool("system_vault_store_credential", json.loads(sys.argv[3]))
    except BaseException as exc:
        print(type(exc).__name__)

asyncio.run(main())
"""
