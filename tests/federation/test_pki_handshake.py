"""Pure PKI and real mTLS over 127.0.0.1: same account, cross account, name constraints, CRLs."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fleet_mcp.errors import InvalidArgument
from fleet_mcp.federation import pki
from fleet_mcp.federation.handshake import NodeIdentity, check_both_directions, check_direction
from tests.federation.fed_helpers import node, rogue_leaf

A_DOM, B_DOM = "acme.fleet.test", "globex.fleet.test"


@pytest.fixture(scope="module")
def cas() -> tuple[pki.AccountCA, pki.AccountCA]:
    return pki.create_account_ca("acme"), pki.create_account_ca("globex")


@pytest.fixture(scope="module")
def crosses(cas):
    a, b = cas
    a_signs_b = pki.cross_sign_intermediate(
        signer_root_cert=a.root_cert,
        signer_root_key=a.root_key,
        peer_intermediate_cert=b.intermediate_cert,
        peer_domain=B_DOM,
    )
    b_signs_a = pki.cross_sign_intermediate(
        signer_root_cert=b.root_cert,
        signer_root_key=b.root_key,
        peer_intermediate_cert=a.intermediate_cert,
        peer_domain=A_DOM,
    )
    return a_signs_b, b_signs_a


def test_ca_shape(cas):
    a, _ = cas
    root, inter = a.root_cert, a.intermediate_cert
    assert isinstance(root.public_key().curve, type(pki.generate_key().curve))
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    life = root.not_valid_after_utc - root.not_valid_before_utc
    assert dt.timedelta(days=3649) < life <= dt.timedelta(days=3650)
    aki = inter.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.authority_cert_issuer is None and aki.authority_cert_serial_number is None
    assert pki.verify_signed_by(inter, root)
    assert "AccountCA(" in repr(a) and "PRIVATE" not in repr(a)


def test_cross_certificate_shape(cas, crosses):
    a, b = cas
    a_signs_b, _ = crosses
    assert a_signs_b.subject == b.intermediate_cert.subject
    assert a_signs_b.public_key() == b.intermediate_cert.public_key()
    ski = x509.SubjectKeyIdentifier
    assert (
        a_signs_b.extensions.get_extension_for_class(ski).value
        == b.intermediate_cert.extensions.get_extension_for_class(ski).value
    )
    bc = a_signs_b.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca and bc.value.path_length == 0 and bc.critical
    ku = a_signs_b.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert pki.permitted_dns_names(a_signs_b) == [B_DOM]
    assert pki.verify_signed_by(a_signs_b, a.root_cert)
    life = a_signs_b.not_valid_after_utc - a_signs_b.not_valid_before_utc
    assert life <= dt.timedelta(days=7, minutes=5)


def test_node_names_must_be_under_the_domain(cas):
    a, _ = cas
    assert pki.node_dns_name("Edge-1", A_DOM) == "edge-1.acme.fleet.test"
    assert pki.node_dns_name("edge-1.eu.acme.fleet.test", A_DOM) == "edge-1.eu.acme.fleet.test"
    for bad in (
        "edge-1.globex.fleet.test",
        "acme.fleet.test",
        "x.evilacme.fleet.test",
        "*.acme.fleet.test",
        "a b",
        "-x",
        "",
    ):
        with pytest.raises(InvalidArgument):
            pki.node_dns_name(bad, A_DOM)
    with pytest.raises(InvalidArgument):
        pki.issue_node_certificate(
            intermediate_cert=a.intermediate_cert,
            intermediate_key=a.intermediate_key,
            public_key=pki.generate_key().public_key(),
            dns_name="n.globex.fleet.test",
            federation_domain=A_DOM,
            account_name="acme",
        )


def test_node_certificate_shape(cas):
    a, _ = cas
    key = pki.generate_key()
    leaf = pki.issue_node_certificate(
        intermediate_cert=a.intermediate_cert,
        intermediate_key=a.intermediate_key,
        public_key=key.public_key(),
        dns_name="n1.acme.fleet.test",
        federation_domain=A_DOM,
        account_name="acme",
        lifetime=dt.timedelta(hours=2),
    )
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {o.dotted_string for o in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["n1.acme.fleet.test"]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.authority_cert_issuer is None and aki.key_identifier is not None
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=2, minutes=5)


def test_csr_checks():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    key = pki.generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("n.acme.fleet.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(pki.serialization.Encoding.PEM).decode()
    parsed = pki.load_csr(pem)
    assert pki.csr_dns_names(parsed) == ["n.acme.fleet.test"]
    pki.check_node_public_key(parsed.public_key())
    with pytest.raises(InvalidArgument):
        pki.load_csr("-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n")
    ed = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n")]))
        .sign(ed25519.Ed25519PrivateKey.generate(), None)
    )
    with pytest.raises(InvalidArgument):
        pki.check_node_public_key(ed.public_key())


# --- real handshakes -------------------------------------------------------------------------


def test_same_account_handshake(cas):
    a, _ = cas
    n1 = node(a, "acme", A_DOM, "acme-1", [a.root_cert])
    n2 = node(a, "acme", A_DOM, "acme-2", [a.root_cert], name="edge-2")
    results = check_both_directions(n1, n2)
    assert [r.ok for r in results] == [True, True], results
    assert all(r.tls_version in ("TLSv1.3", "TLSv1.2") for r in results)


def test_cross_account_handshake_both_directions(cas, crosses):
    a, b = cas
    a_signs_b, b_signs_a = crosses
    na = node(a, "acme", A_DOM, "acme", [a.root_cert, a_signs_b])
    nb = node(b, "globex", B_DOM, "globex", [b.root_cert, b_signs_a])
    results = check_both_directions(na, nb)
    assert [(r.client, r.server, r.ok) for r in results] == [
        ("acme", "globex", True),
        ("globex", "acme", True),
    ]
    # Same-account nodes still verify with the cross certificate in the bundle (store-held layout).
    na2 = node(a, "acme", A_DOM, "acme-2", [a.root_cert, a_signs_b], name="edge-2")
    assert all(r.ok for r in check_both_directions(na, na2))


def test_without_cross_certificates_both_directions_fail(cas):
    a, b = cas
    na = node(a, "acme", A_DOM, "acme", [a.root_cert])
    nb = node(b, "globex", B_DOM, "globex", [b.root_cert])
    ab, ba = check_both_directions(na, nb)
    assert not ab.ok and not ba.ok
    # acme is the client of the first direction and does not trust globex's server certificate.
    assert ab.error.startswith("acme (client) rejected globex: certificate verify failed")
    assert ba.error.startswith("globex (client) rejected acme: certificate verify failed")


def test_only_one_side_trusting_names_the_rejecting_side(cas, crosses):
    a, b = cas
    a_signs_b, _ = crosses
    na = node(a, "acme", A_DOM, "acme", [a.root_cert, a_signs_b])
    nb = node(b, "globex", B_DOM, "globex", [b.root_cert])  # globex does not trust acme
    r = check_direction(na, nb)  # acme client trusts globex server, globex server rejects acme's cert
    assert not r.ok and r.error.startswith("globex (server) rejected acme: certificate verify failed"), r


def test_rogue_leaf_with_peer_names_refused_by_name_constraint(cas, crosses, tmp_path):
    a, b = cas
    a_signs_b, b_signs_a = crosses
    cert, key = rogue_leaf(a, "edge-1.globex.fleet.test")  # acme mints a globex name
    rogue = NodeIdentity(
        label="rogue",
        dns_name="edge-1.globex.fleet.test",
        chain_pem=pki.certs_to_pem([cert, a.intermediate_cert]),
        key_pem=pki.private_key_to_pem(key),
        trust_pem=pki.certs_to_pem([a.root_cert, a_signs_b]),
    )
    nb = node(b, "globex", B_DOM, "globex", [b.root_cert, b_signs_a])
    to_b, from_b = check_both_directions(rogue, nb)
    assert (
        not to_b.ok and "globex (server) rejected rogue" in to_b.error and "subtree violation" in to_b.error
    )
    assert not from_b.ok and "globex (client) rejected rogue" in from_b.error
    # Control: without the name constraint globex would have accepted it (the cross-signing trap the name constraint exists for).
    unconstrained = _unconstrained_cross(b, a)
    nb_weak = node(b, "globex", B_DOM, "globex", [b.root_cert, unconstrained])
    assert check_direction(rogue, nb_weak).ok


def _unconstrained_cross(signer: pki.AccountCA, peer: pki.AccountCA) -> x509.Certificate:
    from cryptography.hazmat.primitives import hashes

    good = pki.cross_sign_intermediate(
        signer_root_cert=signer.root_cert,
        signer_root_key=signer.root_key,
        peer_intermediate_cert=peer.intermediate_cert,
        peer_domain=A_DOM,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(good.subject)
        .issuer_name(good.issuer)
        .public_key(good.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(good.not_valid_before_utc)
        .not_valid_after(good.not_valid_after_utc)
    )
    for ext in good.extensions:
        if not isinstance(ext.value, x509.NameConstraints):
            builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(signer.root_key, hashes.SHA256())


def test_crl_revokes_cross_certificate(cas, crosses):
    a, b = cas
    a_signs_b, b_signs_a = crosses
    now = dt.datetime.now(dt.UTC)
    crl = lambda ca, issuer, key, revoked, n: pki.crl_to_pem(  # noqa: E731
        pki.build_crl(issuer_cert=issuer, issuer_key=key, revoked=revoked, crl_number=n, now=now)
    )
    a_crls = (
        crl(a, a.root_cert, a.root_key, [], 1),
        crl(a, a.intermediate_cert, a.intermediate_key, [], 1),
        crl(b, b.intermediate_cert, b.intermediate_key, [], 1),
    )
    b_clean = (
        crl(b, b.root_cert, b.root_key, [], 1),
        crl(b, b.intermediate_cert, b.intermediate_key, [], 1),
        crl(a, a.intermediate_cert, a.intermediate_key, [], 1),
    )
    b_revoked = (crl(b, b.root_cert, b.root_key, [(b_signs_a.serial_number, now)], 2), *b_clean[1:])
    na = node(a, "acme", A_DOM, "acme", [a.root_cert, a_signs_b], crls=a_crls)
    nb = node(b, "globex", B_DOM, "globex", [b.root_cert, b_signs_a], crls=b_clean)
    assert all(r.ok for r in check_both_directions(na, nb))
    nb_revoked = node(b, "globex", B_DOM, "globex", [b.root_cert, b_signs_a], crls=b_revoked)
    r = check_direction(na, nb_revoked)
    assert not r.ok and "revoked" in r.error, r


# --- independent verification with cryptography's verifier -----------------------------------


def _leaf(ca, domain, account):
    key = pki.generate_key()
    return pki.issue_node_certificate(
        intermediate_cert=ca.intermediate_cert,
        intermediate_key=ca.intermediate_key,
        public_key=key.public_key(),
        dns_name=f"edge-9.{domain}",
        federation_domain=domain,
        account_name=account,
    )


def test_cryptography_verifier_accepts_cross_paths_and_refuses_rogue(cas, crosses):
    a, b = cas
    a_signs_b, b_signs_a = crosses
    leaf_a, leaf_b = _leaf(a, A_DOM, "acme"), _leaf(b, B_DOM, "globex")
    # Full path to the peer's root: the cross certificate offered as an untrusted intermediate, and the
    # verifier has to backtrack past the leaf's own intermediate (which chains to the other root).
    chain = (
        PolicyBuilder()
        .store(Store([b.root_cert]))
        .build_client_verifier()
        .verify(leaf_a, [a.intermediate_cert, b_signs_a])
    )
    assert chain.chain == [leaf_a, b_signs_a, b.root_cert]
    chain = (
        PolicyBuilder()
        .store(Store([b.root_cert]))
        .build_server_verifier(x509.DNSName("edge-9.acme.fleet.test"))
        .verify(leaf_a, [a.intermediate_cert, b_signs_a])
    )
    assert chain[-1] == b.root_cert
    chain = (
        PolicyBuilder()
        .store(Store([a.root_cert]))
        .build_client_verifier()
        .verify(leaf_b, [b.intermediate_cert, a_signs_b])
    )
    assert chain.chain == [leaf_b, a_signs_b, a.root_cert]
    # The bundle as a store (cryptography treats every store certificate as an anchor).
    b_store, a_store = Store([b.root_cert, b_signs_a]), Store([a.root_cert, a_signs_b])
    PolicyBuilder().store(b_store).build_client_verifier().verify(leaf_a, [a.intermediate_cert])
    PolicyBuilder().store(a_store).build_client_verifier().verify(leaf_b, [b.intermediate_cert])
    PolicyBuilder().store(a_store).build_client_verifier().verify(
        _leaf(a, A_DOM, "acme"), [a.intermediate_cert]
    )
    # Refusals: a leaf acme minted with globex's names, and no cross certificate at all.
    rogue, _ = rogue_leaf(a, "edge-1.globex.fleet.test")
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([b.root_cert])).build_client_verifier().verify(
            rogue, [a.intermediate_cert, b_signs_a]
        )
    with pytest.raises(VerificationError):
        PolicyBuilder().store(b_store).build_client_verifier().verify(rogue, [a.intermediate_cert])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([b.root_cert])).build_client_verifier().verify(
            leaf_a, [a.intermediate_cert]
        )


def test_checks_leave_no_sockets_threads_or_key_files(cas, crosses, tmp_path, monkeypatch):
    import os
    import tempfile
    import threading

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    a, b = cas
    a_signs_b, b_signs_a = crosses
    good_a = node(a, "acme", A_DOM, "acme", [a.root_cert, a_signs_b])
    good_b = node(b, "globex", B_DOM, "globex", [b.root_cert, b_signs_a])
    lonely_b = node(b, "globex", B_DOM, "globex", [b.root_cert])
    check_both_directions(good_a, good_b)  # warm up lazy imports and caches before counting
    fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    for _ in range(3):
        assert all(r.ok for r in check_both_directions(good_a, good_b))
        assert not any(r.ok for r in check_both_directions(good_a, lonely_b))
    assert len(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads
    assert list(tmp_path.iterdir()) == []  # the temporary key files are gone
