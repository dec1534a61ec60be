"""Governance scan (pure function over rows, then through the service) and scheduled cross-cert renewal."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import select, update

from fleet_mcp.federation import pki
from fleet_mcp.federation.config import FederationConfig
from fleet_mcp.federation.governance import ScanThresholds, scan_peers, severity_summary
from fleet_mcp.federation.models import FederationPeer, IssuedCertificate
from fleet_mcp.federation.service import FederationService

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
NAMES = {1: "acme", 2: "globex", 3: "initech"}
DOMAINS = {1: "acme.fleet.test", 2: "globex.fleet.test", 3: "initech.fleet.test"}
A, B = pki.create_account_ca("acme"), pki.create_account_ca("globex")


def peer(pid: int, status: str, **kw) -> FederationPeer:
    base = dict(
        id=pid,
        local_account_id=1,
        remote_account_id=2,
        status=status,
        failed_attempts=0,
        proposed_at=NOW - dt.timedelta(hours=1),
    )
    base.update(kw)
    return FederationPeer(**base)


def cross(
    pid: int,
    *,
    not_after: dt.datetime,
    constrained_to: str | None = "globex.fleet.test",
    revoked: bool = False,
    superseded: bool = False,
) -> IssuedCertificate:
    good = pki.cross_sign_intermediate(
        signer_root_cert=A.root_cert,
        signer_root_key=A.root_key,
        peer_intermediate_cert=B.intermediate_cert,
        peer_domain=constrained_to or "globex.fleet.test",
    )
    if constrained_to is None:  # rebuild without the name constraint
        builder = (
            x509.CertificateBuilder()
            .subject_name(good.subject)
            .issuer_name(good.issuer)
            .public_key(good.public_key())
            .serial_number(good.serial_number)
            .not_valid_before(good.not_valid_before_utc)
            .not_valid_after(good.not_valid_after_utc)
        )
        for ext in good.extensions:
            if not isinstance(ext.value, x509.NameConstraints):
                builder = builder.add_extension(ext.value, critical=ext.critical)
        good = builder.sign(A.root_key, hashes.SHA256())
    return IssuedCertificate(
        account_id=1,
        subject_account_id=2,
        peer_id=pid,
        kind="cross",
        serial=pki.serial_hex(good.serial_number),
        subject="s",
        certificate_pem=pki.cert_to_pem(good),
        not_before=NOW - dt.timedelta(days=1),
        not_after=not_after,
        revoked_at=NOW if revoked else None,
        superseded_at=NOW if superseded else None,
    )


def kinds(findings) -> list[tuple[str, int | None]]:
    return sorted(((f.kind, f.federation_peer_id) for f in findings), key=lambda k: (k[0], k[1] or 0))


def run(peers, certs=(), failures=None, thresholds=None):
    return scan_peers(
        peers,
        list(certs),
        now=NOW,
        account_names=NAMES,
        account_domains=DOMAINS,
        account_failures=failures,
        thresholds=thresholds,
    )


def test_healthy_active_peer_has_no_findings():
    p = peer(
        1,
        "active",
        accepted_at=NOW - dt.timedelta(days=1),
        trusted_since=NOW - dt.timedelta(days=1),
        last_handshake_at=NOW - dt.timedelta(hours=20),
    )
    assert run([p], [cross(1, not_after=NOW + dt.timedelta(days=5))]) == []


def test_each_finding():
    late = NOW + dt.timedelta(days=5)
    peers = [
        peer(
            1,
            "proposed",
            proposed_at=NOW - dt.timedelta(hours=73),
            token_expires_at=NOW - dt.timedelta(hours=49),
        ),
        peer(2, "accepted", trusted_since=NOW - dt.timedelta(hours=25)),
        peer(3, "accepted", trusted_since=NOW - dt.timedelta(hours=1)),
        peer(4, "active", last_handshake_at=NOW),
        peer(5, "active", last_handshake_at=NOW),
        peer(6, "revoked"),
        peer(7, "active", last_handshake_at=NOW),
        peer(8, "proposed", failed_attempts=5, token_expires_at=NOW + dt.timedelta(hours=1)),
        peer(9, "suspended"),
    ]
    certs = [
        cross(4, not_after=NOW + dt.timedelta(days=1)),
        cross(5, not_after=NOW - dt.timedelta(hours=1)),
        cross(6, not_after=late),
        cross(6, not_after=late, revoked=True),
        cross(7, not_after=late, constrained_to=None),
        cross(7, not_after=late, constrained_to="acme.fleet.test", superseded=True),
        cross(9, not_after=late, revoked=True),
    ]
    findings = run(peers, certs, failures={2: 7})
    assert kinds(findings) == sorted(
        (
            [
                ("proposal_stale", 1),
                ("token_expired", 1),
                ("accepted_no_handshake", 2),
                ("cross_handshake_pending", 3),
                ("cross_cert_expiring", 4),
                ("cross_cert_expired", 5),
                ("revoked_but_trusted", 6),
                ("unconstrained_cross_cert", 7),
                ("unconstrained_cross_cert", 7),
                ("failed_accept_spike", 8),
                ("failed_accept_spike", None),
            ]
        ),
        key=lambda k: (k[0], k[1] or 0),
    )
    assert findings[0].severity == "critical"
    assert severity_summary(findings) == {"critical": 3, "high": 3, "medium": 2, "low": 2, "info": 1}
    assert all(f.message for f in findings)


def test_thresholds_are_configurable():
    p = peer(1, "proposed", proposed_at=NOW - dt.timedelta(hours=10))
    assert run([p]) == []
    assert kinds(run([p], thresholds=ScanThresholds(proposal_stale_after=dt.timedelta(hours=9)))) == [
        ("proposal_stale", 1)
    ]


def test_prefix_overlap_within_one_proposer_only():
    p1 = peer(1, "active", remote_prefix_advertisement=["10.20.0.0/16"], last_handshake_at=NOW)
    p2 = peer(2, "proposed", remote_account_id=3, remote_prefix_advertisement=["10.20.128.0/17", "fd00::/8"])
    p3 = peer(3, "revoked", remote_prefix_advertisement=["10.20.0.0/16"])
    p4 = peer(4, "proposed", local_account_id=3, remote_prefix_advertisement=["10.20.0.0/16"])
    p5 = peer(5, "proposed", remote_prefix_advertisement=["192.168.0.0/24", "fd00:1::/32"])
    found = [f for f in run([p1, p2, p3, p4, p5]) if f.kind == "prefix_overlap"]
    assert sorted((f.federation_peer_id, f.message.split(" advertise")[0]) for f in found) == [
        (2, "peers 1 and 2"),
        (5, "peers 2 and 5"),
    ]


@pytest.mark.anyio
async def test_scan_through_the_service(uow, svc, account, other_account, sessionmaker):
    p = await uow(
        lambda s: svc.propose(
            s, account_id=account.id, remote_account="globex", remote_prefix_advertisement=["10.1.0.0/16"]
        )
    )
    pid = p.federation_peer.id
    t = p.federation_peer.proposed_at
    scan = await uow(lambda s: svc.scan(s, account_id=account.id, now=t + dt.timedelta(hours=73)))
    assert {f.kind for f in scan.findings} == {"proposal_stale", "token_expired"}
    await uow(
        lambda s: svc.accept(s, account_id=other_account.id, peer_id=pid, acceptance_token=p.acceptance_token)
    )
    scan = await uow(lambda s: svc.scan(s, account_id=other_account.id))
    assert [f.kind for f in scan.findings] == ["cross_handshake_pending"]
    assert scan.finding_count == 1 and scan.severity_summary["info"] == 1
    scan = await uow(lambda s: svc.scan(s, account_id=account.id, now=t + dt.timedelta(hours=25)))
    assert [f.kind for f in scan.findings] == ["accepted_no_handshake"]
    await uow(lambda s: svc.verify_handshake(s, account_id=account.id, peer_id=pid))
    assert (await uow(lambda s: svc.scan(s, account_id=account.id))).findings == []
    in6d = await uow(lambda s: svc.scan(s, account_id=account.id, now=t + dt.timedelta(days=6)))
    assert [f.kind for f in in6d.findings] == ["cross_cert_expiring", "cross_cert_expiring"]
    in8d = await uow(lambda s: svc.scan(s, account_id=account.id, now=t + dt.timedelta(days=8)))
    assert [f.kind for f in in8d.findings] == ["cross_cert_expired", "cross_cert_expired"]
    await uow(lambda s: svc.revoke(s, account_id=account.id, peer_id=pid, reason="test"))
    assert (await uow(lambda s: svc.scan(s, account_id=account.id))).findings == []
    # Tampering that puts a cross certificate back into a bundle is caught.
    async with sessionmaker() as s, s.begin():
        await s.execute(
            update(IssuedCertificate).where(IssuedCertificate.peer_id == pid).values(revoked_at=None)
        )
    scan = await uow(lambda s: svc.scan(s, account_id=other_account.id))
    assert [f.kind for f in scan.findings] == ["revoked_but_trusted"]


@pytest.mark.anyio
async def test_renewal_supersedes_and_keeps_handshakes_working(
    uow, svc, account, other_account, sessionmaker
):
    short = FederationService(
        svc.authorities.sealer, FederationConfig(cross_cert_lifetime=dt.timedelta(hours=1))
    )
    p = await uow(lambda s: short.propose(s, account_id=account.id, remote_account="globex"))
    pid = p.federation_peer.id
    await uow(
        lambda s: short.accept(
            s, account_id=other_account.id, peer_id=pid, acceptance_token=p.acceptance_token
        )
    )
    await uow(lambda s: short.verify_handshake(s, account_id=account.id, peer_id=pid))
    v_before = (await uow(lambda s: short.trust_bundle(s, account_id=account.id))).bundle_version
    assert await uow(lambda s: short.renew_cross_certificates(s)) == 0  # 1 h left of 1 h: not yet
    # A policy of 4 h lifetimes (renew with < 2 h left) makes both 1 h certificates due.
    longer = FederationService(
        svc.authorities.sealer, FederationConfig(cross_cert_lifetime=dt.timedelta(hours=4))
    )
    assert await uow(lambda s: longer.renew_cross_certificates(s)) == 2
    assert await uow(lambda s: longer.renew_cross_certificates(s)) == 0
    got = await uow(lambda s: longer.get_peer(s, account_id=account.id, peer_id=pid))
    states = sorted(c.state for c in got.cross_certificates)
    assert states == ["current", "current", "superseded", "superseded"]
    b = await uow(lambda s: longer.trust_bundle(s, account_id=account.id))
    assert b.bundle_version > v_before and b.certificate_count == 2
    current = {c.serial for c in got.cross_certificates if c.state == "current"}
    assert pki.serial_hex(pki.load_certs(b.bundle_pem)[1].serial_number) in current
    hs = await uow(lambda s: longer.verify_handshake(s, account_id=other_account.id, peer_id=pid))
    assert hs.ok and hs.federation_peer.status == "active"
    # Suspended peers are not renewed.
    await uow(lambda s: longer.suspend(s, account_id=account.id, peer_id=pid, reason="pause"))
    assert (
        await uow(
            lambda s: FederationService(
                svc.authorities.sealer, FederationConfig(cross_cert_lifetime=dt.timedelta(days=30))
            ).renew_cross_certificates(s)
        )
        == 0
    )
    async with sessionmaker() as s:
        rows = (
            (await s.execute(select(IssuedCertificate).where(IssuedCertificate.kind == "cross")))
            .scalars()
            .all()
        )
    assert all(r.revoked_at or r.superseded_at for r in rows)


def test_overlap_sweep_agrees_with_pairwise_comparison():
    """The sort-and-sweep finds exactly the pairs a naive pairwise comparison finds."""
    import ipaddress
    import random
    from types import SimpleNamespace

    from fleet_mcp.federation.governance import _overlapping_pairs

    rng = random.Random(7)
    for _ in range(40):
        live = []
        for i in range(rng.randint(2, 25)):
            nets = []
            for _ in range(rng.randint(1, 3)):
                plen = rng.choice([8, 12, 16, 20, 24])
                addr = ipaddress.ip_network(f"10.{rng.randint(0, 3)}.{rng.randint(0, 255)}.0/{plen}", strict=False)
                nets.append(str(addr))
            live.append(SimpleNamespace(id=i + 1, local_account_id=rng.choice([1, 2]),
                                        remote_prefix_advertisement=nets))
        expected = set()
        for ia, a in enumerate(live):
            for ib in range(ia + 1, len(live)):
                b = live[ib]
                if a.local_account_id != b.local_account_id:
                    continue
                if any(ipaddress.ip_network(x).overlaps(ipaddress.ip_network(y))
                       for x in a.remote_prefix_advertisement for y in b.remote_prefix_advertisement):
                    expected.add((ia, ib))
        assert set(_overlapping_pairs(live)) == expected
