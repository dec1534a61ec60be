"""The server as users run it: a real stdio subprocess and a real HTTP port with real tokens, both
protocol eras (the client's default 2026-07-28 and the 2025-11-25 handshake of Claude Desktop)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import HttpServer, cli_env, run_cli

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_subprocess(tmp_path: Path, fresh_db_url: str, mode: str) -> None:
    env = cli_env(tmp_path / "data", fresh_db_url, FLEET_MCP_ACCOUNT="ops", FLEET_MCP_PRINCIPAL="olivia")
    params = StdioServerParameters(command=sys.executable, args=["-m", "fleet_mcp", "serve"], env=env)
    async with Client(params, mode=mode) as c:
        tools = await c.list_tools()
        names = {t.name for t in tools.tools}
        contracts = {p.stem for p in (ROOT / "tools").glob("system_*.json")}
        assert names == contracts
        r = await c.call_tool("system_put_template", {"name": "edge", "spec": {"node_platform": "linux"}})
        assert not r.is_error, r.content
        r = await c.call_tool("system_audit_query", {"tool": "system_put_template"})
        entry = r.structured_content["entries"][0]
        assert entry["principal"] == "ops/olivia" and entry["outcome"] == "ok"
    # The CLI sees the same chain.
    out = run_cli(env, "audit", "verify")
    assert "audit chain ok" in out.stdout


def _token(env: dict[str, str], account: str, label: str, role: str) -> str:
    return run_cli(env, "token", "create", "--account", account, "--name", label, "--role", role
                   ).stdout.strip().splitlines()[-1]


def _client(url: str, token: str, mode: str = "auto") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(url + "/mcp", http_client=http), mode=mode)


@pytest.fixture
def http_env(tmp_path: Path, fresh_db_url: str):  # noqa: ANN201
    env = cli_env(tmp_path / "data", fresh_db_url)
    run_cli(env, "db", "upgrade")
    run_cli(env, "account", "create", "acme")
    run_cli(env, "account", "create", "globex")
    server = HttpServer(env)
    yield env, server
    server.stop()


def _post(url: str, headers: dict[str, str]) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_tokens_accounts_and_revocation(http_env, mode: str) -> None:  # noqa: ANN001
    env, server = http_env
    alice = _token(env, "acme", "alice", "operator")
    bob = _token(env, "globex", "bob", "admin")
    async with _client(server.url, alice, mode) as c:
        r = await c.call_tool("system_put_template", {"name": "web", "spec": {}})
        assert not r.is_error, r.content
    async with _client(server.url, bob, mode) as c:
        # Another account sees none of acme's resources and cannot read them by name.
        r = await c.call_tool("system_list_templates", {})
        assert r.structured_content["items"] == []
        r = await c.call_tool("system_get_template", {"name": "web"})
        assert r.is_error and r.structured_content["error"]["code"] == "not_found"
    # The audit row names the token's principal; a viewer cannot write.
    async with _client(server.url, alice, mode) as c:
        r = await c.call_tool("system_audit_query", {"tool": "system_put_template"})
        assert r.structured_content["entries"][0]["principal"] == "acme/alice"
    viewer = _token(env, "acme", f"vic-{mode}", "viewer")
    async with _client(server.url, viewer, mode) as c:
        r = await c.call_tool("system_put_template", {"name": "web2", "spec": {}})
        assert r.is_error and r.structured_content["permission"] == "system.fleet.write"
    run_cli(env, "token", "revoke", "alice")
    assert _post(server.url + "/mcp", {"Authorization": f"Bearer {alice}"}) == 403


async def test_http_rejects_missing_and_unknown_tokens_and_bad_origin(http_env) -> None:  # noqa: ANN001
    env, server = http_env
    assert _post(server.url + "/mcp", {}) == 401
    assert _post(server.url + "/mcp", {"Authorization": "Bearer fmcp_nope_nope"}) == 401
    good = _token(env, "acme", "carol", "viewer")
    assert _post(server.url + "/mcp", {"Authorization": f"Bearer {good}", "Origin": "http://evil.example"}) == 403
    assert _post(server.url + "/mcp", {"Authorization": f"Bearer {good}", "Host": "evil.example"}) == 421
    with urllib.request.urlopen(server.url + "/healthz", timeout=5) as r:
        assert json.loads(r.read())["status"] == "ok"
    # Tokens are stored as digests only.
    listing = run_cli(env, "token", "list").stdout
    assert good not in listing and "carol" in listing
