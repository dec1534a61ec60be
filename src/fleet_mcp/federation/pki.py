"""Pure X.509 for federation: account CAs, node certs, name-constrained cross certificates, CRLs, PEM."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_mcp.errors import InvalidArgument

ROOT_LIFETIME = dt.timedelta(days=3650)
INTERMEDIATE_LIFETIME = dt.timedelta(days=365)
NODE_LIFETIME = dt.timedelta(hours=24)
CROSS_LIFETIME = dt.timedelta(days=7)
CRL_LIFETIME = dt.timedelta(days=7)
# Backdating absorbs small clock differences between the issuer and verifiers.
BACKDATE = dt.timedelta(minutes=5)
MAX_CSR_BYTES = 16_384

CaPrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, repr=False)
class AccountCA:
    """A freshly created account CA; the private keys must be sealed by the caller, never logged."""

    root_cert: x509.Certificate
    root_key: CaPrivateKey
    intermediate_cert: x509.Certificate
    intermediate_key: CaPrivateKey

    def __repr__(self) -> str:
        return f"AccountCA(root={self.root_cert.subject.rfc4514_string()!r})"


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def generate_key() -> CaPrivateKey:
    """A new ECDSA P-256 key (the curve both OpenSSL and `cryptography`'s verifier accept)."""
    return ec.generate_private_key(ec.SECP256R1())


def _ski(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki_from(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """Keyid-only AKI: an issuer+serial AKI would pin one issuer certificate and break the cross path."""
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier(
        key_identifier=ski.digest, authority_cert_issuer=None, authority_cert_serial_number=None
    )


def _ca_name(account_name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fleet-mcp account {account_name}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{account_name} federation {role} CA"),
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def create_account_ca(
    account_name: str,
    *,
    now: dt.datetime | None = None,
    root_lifetime: dt.timedelta = ROOT_LIFETIME,
    intermediate_lifetime: dt.timedelta = INTERMEDIATE_LIFETIME,
) -> AccountCA:
    """Create a root (pathLen 1: signs intermediates and cross certs) and an intermediate (pathLen 0)."""
    start = _now(now) - BACKDATE
    root_key, int_key = generate_key(), generate_key()
    root_name = _ca_name(account_name, "root")
    root_ski = _ski(root_key.public_key())
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + root_lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(root_ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(root_ski.digest, None, None), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(_ca_name(account_name, "intermediate"))
        .issuer_name(root_name)
        .public_key(int_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + intermediate_lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(_ski(int_key.public_key()), critical=False)
        .add_extension(_aki_from(root), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return AccountCA(
        root_cert=root, root_key=root_key, intermediate_cert=intermediate, intermediate_key=int_key
    )


def new_intermediate(
    root_cert: x509.Certificate,
    root_key: CaPrivateKey,
    *,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta = INTERMEDIATE_LIFETIME,
) -> tuple[x509.Certificate, CaPrivateKey]:
    """A fresh intermediate (new key, same subject) under an existing root: an intermediate rotation."""
    start = _now(now) - BACKDATE
    key = generate_key()
    root_cn = root_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    account_name = str(root_cn).removeprefix("fleet-mcp account ")
    cert = (
        x509.CertificateBuilder()
        .subject_name(_ca_name(account_name, "intermediate"))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(_ski(key.public_key()), critical=False)
        .add_extension(_aki_from(root_cert), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return cert, key


# --- node certificates -------------------------------------------------------------------------


def _is_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    )


def is_under_domain(name: str, domain: str) -> bool:
    """True when `name` is a strict subdomain of `domain` (case-insensitive, no wildcards)."""
    name, domain = name.lower().rstrip("."), domain.lower().rstrip(".")
    return name.endswith("." + domain) and all(_is_label(p) for p in name.split("."))


def node_dns_name(node_name: str, federation_domain: str) -> str:
    """The DNS SAN of a node: a bare label goes under the domain; a full name must already be under it."""
    if not federation_domain:
        raise InvalidArgument(
            "the account has no federation domain",
            hint="set the account's federation_domain before issuing node certificates",
        )
    name = node_name.strip().lower().rstrip(".")
    if _is_label(name):
        return f"{name}.{federation_domain.lower()}"
    if is_under_domain(name, federation_domain):
        return name
    raise InvalidArgument(
        f"node name {node_name!r} is not under the account's federation domain {federation_domain!r}",
        hint=f"use a single DNS label (e.g. 'edge-1') or a name ending in '.{federation_domain}'",
        node_name=node_name,
    )


def load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature; refuse anything malformed."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise InvalidArgument("the CSR is too large", hint=f"send a PEM CSR under {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise InvalidArgument(
            "the CSR is not a valid PEM certificate signing request",
            hint="send a PEM block starting with -----BEGIN CERTIFICATE REQUEST-----",
        ) from exc
    if not csr.is_signature_valid:
        raise InvalidArgument(
            "the CSR signature does not verify", hint="re-create the CSR with the node's key"
        )
    return csr


def check_node_public_key(key: object) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    raise InvalidArgument(
        "the CSR key type is not supported",
        hint="use an ECDSA P-256 key (openssl ecparam -name prime256v1 -genkey)",
    )


def csr_dns_names(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def issue_node_certificate(
    *,
    intermediate_cert: x509.Certificate,
    intermediate_key: CaPrivateKey,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    dns_name: str,
    federation_domain: str,
    account_name: str,
    lifetime: dt.timedelta = NODE_LIFETIME,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign a short-lived serverAuth+clientAuth leaf whose only DNS SAN lies under the federation domain."""
    if not is_under_domain(dns_name, federation_domain):
        raise InvalidArgument(
            f"DNS name {dns_name!r} is not under the account's federation domain {federation_domain!r}",
            hint=f"use a name ending in '.{federation_domain}'",
        )
    start = _now(now) - BACKDATE
    end = min(start + BACKDATE + lifetime, intermediate_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fleet-mcp account {account_name}"),
                    x509.NameAttribute(NameOID.COMMON_NAME, dns_name),
                ]
            )
        )
        .issuer_name(intermediate_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(_aki_from(intermediate_cert), critical=False)
        .sign(intermediate_key, hashes.SHA256())
    )


# --- cross certificates ------------------------------------------------------------------------


def cross_sign_intermediate(
    *,
    signer_root_cert: x509.Certificate,
    signer_root_key: CaPrivateKey,
    peer_intermediate_cert: x509.Certificate,
    peer_domain: str,
    lifetime: dt.timedelta = CROSS_LIFETIME,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Our root vouches for the peer's intermediate, but only for names under the peer's domain.

    Same subject, public key and key identifier as the peer's intermediate, so the peer's leaves
    (keyid-only AKI) chain to it; the critical DNS name constraint stops the peer from minting our names.
    """
    if not peer_domain:
        raise InvalidArgument(
            "the peer account has no federation domain", hint="set the peer account's federation_domain first"
        )
    peer_ski = peer_intermediate_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    start = _now(now) - BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(peer_intermediate_cert.subject)
        .issuer_name(signer_root_cert.subject)
        .public_key(peer_intermediate_cert.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + BACKDATE + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(peer_ski, critical=False)
        .add_extension(_aki_from(signer_root_cert), critical=False)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DNSName(peer_domain.lower())], excluded_subtrees=None
            ),
            critical=True,
        )
        .sign(signer_root_key, hashes.SHA256())
    )


def permitted_dns_names(cert: x509.Certificate) -> list[str] | None:
    """The permitted DNS subtrees of a certificate, or None when it has no critical DNS name constraint."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return None
    permitted = [n.value for n in (ext.value.permitted_subtrees or []) if isinstance(n, x509.DNSName)]
    return permitted if ext.critical and permitted else None


# --- CRLs --------------------------------------------------------------------------------------


def build_crl(
    *,
    issuer_cert: x509.Certificate,
    issuer_key: CaPrivateKey,
    revoked: Iterable[tuple[int, dt.datetime]],
    crl_number: int,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta = CRL_LIFETIME,
) -> x509.CertificateRevocationList:
    """A CRL from `issuer_cert` listing (serial, revoked_at) pairs; the number must grow on every rebuild."""
    this_update = _now(now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update)
        .next_update(this_update + lifetime)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(_aki_from(issuer_cert), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(min(when, this_update))
            .build()
        )
    return builder.sign(issuer_key, hashes.SHA256())


# --- PEM and serial helpers --------------------------------------------------------------------


def cert_to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def certs_to_pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(cert_to_pem(c) for c in certs)


def crl_to_pem(crl: x509.CertificateRevocationList) -> str:
    return crl.public_bytes(serialization.Encoding.PEM).decode()


def load_cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def load_certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode()) if pem.strip() else []


def private_key_to_pem(key: CaPrivateKey) -> bytes:
    """Unencrypted PKCS#8 bytes: only for sealing under the transit key or a one-time hand-over."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(pem: bytes) -> CaPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an ECDSA private key")
    return key


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def serial_from_hex(value: str) -> int:
    return int(value, 16)


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `cert`'s signature verifies under `issuer`'s public key."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
