"""The federation endpoint's per-source rate limit and the renewal of channel certificates, against real
`fleet-mcp serve` processes (real listeners, real TLS)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from fleet_mcp.federation import wire
from fleet_mcp.federation.listener import SourceLimiter, source_key
from tests.conftest import run_cli
from tests.federation.test_two_instances import GLOBEX, Instance, _instance, call, propose

pytestmark = pytest.mark.anyio


async def _raw(endpoint_port: int, method: str, path: str, body: dict[str, Any] | None, *,
               source: str = "127.0.0.1") -> tuple[int, dict[str, str], dict[str, Any]]:
    """One request from a chosen loopback source address; returns status, headers and body."""
    data = json.dumps(body).encode() if body is not None else b""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", endpoint_port, ssl=wire.probe_context(), server_hostname="", local_addr=(source, 0))
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + data)
        await writer.drain()
        async with asyncio.timeout(10):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            raw = await reader.readexactly(int(headers["content-length"]))
        return int(head[0].split(" ")[1]), headers, json.loads(raw)
    finally:
        writer.close()


def test_source_key_counts_ipv6_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    limiter = SourceLimiter(burst=2, per_second=0.001)
    assert [limiter("192.0.2.7", False) for _ in range(3)][:2] == [None, None]
    assert limiter("192.0.2.7", False) is not None
    assert limiter("192.0.2.7", True) is None  # channel requests have their own budget
    assert limiter("192.0.2.8", False) is None  # and every source its own


async def test_a_source_over_its_rate_is_refused_at_once_and_others_are_not(tmp_path: Path) -> None:
    a = _instance(tmp_path, "eu-west", "acme", "acme.eu-west.fleet.example")
    b = _instance(tmp_path, "us-east", "globex", GLOBEX)
    a.env.update(FLEET_MCP_FEDERATION_RATE_BURST="3", FLEET_MCP_FEDERATION_RATE_PER_SECOND="0.001")
    a.start()
    b.start()
    try:
        _, token = await propose(a)  # through /mcp: the federation listener's budget is untouched
        for _ in range(3):
            status, _, body = await _raw(a.fed_port, "GET", "/federation/v1/instance", None)
            assert status == 200 and body["instance_id"].startswith("inst-")
        # The fourth request (an establish attempt here) is refused before it reaches the database.
        status, headers, body = await _raw(a.fed_port, "POST", "/federation/v1/establish",
                                           {"tok": "fat_x.y", "peer": 1})
        assert status == 429 and body["error"]["code"] == "rate_limited", body
        assert "127.0.0.1" in body["error"]["message"] and int(headers["retry-after"]) >= 1
        # Another source address still gets through.
        status, _, body = await _raw(a.fed_port, "GET", "/federation/v1/instance", None, source="127.0.0.2")
        assert status == 200, body
        # The refused establish never reached the handler: no federation.establish audit row (a refusal by the
        # handler would have written one).
        assert not [t for t in _audit_tools(a) if t[0] == "federation.establish"]
        status, _, body = await _raw(a.fed_port, "POST", "/federation/v1/establish", {"tok": "fat_x.y", "peer": 1},
                                     source="127.0.0.3")
        assert status == 401 and body["error"]["code"] == "invalid_token", body
        assert ("federation.establish", "refused") in _audit_tools(a)
        # Another instance behind the exhausted address gets a clear error, and nothing is stored there.
        async with b.client() as c:
            ok, r = await call(c, "system_sdwan_accept_remote_federation_peer", {"peering_token": token})
            assert not ok and r["error"]["code"] == "rate_limited", r
            assert "too many requests" in r["error"]["message"]
            ok, r = await call(c, "system_sdwan_list_federation_peers")
            assert ok and r["count"] == 0, r
    finally:
        a.stop()
        b.stop()


def _audit_tools(inst: Instance) -> list[tuple[str, str]]:
    """(tool, outcome) of every audit row of the instance, read with the CLI (rows of every account)."""
    rows = [json.loads(line) for line in run_cli(inst.env, "audit", "export").stdout.splitlines() if line.strip()]
    return [(r["tool"], r["outcome"]) for r in rows]


async def _not_after(inst: Instance, peer_id: int) -> str:
    async with inst.client() as c:
        ok, r = await call(c, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_id})
        assert ok, r
        return r["federation_peer"]["remote_instance"]["channel_certificate_not_after"]


async def test_channel_certificates_renew_before_they_expire_and_the_channel_keeps_working(tmp_path: Path) -> None:
    """Both instances issue channel certificates of 60 s (past two thirds of their life at once, since they are
    back-dated 5 minutes): the scheduler job on each side renews its own over the channel, the other side
    accepts the renewed one, and polls and the cross-instance handshake keep working."""
    a = _instance(tmp_path, "eu-west", "acme", "acme.eu-west.fleet.example")
    b = _instance(tmp_path, "us-east", "globex", GLOBEX)
    for inst in (a, b):
        inst.env.update(FLEET_MCP_SCHEDULER="true", FLEET_MCP_FEDERATION_CHANNEL_CERT_SECONDS="60")
        inst.start()
    try:
        peer_a, token = await propose(a)
        async with b.client() as c:
            ok, r = await call(c, "system_sdwan_accept_remote_federation_peer", {"peering_token": token})
            assert ok, r
            peer_b = r["federation_peer"]["id"]
            first_b = r["federation_peer"]["remote_instance"]["channel_certificate_not_after"]
        first_a = await _not_after(a, peer_a)
        assert first_a and first_b
        # Wait (bounded) until the job on each side has replaced its certificate with a later one.
        deadline = time.monotonic() + 120
        renewed: dict[str, str] = {}
        while len(renewed) < 2:
            assert time.monotonic() < deadline, f"channel certificates not renewed in time: {renewed}"
            for name, inst, pid, first in (("a", a, peer_a, first_a), ("b", b, peer_b, first_b)):
                now = await _not_after(inst, pid)
                if now > first:
                    renewed[name] = now
            await asyncio.sleep(0.5)
        for inst in (a, b):  # each side renewed its own certificate and signed the other's renewal
            tools = _audit_tools(inst)
            assert ("federation.renew_channel_certificates", "ok") in tools and ("federation.renew", "ok") in tools
        async with a.client() as c:
            # The channel works with the renewed certificates both ways: a poll, and the real handshake.
            ok, r = await call(c, "system_sdwan_refresh_federation_peer", {"federation_peer_id": peer_a})
            assert ok and r["outcome"] == "ok", r
            ok, r = await call(c, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_a})
            assert ok and r["ok"], r
        async with b.client() as c:
            ok, r = await call(c, "system_sdwan_refresh_federation_peer", {"federation_peer_id": peer_b})
            assert ok and r["outcome"] == "ok", r
            ok, r = await call(c, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_b})
            assert ok and r["ok"], r
    finally:
        a.stop()
        b.stop()


def test_the_scan_reports_a_channel_certificate_that_was_not_renewed(tmp_path: Path) -> None:
    """Renewal runs at 2/3 of the life; a certificate past 5/6 (or expired) means it failed: a high finding
    naming the last renewal error, none for a fresh certificate or a revoked peer."""
    import datetime as dt

    from fleet_mcp.federation import instance, pki
    from fleet_mcp.federation.governance import scan_peers
    from fleet_mcp.federation.models import FederationPeer, FederationRemote
    from fleet_mcp.federation.remote import _csr_and_key

    ident = instance.load_or_create(tmp_path)
    issued = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    cert = ident.sign_channel_csr(_csr_and_key()[0], label="peer-1", now=issued, lifetime=dt.timedelta(days=30))
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc

    def kinds(status: str, now: dt.datetime) -> list[tuple[str, str]]:
        peer = FederationPeer(id=1, local_account_id=1, remote_account_id=2, status=status, failed_attempts=0,
                              proposed_at=issued)
        link = FederationRemote(peer_id=1, role="acceptor", local_account_id=2, remote_domain="acme.fleet.test",
                                remote_instance_id="inst-0123456789abcdef", remote_peer_id=7,
                                bundle_fetched_at=now, refresh_hint=300, bundle_sequence=1,
                                outbound_channel_cert_pem=pki.cert_to_pem(cert),
                                last_error_kind="channel_renewal_failed", last_error="the other instance refused")
        found = scan_peers([peer], [], now=now, account_names={1: "acme@x", 2: "globex"},
                           account_domains={1: "acme.fleet.test", 2: "globex.fleet.test"}, remotes={1: link})
        return [(f.kind, f.message) for f in found if f.kind == "channel_cert_expiring"]

    assert kinds("active", start + (end - start) * 0.7) == []  # due for renewal, not alarming yet
    [(_, message)] = kinds("active", start + (end - start) * 0.9)
    assert "was not renewed" in message and "the other instance refused" in message
    [(_, message)] = kinds("accepted", end + dt.timedelta(seconds=1))
    assert "expired" in message
    assert kinds("revoked", end + dt.timedelta(seconds=1)) == []
