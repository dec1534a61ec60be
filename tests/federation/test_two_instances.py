"""Federation between two real `fleet-mcp serve` processes on loopback, each with its own data dir, database
and keyring, both driven through the MCP SDK client by their own operators (approvals answered by the
operator at the client, as the shipped policy asks)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ElicitResult

from tests.conftest import HttpServer, cli_env, run_cli

pytestmark = pytest.mark.anyio

ACME, GLOBEX = "acme.eu-west.fleet.example", "globex.us-east.fleet.example"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Instance:
    name: str
    env: dict[str, str]
    fed_port: int
    token: str
    server: HttpServer | None = None

    def start(self) -> None:
        self.server = HttpServer(self.env, "--federation-listen", f"127.0.0.1:{self.fed_port}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.fed_port}"

    @asynccontextmanager
    async def client(self):  # noqa: ANN201
        async def approve(_ctx: Any, _params: Any) -> ElicitResult:
            return ElicitResult(action="accept", content={"approve": True})

        assert self.server is not None
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        async with Client(
            streamable_http_client(self.server.url + "/mcp", http_client=http), elicitation_callback=approve
        ) as c:
            yield c


def _instance(tmp_path: Path, name: str, account: str, domain: str, db_url: str | None = None) -> Instance:
    data = tmp_path / name
    env = cli_env(data, db_url or f"sqlite+aiosqlite:///{data / 'fleet.db'}", FLEET_MCP_SCHEDULER="false")
    run_cli(env, "db", "upgrade")
    run_cli(env, "account", "create", account, "--federation-domain", domain)
    token = run_cli(env, "token", "create", "--account", account, "--name", f"{name}-ops", "--role", "admin"
                    ).stdout.strip().splitlines()[-1]
    return Instance(name, env, _free_port(), token)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Instance, Instance]]:
    a = _instance(tmp_path, "eu-west", "acme", ACME)
    b = _instance(tmp_path, "us-east", "globex", GLOBEX)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


async def call(c: Client, tool: str, args: dict[str, Any] | None = None) -> tuple[bool, dict[str, Any]]:
    r = await c.call_tool(tool, args or {})
    return not r.is_error, r.structured_content or {}


async def propose(a: Instance, ttl: int = 3600) -> tuple[int, str]:
    async with a.client() as c:
        ok, r = await call(c, "system_sdwan_propose_federation_peer",
                           {"remote_account": "globex", "remote_federation_domain": GLOBEX, "token_ttl_seconds": ttl})
    assert ok, r
    assert r["peering_token"].startswith("fmcp-peering-v1.")
    return r["federation_peer"]["id"], r["peering_token"]


def _doc(token: str) -> dict[str, Any]:
    body = token.split(".", 1)[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def _forge(token: str, **changes: Any) -> str:
    doc = {**_doc(token), **changes}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return "fmcp-peering-v1." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_propose_accept_refresh_suspend_and_revoke_across_instances(two) -> None:  # noqa: ANN001
    a, b = two
    peer_a, token = await propose(a)
    doc = _doc(token)
    assert doc["ep"] == [a.endpoint] and doc["acct"] == "acme" and doc["rdom"] == GLOBEX
    assert len(doc["pin"]) == 64 and doc["iss"].startswith("inst-")

    async with b.client() as c:
        ok, r = await call(c, "system_sdwan_accept_remote_federation_peer", {"peering_token": token})
        assert ok, r
        peer_b = r["federation_peer"]["id"]
        assert r["federation_peer"]["status"] == "accepted"
        assert r["federation_peer"]["local_account"] == f"acme@{doc['iss']}"
        [cross_b] = [x for x in r["cross_certificates"] if x["state"] == "current"]
        assert (cross_b["signed_by"], cross_b["name_constraints"]) == ("globex", [ACME])
        # The token works once (a trailing newline makes it a new call for the gate's single-use approvals).
        ok, r = await call(c, "system_sdwan_accept_remote_federation_peer", {"peering_token": token + "\n"})
        assert not ok and r.get("error", {}).get("code") == "unauthenticated", (ok, r)
        ok, bundle_b = await call(c, "system_sdwan_get_trust_bundle")
        assert bundle_b["certificate_count"] == 2

    async with a.client() as c:
        ok, r = await call(c, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_a})
        peer = r["federation_peer"]
        assert peer["status"] == "accepted" and peer["remote_account"].startswith("globex@inst-")
        [cross_a] = [x for x in peer["cross_certificates"] if x["state"] == "current"]
        assert (cross_a["signed_by"], cross_a["name_constraints"]) == ("acme", [GLOBEX])
        ok, bundle_a = await call(c, "system_sdwan_get_trust_bundle")
        assert bundle_a["certificate_count"] == 2
        ok, scan = await call(c, "system_sdwan_federation_scan")
        assert [f["kind"] for f in scan["findings"]] == ["cross_handshake_pending"], scan
        ok, r = await call(c, "system_sdwan_refresh_federation_peer", {"federation_peer_id": peer_a})
        assert ok and r["outcome"] == "ok", r
        # A real mTLS handshake between a fresh acme node here and a fresh globex node there → active.
        ok, r = await call(c, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_a})
        assert ok and r["ok"], r
        assert [(d["from"], d["ok"]) for d in r["directions"]] == [("acme", True)]
        assert r["federation_peer"]["status"] == "active"
    async with b.client() as c:  # the other direction, from B; B was made active by A's handshake already
        ok, r = await call(c, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_b})
        assert r["federation_peer"]["status"] == "active"
        ok, r = await call(c, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_b})
        assert ok and r["ok"] and r["directions"][0]["from"] == "globex", r
    # A rotates its intermediate: B's next poll re-signs the new one and the link keeps working.
    async with a.client() as c:
        ok, r = await call(c, "system_sdwan_rotate_intermediate_ca")
        assert ok, r
    async with b.client() as c:
        ok, r = await call(c, "system_sdwan_refresh_federation_peer", {"federation_peer_id": peer_b})
        assert ok and r["outcome"] == "ok", r
        states = sorted(x["state"] for x in r["federation_peer"]["cross_certificates"])
        assert states == ["current", "superseded"], states
    async with a.client() as c:
        ok, r = await call(c, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_a})
        assert ok and r["ok"], r  # A's fresh node comes from the new intermediate; B trusts it
    async with a.client() as c:

        # A suspends: pushed to B, where it is A's hold (B cannot lift it).
        ok, r = await call(c, "system_sdwan_suspend_federation_peer", {"federation_peer_id": peer_a, "reason": "audit"})
        assert ok and r["federation_peer"]["status"] == "suspended", r
    async with b.client() as c:
        ok, r = await call(c, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_b})
        assert r["federation_peer"]["status"] == "suspended"
        assert r["federation_peer"]["suspended_by"] == [f"acme@{doc['iss']}"]
        ok, r = await call(c, "system_sdwan_resume_federation_peer", {"federation_peer_id": peer_b, "reason": "x"})
        assert not ok and r["error"]["code"] == "conflict"
        ok, r = await call(c, "system_sdwan_get_trust_bundle")
        assert r["certificate_count"] == 1
    async with a.client() as c:
        ok, r = await call(c, "system_sdwan_resume_federation_peer", {"federation_peer_id": peer_a, "reason": "ok"})
        assert ok and r["federation_peer"]["status"] == "accepted", r
    async with b.client() as c:
        ok, r = await call(c, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_b})
        assert r["federation_peer"]["status"] == "accepted" and r["federation_peer"]["suspended_by"] == []
        ok, r = await call(c, "system_sdwan_get_trust_bundle")
        assert r["certificate_count"] == 2

        # B revokes: pushed to A; terminal on both sides.
        ok, r = await call(c, "system_sdwan_revoke_federation_peer", {"federation_peer_id": peer_b, "reason": "done"})
        assert ok and r["federation_peer"]["status"] == "revoked"
    async with a.client() as c:
        ok, r = await call(c, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_a})
        assert r["federation_peer"]["status"] == "revoked"
        assert all(x["state"] == "revoked" for x in r["federation_peer"]["cross_certificates"])
        ok, r = await call(c, "system_sdwan_get_trust_bundle")
        assert r["certificate_count"] == 1
        # The handshake fails now: revocation on B broke it on A.
        ok, r = await call(c, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_a})
        assert ok and not r["ok"] and "verif" in r["directions"][0]["error"], r
    async with b.client() as c:  # and in the other direction, from B's node to A's
        ok, r = await call(c, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_b})
        assert ok and not r["ok"] and r["directions"][0]["from"] == "globex", r
        assert r["federation_peer"]["status"] == "revoked"


async def _nothing_on(b: Instance) -> None:
    async with b.client() as c:
        ok, r = await call(c, "system_sdwan_list_federation_peers")
        assert ok and r["count"] == 0, r
        ok, r = await call(c, "system_sdwan_get_trust_bundle")  # not even a CA was left behind
        assert not ok and r["error"]["code"] == "not_found", r


async def test_failures_leave_nothing_half_created_and_a_partition_converges(two) -> None:  # noqa: ANN001
    a, b = two
    peer_a, token = await propose(a)
    async with b.client() as c:
        # A man in the middle: the token's endpoint answers with another CA (B's own listener here).
        ok, r = await call(c, "system_sdwan_accept_remote_federation_peer",
                           {"peering_token": _forge(token, ep=[b.endpoint])})
        assert not ok and r["error"]["code"] == "external_error", r
        assert "pinned" in r["error"]["message"]
        # An expired token is refused before anything is dialed.
        ok, r = await call(c, "system_sdwan_accept_remote_federation_peer", {"peering_token": _forge(token, exp=1)})
        assert not ok and r["error"]["code"] == "conflict" and "expired" in r["error"]["message"], r
        # A token that is not one.
        ok, r = await call(c, "system_sdwan_accept_remote_federation_peer", {"peering_token": "fmcp-peering-v1.e30"})
        assert not ok and r["error"]["code"] == "invalid_argument", r
    await _nothing_on(b)

    # The issuer is down during the accept: a clear error, nothing on either side.
    a.stop()
    async with b.client() as c:
        ok, r = await call(c, "system_sdwan_accept_remote_federation_peer", {"peering_token": token})
        assert not ok and r["error"]["code"] == "external_error", r
        assert "could be reached" in r["error"]["message"]
    await _nothing_on(b)
    a.start()
    async with a.client() as c:
        ok, r = await call(c, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_a})
        assert r["federation_peer"]["status"] == "proposed" and r["federation_peer"]["cross_certificates"] == []

    # The real token still works once A is back.
    async with b.client() as c:
        ok, r = await call(c, "system_sdwan_accept_remote_federation_peer", {"peering_token": " " + token})
        assert ok, r
        peer_b = r["federation_peer"]["id"]

    # A partition during a revoke: B revokes while A is down; the push fails, B's revoke stands...
    a.stop()
    async with b.client() as c:
        ok, r = await call(c, "system_sdwan_revoke_federation_peer", {"federation_peer_id": peer_b, "reason": "cut"})
        assert ok and r["federation_peer"]["status"] == "revoked", r
    a.start()
    async with a.client() as c:
        ok, r = await call(c, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_a})
        assert r["federation_peer"]["status"] == "accepted"  # A has not heard yet
        # ...and converges when the partition heals: A's next poll pulls the revocation.
        ok, r = await call(c, "system_sdwan_refresh_federation_peer", {"federation_peer_id": peer_a})
        assert ok and r["outcome"] == "revoked" and r["federation_peer"]["status"] == "revoked", r
        ok, r = await call(c, "system_sdwan_get_trust_bundle")
        assert r["certificate_count"] == 1


@pytest.mark.postgres
async def test_two_acceptors_race_for_one_token_and_a_hanging_endpoint_is_bounded(
    tmp_path: Path, postgres_server  # noqa: ANN001
) -> None:
    import threading
    import uuid

    import anyio

    name = "fed_" + uuid.uuid4().hex[:10]
    postgres_server.psql(f"CREATE DATABASE {name}")
    a = _instance(tmp_path, "eu-west", "acme", ACME)
    b = _instance(tmp_path, "us-east", "globex", GLOBEX, db_url=postgres_server.url(name))  # PostgreSQL
    c = _instance(tmp_path, "us-east-2", "globex", GLOBEX)  # another instance with an account of that domain
    hang = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        hang.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = hang.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    try:
        for inst in (a, b, c):
            inst.start()
        peer_a, token = await propose(a)
        results: dict[str, tuple[bool, dict[str, Any]]] = {}

        async def accept(inst: Instance) -> None:
            async with inst.client() as cl:
                results[inst.name] = await call(cl, "system_sdwan_accept_remote_federation_peer",
                                                {"peering_token": token})

        async with anyio.create_task_group() as tg:
            tg.start_soon(accept, b)
            tg.start_soon(accept, c)
        winners = [n for n, (ok, _) in results.items() if ok]
        assert len(winners) == 1, results
        [(ok, loser)] = [v for n, v in results.items() if n not in winners]
        assert loser["error"]["code"] == "unauthenticated", loser
        async with a.client() as cl:
            ok, r = await call(cl, "system_sdwan_list_federation_peers")
            assert [p["status"] for p in r["federation_peers"]] == ["accepted"]
        await _nothing_on(next(i for i in (b, c) if i.name not in winners))

        # An endpoint that accepts connections and never answers: bounded by the timeout, clear error.
        async with a.client() as cl:  # a second proposal (one live peer per pair of accounts)
            ok, r = await call(cl, "system_sdwan_propose_federation_peer",
                               {"remote_account": "initech", "remote_federation_domain": "initech.fleet.example"})
        assert ok, r
        hanging = _forge(r["peering_token"], ep=[f"https://127.0.0.1:{hang.getsockname()[1]}"], rdom=GLOBEX)
        loser_inst = next(i for i in (b, c) if i.name not in winners)
        async with loser_inst.client() as cl:
            ok, r = await call(cl, "system_sdwan_accept_remote_federation_peer", {"peering_token": hanging})
        assert not ok and r["error"]["code"] == "external_error" and "did not answer" in r["error"]["message"], r
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        hang.close()
        for inst in (a, b, c):
            inst.stop()


async def test_a_hanging_remote_does_not_stall_writers_while_a_refresh_waits_for_it(tmp_path: Path) -> None:
    """A refresh dials the other instance before its unit of work opens: while the remote accepts the
    connection and then says nothing, a write tool on the same (SQLite, single-writer) instance completes."""
    import threading

    import anyio

    a = _instance(tmp_path, "eu-west", "acme", ACME)
    b = _instance(tmp_path, "us-east", "globex", GLOBEX)
    a.env["FLEET_MCP_FEDERATION_CHANNEL_TIMEOUT_SECONDS"] = "300"  # far beyond the deadline below
    hang: socket.socket | None = None
    held: list[socket.socket] = []
    dialed, stop = threading.Event(), threading.Event()
    try:
        a.start()
        b.start()
        peer_a, token = await propose(a)
        async with b.client() as c:
            ok, r = await call(c, "system_sdwan_accept_remote_federation_peer", {"peering_token": token})
            assert ok, r
        # B goes away and its address now accepts connections and never answers (not even the TLS handshake).
        b.stop()
        hang = socket.create_server(("127.0.0.1", b.fed_port))
        hang.settimeout(0.2)

        def accept_and_say_nothing() -> None:
            while not stop.is_set():
                try:
                    conn, _ = hang.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                held.append(conn)
                dialed.set()

        thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
        thread.start()
        refreshed: dict[str, Any] = {}

        async def refresh() -> None:
            async with a.client() as c:
                refreshed["result"] = await call(c, "system_sdwan_refresh_federation_peer",
                                                 {"federation_peer_id": peer_a})

        async with a.client() as writer, anyio.create_task_group() as tg:
            tg.start_soon(refresh)
            assert await anyio.to_thread.run_sync(dialed.wait, 120), "the refresh never dialed the other instance"
            with anyio.fail_after(60):  # the channel timeout is 300 s: before the change this waited for it
                ok, r = await call(writer, "system_put_template",
                                   {"name": "web", "spec": {"description": "written while a refresh waits"}})
            assert ok, r
            assert "result" not in refreshed  # the refresh is still waiting for the other instance
            for conn in held:  # the other instance hangs up: the refresh ends now, reporting it
                conn.close()
        ok, r = refreshed["result"]
        assert ok and r["outcome"] == "unreachable", r
        assert r["federation_peer"]["remote_instance"]["last_error_kind"] == "unreachable", r

        # Nothing listens there any more: a suspend commits here first, its push after the commit fails and the
        # action stays pending on the link for the next poll; the push is audited on its own.
        stop.set()
        thread.join(2)
        hang.close()
        async with a.client() as c:
            ok, r = await call(c, "system_sdwan_suspend_federation_peer",
                               {"federation_peer_id": peer_a, "reason": "remote gone"})
            assert ok and r["federation_peer"]["status"] == "suspended", r
            assert r["federation_peer"]["remote_instance"]["pending_action"] == "suspend", r
            ok, r = await call(c, "system_audit_query", {"tool": "federation.push_lifecycle"})
            assert ok and [e["outcome"] for e in r["entries"]] == ["error"], r
    finally:
        stop.set()
        for conn in held:
            conn.close()
        if hang is not None:
            hang.close()
        a.stop()
        b.stop()


async def test_strangers_cannot_lock_or_cancel_a_proposal_but_a_guessed_secret_is_counted(two) -> None:  # noqa: ANN001
    """Anyone can reach the endpoint: garbage establishes get the uniform refusal and change nothing; a wrong
    secret under the right public id (someone saw the token) counts towards the lock."""
    from fleet_mcp.federation import wire

    a, b = two
    peer_a, token = await propose(a)
    doc = _doc(token)
    ctx = wire.probe_context()  # a stranger does not even check the pin
    public_id, secret = doc["tok"].split(".")
    for _ in range(12):
        status, answer = await wire.call(a.endpoint, "POST", "/federation/v1/establish",
                                         {"tok": "fat_" + "A" * 16 + "." + "B" * 43, "peer": peer_a},
                                         ctx=ctx, server_hostname=None)
        assert (status, answer["error"]["code"]) == (401, "invalid_token")
    async with a.client() as c:
        ok, r = await call(c, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_a})
        assert r["federation_peer"]["status"] == "proposed" and r["federation_peer"]["failed_attempts"] == 0
    wrong = public_id + "." + ("A" if secret[0] != "A" else "B") + secret[1:]
    status, answer = await wire.call(a.endpoint, "POST", "/federation/v1/establish", {"tok": wrong, "peer": peer_a},
                                     ctx=ctx, server_hostname=None)
    assert (status, answer["error"]["code"]) == (401, "invalid_token")
    async with a.client() as c:
        ok, r = await call(c, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_a})
        assert r["federation_peer"]["failed_attempts"] == 1
    # The real token still works.
    async with b.client() as c:
        ok, r = await call(c, "system_sdwan_accept_remote_federation_peer", {"peering_token": token})
        assert ok, r
