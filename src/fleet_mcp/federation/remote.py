"""Federation between two fleet-mcp instances (docs/federation-protocol.md): the proposer's side of
establish/confirm and the channel, and the acceptor's dial-pin-establish-confirm. Every method works on the
caller's session and never commits; network calls are bounded by the wire timeouts."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Account
from fleet_mcp.errors import Conflict, ExternalError, FleetError, InvalidArgument, RateLimited, Unauthenticated
from fleet_mcp.federation import accounts, peering, peers, pki, tokens, wire
from fleet_mcp.federation.authority import REMOTE_KEY_REF, Authorities
from fleet_mcp.federation.config import FederationConfig
from fleet_mcp.federation.instance import InstanceIdentity, fingerprint, instance_name, pin_matches
from fleet_mcp.federation.lifecycle import TRUSTED_STATUSES, PeerStatus, check_action
from fleet_mcp.federation.models import CertificateAuthority, FederationPeer, FederationRemote
from fleet_mcp.federation.schemas import AcceptOut

API = "/federation/v1"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_TRUSTED = {s.value for s in TRUSTED_STATUSES}


def is_remote_ca(ca: CertificateAuthority) -> bool:
    """The CA row of a remote account: the other instance's certificates, no keys."""
    return ca.root_key_ref == REMOTE_KEY_REF


@dataclass
class Refusal(Exception):
    """A refusal answered on the wire: status, stable code, message (never a secret)."""

    status: int
    code: str
    message: str

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


UNIFORM = Refusal(401, "invalid_token", tokens.REFUSAL_MESSAGE)


def _pem_str(body: dict[str, Any], key: str, limit: int = 16_384) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Refusal(400, "malformed", f"{key} is missing or too large")
    return value


def _check_ca_pair(root_pem: str, intermediate_pem: str) -> tuple[x509.Certificate, x509.Certificate]:
    """A self-signed CA root and a CA intermediate it signed, or a refusal."""
    try:
        root, inter = pki.load_cert(root_pem), pki.load_cert(intermediate_pem)
        ok = (
            root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            and inter.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            and pki.verify_signed_by(root, root)
            and pki.verify_signed_by(inter, root)
        )
    except (ValueError, x509.ExtensionNotFound):
        ok = False
    if not ok:
        raise Refusal(400, "bad_ca", "the root and intermediate are not a CA pair (intermediate signed by root)")
    return root, inter


def _csr_and_key() -> tuple[str, bytes]:
    key = pki.generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet-mcp federation channel")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), pki.private_key_to_pem(key)


def _same_key(cert: x509.Certificate, key_pem: bytes) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, fmt) == pki.load_private_key(key_pem).public_key().public_bytes(
        enc, fmt
    )


@dataclass
class Channel:
    """How to call the other instance of an established link: everything read from the database before, so
    that the call itself needs no session (and no transaction stays open while it waits)."""

    endpoint: str
    remote_peer_id: int
    server_hostname: str
    ctx: Any
    timeout: float = wire.TIMEOUT

    async def call(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        return await wire.call(
            self.endpoint, method, f"{API}/peers/{self.remote_peer_id}/{path}", body, ctx=self.ctx,
            server_hostname=self.server_hostname, timeout=self.timeout,
        )


@dataclass
class Renewal:
    """A channel certificate renewal prepared in a read session (`RemoteFederation.prepare_renewal`)."""

    peer_id: int
    channel: Channel
    instance_ca_pem: str
    current_cert_pem: str


class RemoteFederation:
    """Both roles of the two-instance protocol. `identity` is this instance's endpoint identity (None when
    the server has no federation listener) and `endpoint` the URL it advertises."""

    def __init__(
        self,
        authorities: Authorities,
        config: FederationConfig,
        identity: Callable[[], InstanceIdentity | None],
        endpoint: str | None,
    ) -> None:
        self.authorities = authorities
        self.config = config
        self._identity = identity
        self.endpoint = endpoint

    def identity(self) -> InstanceIdentity:
        ident = self._identity()
        if ident is None or not self.endpoint:
            raise InvalidArgument(
                "this instance has no federation endpoint, so it cannot federate with another instance",
                hint="start the server with `fleet-mcp serve --federation-listen HOST:PORT` "
                "(and FLEET_MCP_FEDERATION_ADVERTISE_URL when peers reach it under another address)",
            )
        return ident

    # -- remote accounts -------------------------------------------------------------------------

    async def remote_account(
        self, session: AsyncSession, *, name: str, domain: str, exclude_account_id: int | None = None
    ) -> Account:
        """The local stand-in of another instance's account (no principals); reused when one already holds
        exactly this domain, otherwise the domain must not overlap any account of this instance."""
        value = accounts.normalize_domain(domain)
        found = (
            await session.execute(select(Account).where(Account.federation_domain == value))
        ).scalar_one_or_none()
        if found is not None and "@" in found.name:
            if found.name != name and not (
                await session.execute(select(Account.id).where(Account.name == name))
            ).first():
                found.name = name
            return found
        value = await accounts.check_new_domain(session, value, account_id=exclude_account_id)
        if (await session.execute(select(Account.id).where(Account.name == name))).first():
            raise Conflict(f"a remote account named {name!r} already exists with another domain")
        acct = Account(name=name, federation_domain=value)
        session.add(acct)
        await session.flush()
        return acct

    async def store_remote_ca(
        self, session: AsyncSession, account_id: int, root_pem: str, intermediate_pem: str, crl_pem: str | None
    ) -> CertificateAuthority:
        ca = await self.authorities.get(session, account_id)
        if ca is None:
            ca = CertificateAuthority(
                account_id=account_id,
                root_cert_pem=root_pem,
                intermediate_cert_pem=intermediate_pem,
                root_key_ref=REMOTE_KEY_REF,
                intermediate_key_ref=REMOTE_KEY_REF,
                bundle_version=1,
            )
            session.add(ca)
        elif not is_remote_ca(ca):
            raise Conflict("refusing to overwrite a local CA with a remote one")
        ca.root_cert_pem, ca.intermediate_cert_pem = root_pem, intermediate_pem
        ca.intermediate_crl_pem = crl_pem
        await session.flush()
        return ca

    async def _own(self, session: AsyncSession, account_id: int) -> dict[str, Any]:
        acct = await accounts.by_id(session, account_id)
        ca = await self.authorities.ensure(session, account_id)
        await self.authorities.refresh_stale_crls(session, ca, utcnow())
        return {
            "account": acct.name,
            "domain": accounts.federation_domain(acct),
            "root_pem": ca.root_cert_pem,
            "intermediate_pem": ca.intermediate_cert_pem,
            "intermediate_crl_pem": ca.intermediate_crl_pem,
            "sequence": ca.bundle_version,
        }

    async def remote_of(self, session: AsyncSession, peer_id: int) -> FederationRemote | None:
        stmt = select(FederationRemote).where(FederationRemote.peer_id == peer_id)
        return (await session.execute(stmt)).scalar_one_or_none()

    # -- proposer: propose, regenerate -----------------------------------------------------------

    def peering_token(self, peer: FederationPeer, local: Account, remote: FederationRemote, secret: str) -> str:
        ident = self.identity()
        assert self.endpoint is not None and peer.token_expires_at is not None
        return peering.PeeringToken(
            issuer_instance=ident.instance_id,
            account=local.name,
            domain=accounts.federation_domain(local),
            endpoints=[self.endpoint],
            pin=ident.pin,
            peer_id=peer.id,
            remote_domain=remote.remote_domain,
            secret_token=secret,
            expires_at=peer.token_expires_at,
        ).encode()

    # -- proposer: the endpoint's handlers (the listener wraps each in a transaction) -------------

    async def establish(self, session: AsyncSession, body: dict[str, Any], *, now: dt.datetime) -> dict[str, Any]:
        """Message 3: check the secret, claim it atomically, issue the acceptor's channel certificate."""
        ident = self.identity()
        try:
            presented = tokens.parse_token(_pem_str(body, "tok", 200))
            peer_id = int(body.get("peer", 0))
        except (FleetError, ValueError, TypeError, Refusal):
            raise UNIFORM from None
        peer = await session.get(FederationPeer, peer_id) if peer_id > 0 else None
        remote = await self.remote_of(session, peer.id) if peer is not None else None
        if peer is None or remote is None or remote.role != "proposer":
            raise UNIFORM
        if peer.locked_until is not None and peer.locked_until > now:
            raise Refusal(429, "locked", "too many failed attempts; ask the proposing operators for a new token")
        if peer.status != PeerStatus.PROPOSED.value or not tokens.digest_matches(
            presented, peer.token_id, peer.token_digest
        ):
            # Counted (towards lock and cancellation) only when the public id is right, i.e. the caller saw the
            # token: otherwise anyone reaching the endpoint could cancel proposals by sending garbage.
            if tokens.public_id_matches(presented, peer.token_id):
                await self._count_failure(session, peer, now)
            raise UNIFORM
        if peer.token_expires_at is None or peer.token_expires_at <= now:
            raise Refusal(410, "expired", "the peering token has expired; ask for a new one")
        domain = str(body.get("domain", ""))
        try:
            domain = accounts.normalize_domain(domain)
        except InvalidArgument:
            raise Refusal(400, "bad_domain", "the acceptor's federation domain is not a DNS domain") from None
        if domain != remote.remote_domain:
            raise Refusal(403, "domain_mismatch", "the proposal is for another federation domain")
        instance_id, account = str(body.get("instance_id", "")), str(body.get("account", ""))
        if not re.fullmatch(r"inst-[0-9a-f]{16}", instance_id) or not _NAME_RE.match(account):
            raise Refusal(400, "malformed", "bad instance id or account name")
        if instance_id == ident.instance_id:
            raise Refusal(400, "same_instance", "an instance cannot federate with itself over the endpoint")
        endpoint = _pem_str(body, "endpoint", 500)
        wire.split_endpoint(endpoint)
        root_pem, inter_pem = _pem_str(body, "root_pem"), _pem_str(body, "intermediate_pem")
        _check_ca_pair(root_pem, inter_pem)
        crl_pem = body.get("intermediate_crl_pem") if isinstance(body.get("intermediate_crl_pem"), str) else None
        try:
            instance_ca = pki.load_cert(_pem_str(body, "instance_ca_pem"))
            channel_cert = ident.sign_channel_csr(
                _pem_str(body, "channel_csr_pem"), label=f"peer-{peer.id}", lifetime=self.config.channel_cert_lifetime
            )
        except (ValueError, InvalidArgument):
            raise Refusal(400, "malformed", "bad instance CA or channel CSR") from None
        # The claim: of any number of concurrent establishes exactly one updates the row.
        claimed = await session.execute(
            update(FederationPeer)
            .where(
                FederationPeer.id == peer.id,
                FederationPeer.status == PeerStatus.PROPOSED.value,
                FederationPeer.token_digest == presented.digest,
                FederationPeer.token_expires_at > now,
            )
            .values(token_digest=None, failed_attempts=0, locked_until=None)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise Refusal(409, "already_used", "the peering token was already used")
        await session.refresh(peer)
        shadow = await accounts.by_id(session, peer.remote_account_id)
        shadow.name = f"{account}@{instance_id}"
        await self.store_remote_ca(session, shadow.id, root_pem, inter_pem, crl_pem)
        csr_pem, key_pem = _csr_and_key()
        remote.remote_instance_id, remote.remote_account_name = instance_id, account
        remote.remote_endpoint = endpoint
        remote.remote_instance_ca_pem = pki.cert_to_pem(instance_ca)
        remote.remote_ca_pin = fingerprint(instance_ca)
        remote.inbound_channel_fp = fingerprint(channel_cert)
        remote.outbound_channel_key_ref = await self.authorities.sealer.seal(
            session, remote.local_account_id, key_pem, label=f"federation channel key of peer {peer.id}"
        )
        remote.claimed_at = now
        await session.flush()
        await peers.emit_both(session, peer, "federation.remote_claimed", payload={"instance": instance_id})
        return {
            "instance_id": ident.instance_id,
            "peer": peer.id,
            "channel_cert_pem": pki.cert_to_pem(channel_cert),
            "channel_csr_pem": csr_pem,
            **(await self._own(session, remote.local_account_id)),
        }

    async def _count_failure(self, session: AsyncSession, peer: FederationPeer, now: dt.datetime) -> None:
        peer.failed_attempts = (peer.failed_attempts or 0) + 1
        peer.last_failed_at = now
        if peer.status == PeerStatus.PROPOSED.value and peer.failed_attempts >= self.config.cancel_after:
            peer.status = check_action(peer.status, "revoke", peer_id=peer.id)
            peer.token_digest = None
            peer.revoked_at, peer.revoked_by = now, "system"
            peer.revoked_reason = f"cancelled after {peer.failed_attempts} failed establish attempts"
        elif peer.failed_attempts % self.config.lockout_after == 0:
            peer.locked_until = now + self.config.lockout_for
        await session.flush()
        await peers.emit_both(
            session, peer, "federation.accept_failed", severity="medium", payload={"reason": "establish"}
        )

    async def channel_peer(
        self, session: AsyncSession, peer_id: int, client_cert_der: bytes | None
    ) -> tuple[FederationPeer, FederationRemote]:
        """The peer a channel call is for: the client certificate must be the one issued for this peer."""
        if not client_cert_der:
            raise Refusal(401, "no_channel_certificate", "this call needs the peer's channel certificate")
        fp = fingerprint(x509.load_der_x509_certificate(client_cert_der))
        remote = await self.remote_of(session, peer_id)
        if remote is None or fp not in (remote.inbound_channel_fp, remote.previous_inbound_channel_fp):
            raise Refusal(403, "wrong_channel", "the channel certificate is not the one of this peer")
        if fp == remote.inbound_channel_fp and remote.previous_inbound_channel_fp is not None:
            remote.previous_inbound_channel_fp = None  # the holder uses the renewed certificate: retire the old one
            await session.flush()
        peer = await session.get(FederationPeer, peer_id)
        assert peer is not None
        return peer, remote

    async def renew_inbound(
        self, session: AsyncSession, peer_id: int, client_cert_der: bytes | None, body: dict[str, Any], *,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """Message 7 (issuer side): sign a new channel CSR for the peer presenting its current (or previous)
        channel certificate. The presented certificate stays accepted until the renewed one is first used."""
        peer, remote = await self.channel_peer(session, peer_id, client_cert_der)
        if peer.status == PeerStatus.REVOKED.value:
            raise Refusal(409, "revoked", "the peer is revoked; its channel certificate is not renewed")
        assert client_cert_der is not None
        try:
            cert = self.identity().sign_channel_csr(
                _pem_str(body, "channel_csr_pem"), label=f"peer-{peer.id}", now=now,
                lifetime=self.config.channel_cert_lifetime,
            )
        except (ValueError, InvalidArgument):
            raise Refusal(400, "malformed", "bad channel CSR") from None
        remote.previous_inbound_channel_fp = fingerprint(x509.load_der_x509_certificate(client_cert_der))
        remote.inbound_channel_fp = fingerprint(cert)
        await session.flush()
        return {"channel_cert_pem": pki.cert_to_pem(cert), "not_after": cert.not_valid_after_utc.isoformat()}

    def channel_renewal_due(self, remote: FederationRemote, now: dt.datetime) -> bool:
        """Our channel certificate (issued by the other instance) is past `channel_renew_at` of its life."""
        if not remote.outbound_channel_cert_pem:
            return False
        cert = pki.load_cert(remote.outbound_channel_cert_pem)
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return now >= start + (end - start) * self.config.channel_renew_at

    async def channel(self, session: AsyncSession, link: FederationRemote) -> Channel:
        """How to call the other instance of an established link (its channel key unsealed in `session`, which
        may be a read session)."""
        assert link.remote_endpoint and link.remote_instance_id and link.remote_peer_id is not None
        return Channel(
            endpoint=link.remote_endpoint,
            remote_peer_id=link.remote_peer_id,
            server_hostname=instance_name(link.remote_instance_id),
            ctx=await self.channel_context(session, link),
            timeout=self.config.channel_timeout,
        )

    async def prepare_renewal(self, session: AsyncSession, remote: FederationRemote) -> Renewal:
        """Message 7 (holder side), before dialing: what the renewal call needs, read in a read session."""
        assert remote.remote_instance_ca_pem and remote.outbound_channel_cert_pem
        return Renewal(
            peer_id=remote.peer_id,
            channel=await self.channel(session, remote),
            instance_ca_pem=remote.remote_instance_ca_pem,
            current_cert_pem=remote.outbound_channel_cert_pem,
        )

    async def dial_renewal(self, renewal: Renewal, *, now: dt.datetime) -> tuple[x509.Certificate, bytes]:
        """Message 7 (holder side), on the wire with no session: a new key and CSR, signed by the other
        instance over the current channel; the answer must chain to the pinned instance CA and carry our new
        key. Returns the new certificate and its key; ExternalError when it does not check out."""
        csr_pem, key_pem = _csr_and_key()
        status, answer = await renewal.channel.call("POST", "renew", {"channel_csr_pem": csr_pem})
        if status != 200:
            code = (answer.get("error") or {}).get("code", status)
            raise ExternalError(
                f"the other instance refused to renew the channel certificate ({code})",
                hint="the current certificate stays in use; the scan reports it when it nears its expiry",
            )
        try:
            cert = pki.load_cert(str(answer["channel_cert_pem"]))
            ok = pki.verify_signed_by(cert, pki.load_cert(renewal.instance_ca_pem)) and _same_key(cert, key_pem)
        except (KeyError, ValueError, TypeError):
            ok = False
        if not ok or cert.not_valid_after_utc <= now:
            raise ExternalError(
                "the other instance answered the renewal with a certificate that does not check out",
                hint="the current certificate stays in use; ask the other operators to check their instance",
            )
        return cert, key_pem

    async def store_renewal(
        self, session: AsyncSession, remote: FederationRemote, cert: x509.Certificate, key_pem: bytes
    ) -> str:
        """Message 7 (holder side), in the unit of work: keep the renewed certificate and seal its key (the
        old key is discarded). Returns the new not-after."""
        old_ref = remote.outbound_channel_key_ref
        remote.outbound_channel_cert_pem = pki.cert_to_pem(cert)
        remote.outbound_channel_key_ref = await self.authorities.sealer.seal(
            session, remote.local_account_id, key_pem, label=f"federation channel key of peer {remote.peer_id}"
        )
        if old_ref and old_ref.startswith("credential:") and old_ref[11:].isdigit():
            from fleet_mcp.vault.credentials import discard

            await discard(session, int(old_ref[11:]))
        await session.flush()
        return cert.not_valid_after_utc.isoformat()

    async def confirm(
        self, session: AsyncSession, peer_id: int, client_cert_der: bytes | None, body: dict[str, Any], *,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """Message 4: the acceptor has cross-signed on its side; cross-sign on ours, both are accepted."""
        peer, remote = await self.channel_peer(session, peer_id, client_cert_der)
        if remote.role != "proposer" or remote.claimed_at is None or peer.status != PeerStatus.PROPOSED.value:
            raise Refusal(409, "not_pending", "this peer is not waiting for a confirmation")
        cert_pem = _pem_str(body, "channel_cert_pem")
        try:
            remote_peer_id = int(body.get("peer", 0))
            cert = pki.load_cert(cert_pem)
        except (ValueError, TypeError):
            raise Refusal(400, "malformed", "bad channel certificate or peer id") from None
        assert remote.remote_instance_ca_pem is not None and remote.outbound_channel_key_ref is not None
        key_pem = await self.authorities.sealer.unseal(session, remote.outbound_channel_key_ref)
        if remote_peer_id <= 0 or not pki.verify_signed_by(cert, pki.load_cert(remote.remote_instance_ca_pem)) or (
            not _same_key(cert, key_pem)
        ):
            raise Refusal(400, "bad_channel_certificate", "the channel certificate is not for our channel key")
        remote.outbound_channel_cert_pem = cert_pem
        remote.remote_peer_id = remote_peer_id
        remote.claimed_at = None
        remote.remote_status, remote.last_contact_at = PeerStatus.ACCEPTED.value, now
        remote.bundle_fetched_at = now  # the acceptor's CA material arrived with the establish
        peer.status = check_action(peer.status, "accept", peer_id=peer.id)
        peer.accepted_at, peer.trusted_since = now, now
        peer.accepted_by = f"{remote.remote_account_name}@{remote.remote_instance_id}"
        await session.flush()
        await self.cross_sign_local(session, peer, remote, now=now)
        await peers.emit_both(session, peer, "federation.peer_accepted", payload={"remote": peer.accepted_by})
        return {"ok": True, "peer": peer.id}

    async def cross_sign_local(
        self, session: AsyncSession, peer: FederationPeer, remote: FederationRemote, *, now: dt.datetime
    ) -> None:
        """Our root signs the remote account's intermediate (constrained to its domain) — never the other way
        round: each instance signs only with its own root."""
        local_id = remote.local_account_id
        other_id = peer.remote_account_id if peer.local_account_id == local_id else peer.local_account_id
        cert = await self.authorities.cross_sign(session, signer_id=local_id, subject_id=other_id, peer=peer, now=now)
        if peer.local_account_id == local_id:
            peer.local_cross_serial = cert.serial
        else:
            peer.remote_cross_serial = cert.serial
        await session.flush()
        await self.authorities.refresh_bundle(session, local_id)

    async def bundle(
        self, session: AsyncSession, peer_id: int, client_cert_der: bytes | None
    ) -> dict[str, Any]:
        """Message 5: our current bundle material for this peer, with its sequence and our view of the peer."""
        peer, remote = await self.channel_peer(session, peer_id, client_cert_der)
        own = await self._own(session, remote.local_account_id)
        side = peers.side_of(peer, remote.local_account_id)
        return {
            "trust_domain": own.pop("domain"),
            "refresh_hint": self.config.refresh_hint,
            "status": peer.status,
            "suspended_by_sender": getattr(peer, f"{side}_suspended_by") is not None,
            **own,
        }

    # -- acceptor: dial, pin, establish, confirm ---------------------------------------------------

    async def accept(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peering_token: str,
        actor: str | None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> AcceptOut:
        now = now or utcnow()
        token = peering.decode(peering_token, now=now)
        ident = self.identity()
        local = await accounts.by_id(session, account_id)
        local_domain = accounts.federation_domain(local)
        if accounts.normalize_domain(token.remote_domain) != local_domain.lower():
            raise InvalidArgument(
                f"the proposal is for federation domain {token.remote_domain!r}, but account {local.name!r} has "
                f"{local_domain!r}",
                hint="accept with the account the proposal names, or ask for a proposal to this domain",
            )
        if token.issuer_instance == ident.instance_id:
            raise InvalidArgument(
                "this peering token was issued by this instance",
                hint="accept single-instance proposals with system_sdwan_accept_federation_peer",
            )
        remote_name = f"{token.account}@{token.issuer_instance}"
        # Refuse locally (before dialing) a proposer domain that overlaps one of ours.
        existing = (
            await session.execute(select(Account).where(Account.federation_domain == token.domain.lower()))
        ).scalar_one_or_none()
        if existing is None or "@" not in existing.name:
            await accounts.check_new_domain(session, token.domain)
        endpoint, ca_pem = await self._dial_and_pin(token)
        channel_ctx = wire.pinned_context(ca_pem)
        server = instance_name(token.issuer_instance)
        own = await self._own(session, account_id)
        csr_pem, key_pem = _csr_and_key()
        status, answer = await wire.call(
            endpoint,
            "POST",
            f"{API}/establish",
            {
                "v": 1,
                "tok": token.secret_token,
                "peer": token.peer_id,
                "instance_id": ident.instance_id,
                "endpoint": self.endpoint,
                "instance_ca_pem": ident.ca_pem,
                "channel_csr_pem": csr_pem,
                **{k: own[k] for k in ("account", "domain", "root_pem", "intermediate_pem", "intermediate_crl_pem")},
            },
            ctx=channel_ctx,
            server_hostname=server,
        )
        if status != 200:
            raise _refusal_error(status, answer, token.peer_id)
        try:
            root_pem, inter_pem = str(answer["root_pem"]), str(answer["intermediate_pem"])
            _check_ca_pair(root_pem, inter_pem)
            channel_cert = pki.load_cert(str(answer["channel_cert_pem"]))
            proposer_csr = str(answer["channel_csr_pem"])
            if answer.get("account") != token.account or str(answer.get("domain", "")).lower() != token.domain.lower():
                raise Refusal(502, "mismatch", "the endpoint answered for another account or domain")
            if not pki.verify_signed_by(channel_cert, pki.load_cert(ca_pem)) or not _same_key(channel_cert, key_pem):
                raise Refusal(502, "bad_channel_certificate", "the channel certificate is not for our key")
        except (KeyError, ValueError, TypeError, Refusal) as exc:
            raise ExternalError(
                "the proposing instance answered the establishment with data that does not check out"
                + (f" ({exc.message})" if isinstance(exc, Refusal) else ""),
                hint="nothing was stored here; ask the proposing operators to check their instance",
            ) from None
        shadow = await self.remote_account(session, name=remote_name, domain=token.domain)
        crl = answer.get("intermediate_crl_pem") if isinstance(answer.get("intermediate_crl_pem"), str) else None
        await self.store_remote_ca(session, shadow.id, root_pem, inter_pem, crl)
        peer = FederationPeer(
            local_account_id=shadow.id,
            remote_account_id=account_id,
            status=PeerStatus.ACCEPTED.value,
            proposed_at=now,
            proposed_by=remote_name,
            accepted_at=now,
            accepted_by=actor,
            trusted_since=now,
        )
        session.add(peer)
        await session.flush()
        proposer_channel = ident.sign_channel_csr(
            proposer_csr, label=f"peer-{peer.id}", lifetime=self.config.channel_cert_lifetime
        )
        remote = FederationRemote(
            peer_id=peer.id,
            role="acceptor",
            local_account_id=account_id,
            remote_instance_id=token.issuer_instance,
            remote_account_name=token.account,
            remote_domain=shadow.federation_domain or token.domain,
            remote_endpoint=endpoint,
            remote_peer_id=token.peer_id,
            remote_ca_pin=token.pin,
            remote_instance_ca_pem=ca_pem,
            inbound_channel_fp=fingerprint(proposer_channel),
            outbound_channel_cert_pem=pki.cert_to_pem(channel_cert),
            outbound_channel_key_ref=await self.authorities.sealer.seal(
                session, account_id, key_pem, label=f"federation channel key of peer {peer.id}"
            ),
            bundle_sequence=int(answer.get("sequence", 0) or 0),
            bundle_fetched_at=now,
            remote_status=PeerStatus.PROPOSED.value,
            last_contact_at=now,
        )
        session.add(remote)
        await session.flush()
        await self.cross_sign_local(session, peer, remote, now=now)
        status, answer = await wire.call(
            endpoint,
            "POST",
            f"{API}/peers/{token.peer_id}/confirm",
            {"peer": peer.id, "channel_cert_pem": pki.cert_to_pem(proposer_channel)},
            ctx=await self.channel_context(session, remote),
            server_hostname=server,
        )
        if status != 200:
            raise ExternalError(
                f"the proposing instance refused the confirmation ({answer.get('error', {}).get('code', status)})",
                hint="nothing was stored here; the proposing operators regenerate the token and you accept again",
            )
        remote.remote_status = PeerStatus.ACCEPTED.value
        await session.flush()
        await peers.emit_both(
            session,
            peer,
            "federation.peer_accepted",
            correlation_id=correlation_id,
            payload={"accepted_by": actor, "remote": remote_name},
        )
        out = await peers.to_out(session, peer, now=now)
        return AcceptOut(federation_peer=out, cross_certificates=out.cross_certificates)

    async def _dial_and_pin(self, token: peering.PeeringToken) -> tuple[str, str]:
        """The first endpoint whose CA matches the pin (and instance id); refuse when none does."""
        errors = []
        for endpoint in token.endpoints:
            try:
                status, answer = await wire.call(
                    endpoint, "GET", f"{API}/instance", None, ctx=wire.probe_context(), server_hostname=None
                )
            except (ExternalError, InvalidArgument) as exc:
                errors.append(exc.message)
                continue
            if status == 429:
                raise _rate_limited(endpoint, answer)
            try:
                ca = pki.load_cert(str(answer.get("instance_ca_pem", "")))
            except ValueError:
                ca = None
            if status == 200 and ca is not None and pin_matches(ca, token.pin) and (
                answer.get("instance_id") == token.issuer_instance
            ):
                return endpoint, pki.cert_to_pem(ca)
            raise ExternalError(
                f"the endpoint {endpoint} does not present the pinned instance CA of {token.issuer_instance}",
                hint="someone may be intercepting the connection, or the token is for another instance; "
                "nothing was sent or stored",
                endpoint=endpoint,
            )
        raise ExternalError(
            f"no endpoint of the proposing instance could be reached: {'; '.join(errors)}",
            hint="check that it runs with --federation-listen and that the port is open; nothing was stored",
        )

    async def channel_context(self, session: AsyncSession, remote: FederationRemote) -> Any:
        assert remote.remote_instance_ca_pem and remote.outbound_channel_cert_pem and remote.outbound_channel_key_ref
        key_pem = await self.authorities.sealer.unseal(session, remote.outbound_channel_key_ref)
        return wire.pinned_context(
            remote.remote_instance_ca_pem, client_chain_pem=remote.outbound_channel_cert_pem, client_key_pem=key_pem
        )


def _refusal_error(status: int, answer: dict[str, Any], peer_id: int) -> FleetError:
    code = (answer.get("error") or {}).get("code", "")
    if status == 401 or code in ("invalid_token", "already_used"):
        return Unauthenticated(tokens.REFUSAL_MESSAGE, hint=tokens.REFUSAL_HINT, federation_peer_id=peer_id)
    if status == 410:
        return Conflict(
            "the peering token has expired",
            hint="ask the proposing operators to run system_sdwan_regenerate_acceptance_token",
            federation_peer_id=peer_id,
        )
    if status == 429 and code == "rate_limited":
        return _rate_limited("the proposing instance", answer)
    if status == 429:
        return RateLimited("the proposal is locked after repeated failed attempts", hint="try again later")
    message = (answer.get("error") or {}).get("message", f"status {status}")
    return ExternalError(
        f"the proposing instance refused the establishment: {message}",
        hint="nothing was stored here; check the proposal with its operators",
        federation_peer_id=peer_id,
    )


def _rate_limited(where: str, answer: dict[str, Any]) -> FleetError:
    """The other endpoint's per-source rate limit refused this instance's request (nothing was done there)."""
    message = str((answer.get("error") or {}).get("message", ""))[:200]
    return RateLimited(
        f"{where} refused the request: too many requests from this instance's address ({message})",
        hint="nothing was stored; try again after the time it names",
    )
