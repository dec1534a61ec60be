"""The federation services end to end on both databases: propose → accept → verified handshake → suspend →
resume → revoke, with real mTLS over 127.0.0.1 and bundles rebuilt after every change."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from sqlalchemy import select

from fleet_mcp.db.models import FleetEvent
from fleet_mcp.errors import Conflict, InvalidArgument, NotFound, Unauthenticated
from fleet_mcp.federation import pki
from fleet_mcp.federation.handshake import NodeIdentity, check_both_directions
from fleet_mcp.federation.models import IssuedCertificate

pytestmark = pytest.mark.anyio


async def node_identity(uow, svc, account, label, node="edge-1", crls=False) -> NodeIdentity:
    async def go(s):
        cert = await svc.issue_node_certificate(s, account_id=account.id, node_name=node)
        bundle = await svc.trust_bundle(s, account_id=account.id, include_crls=crls)
        return cert, bundle

    cert, bundle = await uow(go)
    return NodeIdentity(
        label=label,
        dns_name=cert.dns_name,
        chain_pem=cert.chain_pem,
        key_pem=cert.private_key_pem.encode(),
        trust_pem=bundle.bundle_pem,
        crl_pems=(bundle.crls_pem,) if crls else (),
    )


async def bundle(uow, svc, account, crls=False):
    return await uow(lambda s: svc.trust_bundle(s, account_id=account.id, include_crls=crls))


async def test_full_lifecycle_with_real_handshakes(uow, svc, account, other_account, sessionmaker):
    acme, globex = account, other_account
    for acct in (acme, globex):  # reading a bundle never creates the CA
        await uow(lambda s, acct=acct: svc.ensure_ca(s, acct.id))
    v0_a, v0_g = (
        (await bundle(uow, svc, acme)).bundle_version,
        (await bundle(uow, svc, globex)).bundle_version,
    )

    # Same account: two acme nodes verify each other through acme's bundle alone.
    a1, a2 = (
        await node_identity(uow, svc, acme, "acme-1"),
        await node_identity(uow, svc, acme, "acme-2", "edge-2"),
    )
    assert [r.ok for r in check_both_directions(a1, a2)] == [True, True]
    # Before federation acme and globex nodes do not trust each other.
    g1 = await node_identity(uow, svc, globex, "globex-1")
    assert [r.ok for r in check_both_directions(a1, g1)] == [False, False]

    proposal = await uow(
        lambda s: svc.propose(
            s,
            account_id=acme.id,
            remote_account="globex",
            remote_prefix_advertisement="10.20.0.0/16",
            actor="acme/op",
        )
    )
    peer_id = proposal.federation_peer.id
    assert proposal.federation_peer.status == "proposed"
    assert proposal.federation_peer.allowed_transitions == ["accepted", "revoked"]
    assert proposal.acceptance_token.startswith("fat_")
    assert proposal.acceptance_token not in proposal.federation_peer.model_dump_json()

    accepted = await uow(
        lambda s: svc.accept(
            s,
            account_id=globex.id,
            peer_id=peer_id,
            acceptance_token=proposal.acceptance_token,
            actor="globex/op",
        )
    )
    assert accepted.federation_peer.status == "accepted"
    crosses = {c.signed_by: c for c in accepted.cross_certificates}
    assert set(crosses) == {"acme", "globex"}
    assert crosses["acme"].signed_for == "globex" and crosses["acme"].name_constraints == [
        "globex.fleet.test"
    ]
    assert crosses["globex"].name_constraints == ["acme.fleet.test"]

    b_a, b_g = await bundle(uow, svc, acme), await bundle(uow, svc, globex)
    assert b_a.bundle_version > v0_a and b_g.bundle_version > v0_g
    assert b_a.certificate_count == 2 and b_g.certificate_count == 2
    # Each bundle holds the cross certificate its own root signed (store-held), not the other one.
    a_certs = pki.load_certs(b_a.bundle_pem)
    assert pki.serial_hex(a_certs[1].serial_number) == crosses["acme"].serial
    assert a_certs[1].issuer == a_certs[0].subject

    # Independent verification of both cross paths with cryptography's verifier.
    leaf_a = await uow(lambda s: svc.issue_node_certificate(s, account_id=acme.id, node_name="edge-7"))
    leaf_g = await uow(lambda s: svc.issue_node_certificate(s, account_id=globex.id, node_name="edge-7"))
    for leaf, other in ((leaf_a, b_g), (leaf_g, b_a)):
        certs = pki.load_certs(leaf.chain_pem)
        trust = pki.load_certs(other.bundle_pem)
        chain = (
            PolicyBuilder()
            .store(Store(trust[:1]))
            .build_client_verifier()
            .verify(certs[0], [certs[1], trust[1]])
        )
        assert chain.chain[-1] == trust[0]
        PolicyBuilder().store(Store(trust[:1])).build_server_verifier(x509.DNSName(leaf.dns_name)).verify(
            certs[0], [certs[1], trust[1]]
        )

    # The verified handshake makes the peer active.
    result = await uow(lambda s: svc.verify_handshake(s, account_id=acme.id, peer_id=peer_id))
    assert result.ok, result
    assert [(d.from_, d.to, d.ok) for d in result.directions] == [
        ("acme", "globex", True),
        ("globex", "acme", True),
    ]
    assert result.federation_peer.status == "active" and result.federation_peer.last_handshake_at
    dumped = result.model_dump(mode="json")
    assert dumped["directions"][0]["from"] == "acme"

    # Nodes built from the current bundles (with CRLs) talk across accounts in both directions.
    na = await node_identity(uow, svc, acme, "acme", crls=True)
    ng = await node_identity(uow, svc, globex, "globex", crls=True)
    assert [r.ok for r in check_both_directions(na, ng)] == [True, True]

    # Suspend: trust withdrawn like a revocation; contexts rebuilt from the new bundles fail both ways.
    suspended = await uow(
        lambda s: svc.suspend(s, account_id=globex.id, peer_id=peer_id, reason="maintenance")
    )
    assert suspended.status == "suspended" and suspended.allowed_transitions == ["accepted", "revoked"]
    assert all(c.state == "revoked" for c in suspended.cross_certificates)
    na = await node_identity(uow, svc, acme, "acme")
    ng = await node_identity(uow, svc, globex, "globex")
    ab, ba = check_both_directions(na, ng)
    assert not ab.ok and not ba.ok
    hs = await uow(lambda s: svc.verify_handshake(s, account_id=acme.id, peer_id=peer_id))
    assert not hs.ok and hs.federation_peer.status == "suspended"
    assert all(not d.ok and "certificate verify failed" in d.error for d in hs.directions)

    # Resume (by the side that suspended): fresh cross certificates; handshake works again, peer active.
    resumed = await uow(lambda s: svc.resume(s, account_id=globex.id, peer_id=peer_id, reason="done"))
    assert resumed.status == "accepted"
    current = {c.serial for c in resumed.cross_certificates if c.state == "current"}
    assert len(current) == 2 and not current & {c.serial for c in accepted.cross_certificates}
    na = await node_identity(uow, svc, acme, "acme", crls=True)
    ng = await node_identity(uow, svc, globex, "globex", crls=True)
    assert [r.ok for r in check_both_directions(na, ng)] == [True, True]
    hs = await uow(lambda s: svc.verify_handshake(s, account_id=globex.id, peer_id=peer_id))
    assert hs.ok and hs.federation_peer.status == "active"

    # Revoke (from the accepting side): bundles shrink, versions bump, serials on both roots' CRLs.
    before_a, before_g = await bundle(uow, svc, acme), await bundle(uow, svc, globex)
    revoked = await uow(
        lambda s: svc.revoke(s, account_id=globex.id, peer_id=peer_id, reason="contract ended")
    )
    assert revoked.status == "revoked" and revoked.allowed_transitions == []
    after_a, after_g = await bundle(uow, svc, acme, crls=True), await bundle(uow, svc, globex, crls=True)
    assert (
        after_a.bundle_version > before_a.bundle_version and after_g.bundle_version > before_g.bundle_version
    )
    assert after_a.certificate_count == 1 and after_g.certificate_count == 1
    revoked_serials = {c.serial for c in revoked.cross_certificates}
    on_crls = set()
    for b in (after_a, after_g):
        for crl_pem in b.crls_pem.split("-----END X509 CRL-----")[:-1]:
            crl = x509.load_pem_x509_crl((crl_pem + "-----END X509 CRL-----\n").strip().encode())
            on_crls |= {pki.serial_hex(r.serial_number) for r in crl}
    assert revoked_serials <= on_crls
    # The same handshake, with contexts rebuilt from the new bundles, fails in both directions.
    hs = await uow(lambda s: svc.verify_handshake(s, account_id=acme.id, peer_id=peer_id))
    assert not hs.ok and [d.ok for d in hs.directions] == [False, False]
    # Nodes still holding the old (pre-revocation) bundles fail too once they load the new CRLs: the
    # cross certificates are on the signing roots' CRLs.
    crls = (after_a.crls_pem + after_g.crls_pem,)
    na = await node_identity(uow, svc, acme, "acme")
    stale_a = NodeIdentity(
        label="acme-stale",
        dns_name=na.dns_name,
        chain_pem=na.chain_pem,
        key_pem=na.key_pem,
        trust_pem=before_a.bundle_pem,
        crl_pems=crls,
    )
    stale_g = NodeIdentity(
        label="globex-stale",
        dns_name=ng.dns_name,
        chain_pem=ng.chain_pem,
        key_pem=ng.key_pem,
        trust_pem=before_g.bundle_pem,
        crl_pems=crls,
    )
    for r in check_both_directions(stale_a, stale_g):
        assert not r.ok and "certificate revoked" in r.error, r
    # Independent check: the revoked cross path no longer exists in the bundles.
    leaf = pki.load_certs(na.chain_pem)
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store(pki.load_certs(after_g.bundle_pem))).build_client_verifier().verify(
            leaf[0], [leaf[1]]
        )

    # Events for every transition and every certificate.
    async with sessionmaker() as s:
        kinds = [
            k
            for (k,) in (
                await s.execute(select(FleetEvent.kind).where(FleetEvent.account_id == acme.id))
            ).all()
        ]
        issued = (await s.execute(select(IssuedCertificate))).scalars().all()
    for kind in (
        "federation.ca_created",
        "federation.peer_proposed",
        "federation.peer_accepted",
        "federation.peer_activated",
        "federation.peer_suspended",
        "federation.peer_resumed",
        "federation.peer_revoked",
        "federation.certificate_issued",
        "federation.trust_bundle_changed",
    ):
        assert kind in kinds, kind
    assert kinds.count("federation.certificate_issued") == len([c for c in issued if c.account_id == acme.id])
    assert {c.kind for c in issued} == {"node", "cross"}


async def test_rogue_leaf_from_peer_refused_through_service_bundles(uow, svc, account, other_account):
    from tests.federation.fed_helpers import rogue_leaf

    token = await uow(lambda s: svc.propose(s, account_id=account.id, remote_account="globex"))
    await uow(
        lambda s: svc.accept(
            s,
            account_id=other_account.id,
            peer_id=token.federation_peer.id,
            acceptance_token=token.acceptance_token,
        )
    )

    # acme's operators go rogue with their own intermediate key and mint a globex name.
    async def acme_ca(s):
        ca = await svc.ensure_ca(s, account.id)
        return ca, await svc.authorities.intermediate_key(s, ca)

    ca, key = await uow(acme_ca)
    material = pki.AccountCA(
        root_cert=pki.load_cert(ca.root_cert_pem),
        root_key=key,
        intermediate_cert=pki.load_cert(ca.intermediate_cert_pem),
        intermediate_key=key,
    )
    cert, leaf_key = rogue_leaf(material, "edge-1.globex.fleet.test")
    b_a = await bundle(uow, svc, account)
    rogue = NodeIdentity(
        label="rogue",
        dns_name="edge-1.globex.fleet.test",
        chain_pem=pki.certs_to_pem([cert, material.intermediate_cert]),
        key_pem=pki.private_key_to_pem(leaf_key),
        trust_pem=b_a.bundle_pem,
    )
    ng = await node_identity(uow, svc, other_account, "globex")
    to_g, from_g = check_both_directions(rogue, ng)
    assert not to_g.ok and "subtree violation" in to_g.error
    assert not from_g.ok
    # A genuine acme node still works, so the failure is the name constraint, not the bundle.
    na = await node_identity(uow, svc, account, "acme")
    assert [r.ok for r in check_both_directions(na, ng)] == [True, True]


async def test_propose_guards(uow, svc, account, other_account):
    with pytest.raises(InvalidArgument, match="itself"):
        await uow(lambda s: svc.propose(s, account_id=account.id, remote_account="acme"))
    with pytest.raises(NotFound):
        await uow(lambda s: svc.propose(s, account_id=account.id, remote_account="nobody"))
    for ttl in (10, 7 * 86_400 + 1):
        with pytest.raises(InvalidArgument, match="token_ttl_seconds"):
            await uow(
                lambda s, ttl=ttl: svc.propose(
                    s, account_id=account.id, remote_account="globex", token_ttl_seconds=ttl
                )
            )
    with pytest.raises(InvalidArgument, match="not an IP prefix"):
        await uow(
            lambda s: svc.propose(
                s, account_id=account.id, remote_account="globex", remote_prefix_advertisement="10.0.0.0/33"
            )
        )
    p = await uow(
        lambda s: svc.propose(s, account_id=account.id, remote_account="globex", token_ttl_seconds=7 * 86_400)
    )
    with pytest.raises(Conflict, match="already have federation peer"):
        await uow(lambda s: svc.propose(s, account_id=other_account.id, remote_account="acme"))
    # Only the remote account may accept, and a stranger gets the same error as a wrong token.
    with pytest.raises(Unauthenticated) as e1:
        await uow(
            lambda s: svc.accept(
                s, account_id=account.id, peer_id=p.federation_peer.id, acceptance_token=p.acceptance_token
            )
        )
    with pytest.raises(Unauthenticated) as e2:
        await uow(
            lambda s: svc.accept(
                s,
                account_id=other_account.id,
                peer_id=p.federation_peer.id + 99,
                acceptance_token=p.acceptance_token,
            )
        )
    assert e1.value.message == e2.value.message
    # Transitions outside the matrix are refused with the allowed ones named.
    with pytest.raises(Conflict) as e:
        await uow(lambda s: svc.resume(s, account_id=account.id, peer_id=p.federation_peer.id, reason="x"))
    assert e.value.subject["allowed_transitions"] == ["accepted", "revoked"]
    with pytest.raises(Conflict, match="still proposed"):
        await uow(lambda s: svc.verify_handshake(s, account_id=account.id, peer_id=p.federation_peer.id))
    with pytest.raises(InvalidArgument, match="reason"):
        await uow(lambda s: svc.revoke(s, account_id=account.id, peer_id=p.federation_peer.id, reason=" "))
    await uow(lambda s: svc.revoke(s, account_id=account.id, peer_id=p.federation_peer.id, reason="oops"))
    with pytest.raises(Conflict, match="terminal"):
        await uow(lambda s: svc.suspend(s, account_id=account.id, peer_id=p.federation_peer.id, reason="x"))
    # After a revocation the pair may federate again.
    again = await uow(lambda s: svc.propose(s, account_id=other_account.id, remote_account="acme"))
    assert again.federation_peer.local_account == "globex"


async def test_node_certificates(uow, svc, account, sessionmaker):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    gen = await uow(lambda s: svc.issue_node_certificate(s, account_id=account.id, node_name="edge-3"))
    assert gen.private_key_pem and gen.dns_name == "edge-3.acme.fleet.test"
    leaf, inter = pki.load_certs(gen.chain_pem)
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert life.total_seconds() == 24 * 3600 + 300
    key = pki.generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    from_csr = await uow(
        lambda s: svc.issue_node_certificate(s, account_id=account.id, node_name="edge-4", csr_pem=csr)
    )
    assert from_csr.private_key_pem is None
    assert pki.load_cert(from_csr.certificate_pem).public_key() == key.public_key()
    bad_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("n.globex.fleet.test")]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    with pytest.raises(InvalidArgument, match="outside the federation domain"):
        await uow(
            lambda s: svc.issue_node_certificate(
                s, account_id=account.id, node_name="edge-5", csr_pem=bad_csr
            )
        )
    with pytest.raises(InvalidArgument, match="not under"):
        await uow(
            lambda s: svc.issue_node_certificate(s, account_id=account.id, node_name="n.globex.fleet.test")
        )
    async with sessionmaker() as s:
        rows = (await s.execute(select(IssuedCertificate).order_by(IssuedCertificate.id))).scalars().all()
    assert [(r.kind, r.dns_name) for r in rows] == [
        ("node", "edge-3.acme.fleet.test"),
        ("node", "edge-4.acme.fleet.test"),
    ]
    assert rows[0].serial == gen.serial and rows[0].not_after == gen.not_after
