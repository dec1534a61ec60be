"""This instance's federation identity: a stable instance id and the instance CA that serves the federation
endpoint and signs the channel certificates handed to peers (see docs/federation-protocol.md).

Kept in `<data dir>/federation/` (key files 0600, like the local master key): the instance CA is not an
account CA, no node ever trusts it, and it only authenticates instances to each other's endpoints."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_mcp.errors import InvalidArgument
from fleet_mcp.federation import pki

INSTANCE_SUFFIX = "instance.fleet-mcp.invalid"
CA_LIFETIME = dt.timedelta(days=3650)
ENDPOINT_LIFETIME = dt.timedelta(days=365)
CHANNEL_LIFETIME = dt.timedelta(days=365)


def instance_name(instance_id: str) -> str:
    """The only DNS SAN of an endpoint certificate; `.invalid` can never be issued by a public CA."""
    return f"{instance_id}.{INSTANCE_SUFFIX}"


def fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the DER: the pin of a CA, the identity of a channel certificate."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def pin_matches(cert: x509.Certificate, pin: str) -> bool:
    return hmac.compare_digest(fingerprint(cert).encode(), pin.strip().lower().encode())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True, repr=False)
class InstanceIdentity:
    instance_id: str
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    endpoint_cert: x509.Certificate
    endpoint_key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return f"InstanceIdentity({self.instance_id!r})"

    @property
    def pin(self) -> str:
        return fingerprint(self.ca_cert)

    @property
    def ca_pem(self) -> str:
        return pki.cert_to_pem(self.ca_cert)

    def sign_channel_csr(
        self, csr_pem: str, *, label: str, now: dt.datetime | None = None, lifetime: dt.timedelta = CHANNEL_LIFETIME
    ) -> x509.Certificate:
        """A client certificate for a peer's channel key: clientAuth only, no SAN, valid `lifetime` from now
        (the holder renews it over the channel at two thirds of its life)."""
        csr = pki.load_csr(csr_pem)
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise InvalidArgument("the channel CSR must carry an ECDSA P-256 or P-384 key")
        now = now or dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label[:64])]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - pki.BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )

    def server_context(self) -> ssl.SSLContext:
        """The endpoint: presents [endpoint, instance CA]; client certificates optional at the TLS layer
        (establish has none) and, when present, must chain to this instance's CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_TICKET
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata=self.ca_pem)
        key_pem = self.endpoint_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with tempfile.TemporaryDirectory(prefix="fleet-fedsrv-") as tmp:
            chain, key = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
            chain.write_text(pki.certs_to_pem([self.endpoint_cert, self.ca_cert]))
            _write_private(key, key_pem)
            ctx.load_cert_chain(str(chain), str(key))
        return ctx


def _new_ca(instance_id: str, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleet-mcp instance"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{instance_id} federation endpoint CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    start = now - pki.BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_endpoint(
    instance_id: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    start = now - pki.BACKDATE
    name = instance_name(instance_id)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + ENDPOINT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_or_create(data_dir: Path, *, now: dt.datetime | None = None) -> InstanceIdentity:
    """The instance identity of this data directory, created on first use (id, CA, endpoint certificate);
    the endpoint certificate is re-issued when less than a month of it is left."""
    now = now or dt.datetime.now(dt.UTC)
    base = data_dir / "federation"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    meta_path = base / "instance.json"
    if meta_path.exists():
        instance_id = json.loads(meta_path.read_text())["instance_id"]
    else:
        instance_id = f"inst-{secrets.token_hex(8)}"
        meta_path.write_text(json.dumps({"instance_id": instance_id}))
    ca_path, ca_key_path = base / "instance-ca.pem", base / "instance-ca.key"
    if ca_path.exists() and ca_key_path.exists():
        ca = pki.load_cert(ca_path.read_text())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    else:
        ca, ca_key = _new_ca(instance_id, now)
        _write_private(ca_key_path, _key_pem(ca_key))
        ca_path.write_text(pki.cert_to_pem(ca))
    ep_path, ep_key_path = base / "endpoint.pem", base / "endpoint.key"
    endpoint = endpoint_key = None
    if ep_path.exists() and ep_key_path.exists():
        endpoint = pki.load_cert(ep_path.read_text())
        loaded = serialization.load_pem_private_key(ep_key_path.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        endpoint_key = loaded
        if endpoint.not_valid_after_utc - now < dt.timedelta(days=30) or not pki.verify_signed_by(endpoint, ca):
            endpoint = None
    if endpoint is None or endpoint_key is None:
        endpoint, endpoint_key = _new_endpoint(instance_id, ca, ca_key, now)
        _write_private(ep_key_path, _key_pem(endpoint_key))
        ep_path.write_text(pki.cert_to_pem(endpoint))
    return InstanceIdentity(instance_id, ca, ca_key, endpoint, endpoint_key)
