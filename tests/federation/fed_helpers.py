"""Test helpers for federation: build node identities straight from the pure PKI functions."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_mcp.federation import pki
from fleet_mcp.federation.handshake import NodeIdentity


def node(
    ca: pki.AccountCA,
    account: str,
    domain: str,
    label: str,
    trust: list[x509.Certificate],
    crls: tuple[str, ...] = (),
    name: str = "edge-1",
) -> NodeIdentity:
    key = pki.generate_key()
    dns = pki.node_dns_name(name, domain)
    leaf = pki.issue_node_certificate(
        intermediate_cert=ca.intermediate_cert,
        intermediate_key=ca.intermediate_key,
        public_key=key.public_key(),
        dns_name=dns,
        federation_domain=domain,
        account_name=account,
    )
    return NodeIdentity(
        label=label,
        dns_name=dns,
        chain_pem=pki.certs_to_pem([leaf, ca.intermediate_cert]),
        key_pem=pki.private_key_to_pem(key),
        trust_pem=pki.certs_to_pem(trust),
        crl_pems=crls,
    )


def rogue_leaf(ca: pki.AccountCA, dns: str) -> tuple[x509.Certificate, pki.CaPrivateKey]:
    """A leaf that `ca`'s intermediate signs for a name outside its domain (bypassing the service check)."""
    key = pki.generate_key()
    now = dt.datetime.now(dt.UTC)
    ski = ca.intermediate_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
        .issuer_name(ca.intermediate_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None), critical=False)
        .sign(ca.intermediate_key, hashes.SHA256())
    )
    return cert, key
