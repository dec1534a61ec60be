"""Polling another instance's bundle against a FAKE remote instance: a real TLS federation endpoint (real
instance CA, real channel certificates, the real wire) whose answers the test chooses, because a real
fleet-mcp never sends a bundle for another trust domain, an older sequence, an oversized or a malformed
one. The poller refuses those, keeps the peer as it was, and the scan reports them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from fleet_mcp.db.models import Account
from fleet_mcp.federation import instance, pki, wire
from fleet_mcp.federation.governance import scan_peers
from fleet_mcp.federation.models import FederationPeer, FederationRemote, IssuedCertificate

pytestmark = pytest.mark.anyio
REMOTE_DOMAIN = "initech.remote.test"


class FakeRemote:
    """The other instance, reduced to its bundle endpoint; `answer` is what it says next."""

    def __init__(self, tmp: Path) -> None:
        self.identity = instance.load_or_create(tmp / "fake-remote")
        self.ca = pki.create_account_ca("initech")
        self.answer: tuple[int, Any] = (200, {})
        self.server: Any = None

    def bundle(self, sequence: int, **over: Any) -> dict[str, Any]:
        return {
            "trust_domain": REMOTE_DOMAIN, "account": "initech", "sequence": sequence, "refresh_hint": 60,
            "root_pem": pki.cert_to_pem(self.ca.root_cert),
            "intermediate_pem": pki.cert_to_pem(self.ca.intermediate_cert),
            "intermediate_crl_pem": None, "status": "active", "suspended_by_sender": False, **over,
        }

    async def start(self) -> str:
        import asyncio

        raw = self

        async def raw_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The poller presents the channel certificate this fake's instance CA issued.
            assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            status, body = raw.answer
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(raw_handler, "127.0.0.1", 0, ssl=self.identity.server_context())
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def _linked_peer(uow, svc, account, fake: FakeRemote, endpoint: str) -> int:  # noqa: ANN001
    key = pki.generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "channel")]))
        .sign(key, hashes.SHA256())
    )
    channel = fake.identity.sign_channel_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), label="peer-1")

    async def setup(s):  # noqa: ANN001, ANN202
        await svc.ensure_ca(s, account.id)
        shadow = Account(name=f"initech@{fake.identity.instance_id}", federation_domain=REMOTE_DOMAIN)
        s.add(shadow)
        await s.flush()
        await svc.remote.store_remote_ca(
            s, shadow.id, pki.cert_to_pem(fake.ca.root_cert), pki.cert_to_pem(fake.ca.intermediate_cert), None
        )
        now = dt.datetime.now(dt.UTC)
        peer = FederationPeer(local_account_id=account.id, remote_account_id=shadow.id, status="active",
                              proposed_at=now, accepted_at=now, trusted_since=now, last_handshake_at=now)
        s.add(peer)
        await s.flush()
        link = FederationRemote(
            peer_id=peer.id, role="proposer", local_account_id=account.id,
            remote_instance_id=fake.identity.instance_id, remote_account_name="initech",
            remote_domain=REMOTE_DOMAIN, remote_endpoint=endpoint, remote_peer_id=1,
            remote_ca_pin=fake.identity.pin, remote_instance_ca_pem=fake.identity.ca_pem,
            outbound_channel_cert_pem=pki.cert_to_pem(channel),
            outbound_channel_key_ref=await svc.authorities.sealer.seal(s, account.id, pki.private_key_to_pem(key),
                                                                       label="channel"),
            bundle_sequence=3, bundle_fetched_at=now, remote_status="active",
        )
        s.add(link)
        await s.flush()
        await svc.remote.cross_sign_local(s, peer, link, now=now)
        return peer.id

    return await uow(setup)


async def test_bad_bundles_are_refused_and_reported(uow, svc, account, sessionmaker, tmp_path) -> None:  # noqa: ANN001
    fake = FakeRemote(tmp_path)
    endpoint = await fake.start()
    try:
        peer_id = await _linked_peer(uow, svc, account, fake, endpoint)

        async def dialed() -> Any:  # read, then the wire with no transaction open
            poll = await uow(lambda s: svc.prepare_poll(s, peer_id=peer_id, account_id=account.id))
            return await svc.dial_poll(poll)

        async def refresh() -> str:
            poll = await dialed()
            return await uow(lambda s: svc.apply_poll(s, poll))

        async def state() -> tuple[str, int, list[str]]:
            async with sessionmaker() as s:
                peer = await s.get(FederationPeer, peer_id)
                link = (await s.execute(select(FederationRemote))).scalar_one()
                certs = (await s.execute(select(IssuedCertificate).where(IssuedCertificate.kind == "cross"))).scalars()
                return peer.status, link.bundle_sequence, sorted(
                    "current" if c.revoked_at is None and c.superseded_at is None else "old" for c in certs
                )

        # A poll whose answer arrives after another poll changed the link is dropped, not applied.
        fake.answer = (200, fake.bundle(9, status="revoked"))
        stale = await dialed()
        fake.answer = (200, fake.bundle(5))
        assert await refresh() == "ok"
        assert await state() == ("active", 5, ["current"])
        assert await uow(lambda s: svc.apply_poll(s, stale)) == "changed"
        assert await state() == ("active", 5, ["current"])

        refused = {
            "sequence_backwards": (200, fake.bundle(4)),
            "wrong_trust_domain": (200, fake.bundle(9, trust_domain="acme.fleet.test")),
            "malformed": (200, fake.bundle(9, intermediate_pem="not a certificate")),
        }
        for kind, answer in refused.items():
            fake.answer = answer
            assert await refresh() == kind
            assert await state() == ("active", 5, ["current"]), kind
            scan = await uow(lambda s: svc.scan(s, account_id=account.id))
            expected = "sequence_backwards" if kind == "sequence_backwards" else "remote_bundle_refused"
            assert expected in {f.kind for f in scan.findings}, (kind, scan.findings)
        fake.answer = (200, b"x" * (wire.MAX_BODY + 1))  # oversized
        assert await refresh() == "malformed"
        fake.answer = (200, b"{not json")
        assert await refresh() == "malformed"
        assert await state() == ("active", 5, ["current"])

        # A CA rotation on the other side (higher sequence, new intermediate) is re-signed, the old retired.
        fake.ca = pki.create_account_ca("initech")
        fake.answer = (200, fake.bundle(6))
        assert await refresh() == "ok"
        assert await state() == ("active", 6, ["current", "old"])
        async with sessionmaker() as s:
            [current] = (
                await s.execute(select(IssuedCertificate).where(IssuedCertificate.superseded_at.is_(None)))
            ).scalars().all()
        new = pki.load_cert(current.certificate_pem)
        assert new.public_key() == fake.ca.intermediate_cert.public_key()
        assert pki.permitted_dns_names(new) == [REMOTE_DOMAIN]

        # The other side revoked: pulled, terminal here too.
        fake.answer = (200, fake.bundle(7, status="revoked"))
        assert await refresh() == "revoked"
        assert (await state())[0] == "revoked"
    finally:
        fake.server.close()

    # Unreachable: reported by the scan (the peer is revoked now, so build the rows directly).
    async with sessionmaker() as s:
        peer = await s.get(FederationPeer, peer_id)
        link = (await s.execute(select(FederationRemote))).scalar_one()
    peer.status = "active"
    link.last_error_kind, link.last_error = "unreachable", "timed out"
    link.remote_status = "revoked"
    link.bundle_fetched_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    findings = scan_peers([peer], [], now=dt.datetime.now(dt.UTC), account_names={}, account_domains={},
                          remotes={peer.id: link})
    assert {f.kind for f in findings} == {"remote_unreachable", "remote_revoked_local_trusted", "bundle_stale"}
