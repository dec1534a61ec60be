"""The federation service the tools and the scheduler call: every operation on the caller's AsyncSession,
which it flushes but never commits."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Account
from fleet_mcp.errors import Conflict, ExternalError, InvalidArgument
from fleet_mcp.federation import accounts, governance, handshake, peers, tokens, wire
from fleet_mcp.federation import remote as remote_mod
from fleet_mcp.federation.accept import Acceptance, keep_changes
from fleet_mcp.federation.authority import Authorities
from fleet_mcp.federation.config import FederationConfig
from fleet_mcp.federation.instance import InstanceIdentity
from fleet_mcp.federation.keys import KeySealer
from fleet_mcp.federation.lifecycle import TRUSTED_STATUSES, PeerStatus, check_action
from fleet_mcp.federation.models import CertificateAuthority, FederationPeer, FederationRemote, IssuedCertificate
from fleet_mcp.federation.remote import Channel, RemoteFederation
from fleet_mcp.federation.schemas import (
    AcceptOut,
    DirectionOut,
    FederationPeerOut,
    HandshakeOut,
    NodeCertificateOut,
    ProposalOut,
    ScanOut,
    TokenOut,
    TrustBundleOut,
)
from fleet_mcp.federation.verification import HandshakeVerifier

__all__ = ["FederationConfig", "FederationService", "keep_changes"]

REMOTE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def _poll_state(peer: FederationPeer, link: FederationRemote) -> tuple[Any, ...]:
    """What a poll's answer was fetched for: if any of it changed before the answer is applied, the answer
    is dropped (the next poll asks again)."""
    return (
        peer.status, peer.local_suspended_by, peer.remote_suspended_by, link.remote_peer_id, link.remote_endpoint,
        link.outbound_channel_cert_pem, link.remote_domain, link.bundle_sequence,
    )


@dataclass
class RemotePoll:
    """One poll of the other instance of a peer: what it was prepared from (read session), then what the
    other instance answered (`dial_poll`, no session), to be applied by `apply_poll` in a unit of work."""

    peer_id: int
    state: tuple[Any, ...]
    pending: tuple[str, str] | None
    push_only: bool
    channel: Channel
    pushed: tuple[int, dict[str, Any]] | None = None
    bundle: tuple[int, dict[str, Any]] | None = None
    bundle_error: ExternalError | None = None


class FederationService:
    """Stateless apart from its configuration and key sealer."""

    def __init__(
        self,
        sealer: KeySealer,
        config: FederationConfig | None = None,
        *,
        identity: Callable[[], InstanceIdentity | None] | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.config = config or FederationConfig()
        self.authorities = Authorities(sealer, self.config)
        self.acceptance = Acceptance(self.authorities, self.config)
        self.verifier = HandshakeVerifier(self.authorities, self.config)
        #: Federation with peers on other instances (docs/federation-protocol.md).
        self.remote = RemoteFederation(self.authorities, self.config, identity or (lambda: None), endpoint)

    # -- certificates and bundles ----------------------------------------------------------------

    async def ensure_ca(self, session: AsyncSession, account_id: int) -> CertificateAuthority:
        return await self.authorities.ensure(session, account_id)

    async def issue_node_certificate(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        node_name: str,
        csr_pem: str | None = None,
        lifetime: dt.timedelta | None = None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> NodeCertificateOut:
        return await self.authorities.issue_node_certificate(
            session,
            account_id=account_id,
            node_name=node_name,
            csr_pem=csr_pem,
            lifetime=lifetime,
            now=now,
            correlation_id=correlation_id,
        )

    async def trust_bundle(
        self, session: AsyncSession, *, account_id: int, include_crls: bool = False
    ) -> TrustBundleOut:
        return await self.authorities.trust_bundle(session, account_id=account_id, include_crls=include_crls)

    async def rotate_intermediate(
        self, session: AsyncSession, *, account_id: int, now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> TrustBundleOut:
        now = now or utcnow()
        await self.authorities.rotate_intermediate(session, account_id, now=now, correlation_id=correlation_id)
        return await self.authorities.trust_bundle(session, account_id=account_id)

    # -- reading peers ---------------------------------------------------------------------------

    async def list_peers(
        self, session: AsyncSession, *, account_id: int, status: str | None = None
    ) -> list[FederationPeerOut]:
        stmt = select(FederationPeer).where(peers.involving(account_id))
        if status is not None:
            try:
                stmt = stmt.where(FederationPeer.status == PeerStatus(status).value)
            except ValueError:
                raise InvalidArgument(
                    f"unknown status {status!r}", hint=f"use one of: {', '.join(s.value for s in PeerStatus)}"
                ) from None
        rows = (await session.execute(stmt.order_by(FederationPeer.id))).scalars().all()
        now = utcnow()
        return [await peers.to_out(session, p, now=now) for p in rows]

    async def get_peer(self, session: AsyncSession, *, account_id: int, peer_id: int) -> FederationPeerOut:
        return await peers.to_out(session, await peers.visible(session, account_id, peer_id))

    # -- propose and tokens ----------------------------------------------------------------------

    def _ttl(self, ttl: int | None) -> dt.timedelta:
        ttl = self.config.token_ttl_default if ttl is None else ttl
        if not self.config.token_ttl_min <= ttl <= self.config.token_ttl_max:
            raise InvalidArgument(
                f"token_ttl_seconds must be between {self.config.token_ttl_min} and "
                f"{self.config.token_ttl_max}",
                hint="the default is 86400 (24 h); at most 7 days",
                token_ttl_seconds=ttl,
            )
        return dt.timedelta(seconds=ttl)

    async def propose(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        remote_account: str,
        remote_prefix_advertisement: str | Sequence[str] | None = None,
        token_ttl_seconds: int | None = None,
        remote_federation_domain: str | None = None,
        actor: str | None = None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> ProposalOut:
        """Propose federating with `remote_account` (a name); the token is returned here and never again.

        With `remote_federation_domain` the remote account lives on another instance: the result also holds
        a peering token (endpoint, pin, one-time secret) for its operators to accept there."""
        now = now or utcnow()
        ttl = self._ttl(token_ttl_seconds)
        local = await accounts.by_id(session, account_id)
        issued = tokens.new_token()
        if remote_federation_domain is not None:
            self.remote.identity()  # refuse early when this instance has no federation endpoint
            if not REMOTE_NAME_RE.match(remote_account):
                raise InvalidArgument(
                    f"{remote_account!r} is not an account name",
                    hint="use the remote account's name: 1-63 lowercase letters, digits, '.', '_' or '-'",
                )
            domain = accounts.normalize_domain(remote_federation_domain)
            if accounts.domains_nest(accounts.federation_domain(local), domain):
                raise InvalidArgument(
                    f"federation domains {accounts.federation_domain(local)!r} and {domain!r} overlap",
                    hint="name constraints cannot separate nested domains; each account needs its own",
                )
            remote = await self.remote.remote_account(
                session, name=f"{remote_account}@pending-{issued.public_id.lower()}", domain=domain
            )
        else:
            remote = await accounts.by_name(session, remote_account)
        if remote.id == local.id:
            raise InvalidArgument(
                "an account cannot federate with itself",
                account=local.name,
                hint="name another account as remote_account",
            )
        local_domain, remote_domain = accounts.federation_domain(local), accounts.federation_domain(remote)
        if accounts.domains_nest(local_domain, remote_domain):
            raise InvalidArgument(
                f"federation domains {local_domain!r} and {remote_domain!r} overlap",
                hint="name constraints cannot separate nested domains; give each account its own",
            )
        prefixes = peers.normalize_prefixes(remote_prefix_advertisement)
        existing = (
            (
                await session.execute(
                    select(FederationPeer).where(
                        FederationPeer.status != PeerStatus.REVOKED.value,
                        peers.involving(local.id),
                        peers.involving(remote.id),
                    )
                )
            )
            .scalars()
            .first()
        )
        if existing is not None:
            raise Conflict(
                f"accounts {local.name!r} and {remote.name!r} already have federation peer "
                f"{existing.id} ({existing.status})",
                hint="use it, or revoke it before proposing again",
                federation_peer_id=existing.id,
                status=existing.status,
            )
        peer = FederationPeer(
            local_account_id=local.id,
            remote_account_id=remote.id,
            status=PeerStatus.PROPOSED.value,
            remote_prefix_advertisement=prefixes,
            token_id=issued.public_id,
            token_digest=issued.digest,
            token_issued_at=now,
            token_expires_at=now + ttl,
            proposed_at=now,
            proposed_by=actor,
        )
        session.add(peer)
        await session.flush()
        await peers.emit_both(
            session,
            peer,
            "federation.peer_proposed",
            correlation_id=correlation_id,
            payload={
                "local_account": local.name,
                "remote_account": remote.name,
                "token_expires_at": (now + ttl).isoformat(),
            },
        )
        peering_token = None
        if remote_federation_domain is not None:
            link = FederationRemote(
                peer_id=peer.id, role="proposer", local_account_id=local.id,
                remote_domain=remote.federation_domain or "", remote_account_name=remote_account,
            )
            session.add(link)
            await session.flush()
            peering_token = self.remote.peering_token(peer, local, link, issued.token)
        return ProposalOut(
            federation_peer=await peers.to_out(session, peer, now=now),
            acceptance_token=issued.token,
            acceptance_token_expires_at=now + ttl,
            peering_token=peering_token,
        )

    async def regenerate_token(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peer_id: int,
        token_ttl_seconds: int | None = None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> TokenOut:
        """Replace a proposal's token (the old one stops working) and reset its failure count and lock."""
        now = now or utcnow()
        ttl = self._ttl(token_ttl_seconds)
        peer = await peers.visible(session, account_id, peer_id)
        if peer.local_account_id != account_id:
            raise Conflict(
                "only the proposing account can regenerate the acceptance token",
                hint="ask the proposing account's operators",
                federation_peer_id=peer.id,
            )
        if peer.status != PeerStatus.PROPOSED.value:
            raise Conflict(
                f"federation peer {peer.id} is {peer.status}; only proposed peers have a token",
                hint="propose a new federation peer if this one was revoked",
                federation_peer_id=peer.id,
                status=peer.status,
            )
        issued = tokens.new_token()
        peer.token_id, peer.token_digest = issued.public_id, issued.digest
        peer.token_issued_at, peer.token_expires_at = now, now + ttl
        peer.failed_attempts, peer.locked_until = 0, None
        link = await self.remote.remote_of(session, peer.id)
        if link is not None:  # a claim that was never confirmed is discarded with the old secret
            link.claimed_at, link.inbound_channel_fp = None, None
        await session.flush()
        await peers.emit_both(
            session,
            peer,
            "federation.token_regenerated",
            correlation_id=correlation_id,
            payload={"token_expires_at": (now + ttl).isoformat()},
        )
        return TokenOut(
            federation_peer_id=peer.id,
            acceptance_token=issued.token,
            acceptance_token_expires_at=now + ttl,
            peering_token=(
                self.remote.peering_token(peer, await accounts.by_id(session, account_id), link, issued.token)
                if link is not None
                else None
            ),
        )

    async def accept(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peer_id: int,
        acceptance_token: str,
        actor: str | None = None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> AcceptOut:
        """See `federation.accept`: failed attempts raise errors marked `keep_changes`."""
        return await self.acceptance.accept(
            session,
            account_id=account_id,
            peer_id=peer_id,
            acceptance_token=acceptance_token,
            actor=actor,
            now=now,
            correlation_id=correlation_id,
        )

    # -- transitions -----------------------------------------------------------------------------

    async def suspend(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peer_id: int,
        reason: str,
        actor: str | None = None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
        from_remote: bool = False,
    ) -> FederationPeerOut:
        """Keep the peer but withdraw trust exactly as a revocation does (cross certificates revoked).

        The suspension belongs to the caller's side: only that side lifts it. A side may add its own
        suspension to a peer the other side already suspended (then both must resume)."""
        now = now or utcnow()
        reason = peers.check_reason(reason)
        peer = await peers.visible(session, account_id, peer_id)
        side = peers.side_of(peer, account_id)
        holder = actor or f"account {(await accounts.by_id(session, account_id)).name}"
        if peer.status == PeerStatus.SUSPENDED.value:
            if getattr(peer, f"{side}_suspended_by") is not None:
                raise Conflict(
                    f"federation peer {peer.id} is already suspended by this account",
                    hint="resume it with system_sdwan_resume_federation_peer, or revoke it",
                    federation_peer_id=peer.id,
                    status=peer.status,
                )
            serials: list[str] = []  # trust is already withdrawn; this side only adds its own hold
        else:
            peer.status = check_action(peer.status, "suspend", peer_id=peer.id)
            serials = await self.authorities.withdraw_trust(
                session, peer, reason=f"suspended: {reason}", now=now
            )
        setattr(peer, f"{side}_suspended_by", holder[:250])
        peer.suspended_at, peer.suspended_reason = now, reason
        await session.flush()
        await peers.emit_both(
            session,
            peer,
            "federation.peer_suspended",
            severity="medium",
            payload={"reason": reason, "by": actor, "side": side, "revoked_serials": serials},
            correlation_id=correlation_id,
        )
        if not from_remote:
            await self.mark_pending(session, peer, 'suspend', reason)
        return await peers.to_out(session, peer, now=now)

    async def resume(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peer_id: int,
        reason: str,
        actor: str | None = None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
        from_remote: bool = False,
    ) -> FederationPeerOut:
        """Lift the caller's side's suspension. Only when no side holds one any more does the peer go back
        to `accepted` with fresh cross certificates (a verified handshake makes it active again); a side
        that did not suspend cannot lift the other side's suspension."""
        now = now or utcnow()
        reason = peers.check_reason(reason)
        peer = await peers.visible(session, account_id, peer_id)
        check_action(peer.status, "resume", peer_id=peer.id)
        side = peers.side_of(peer, account_id)
        if getattr(peer, f"{side}_suspended_by") is None:
            names = await accounts.names(session, [a for a, _ in peers.suspension_holders(peer)])
            by = ", ".join(names.values()) or "the other account"
            raise Conflict(
                f"federation peer {peer.id} was suspended by {by}, not by this account; only the side that "
                "suspended it can resume it",
                hint=f"ask {by}'s operators to resume it, or revoke the peer",
                federation_peer_id=peer.id,
                status=peer.status,
                suspended_by=list(names.values()),
            )
        setattr(peer, f"{side}_suspended_by", None)
        still_held = peers.suspension_holders(peer)
        cross: list[IssuedCertificate] = []
        if not still_held:
            peer.status = check_action(peer.status, "resume", peer_id=peer.id)
            peer.trusted_since = now
            peer.suspended_at = peer.suspended_reason = None
            await session.flush()
            link = await self.remote.remote_of(session, peer.id)
            if link is None:
                cross = await self.authorities.cross_sign_pair(session, peer, now=now, correlation_id=correlation_id)
            else:  # each instance signs only with its own root
                await self.remote.cross_sign_local(session, peer, link, now=now)
        await session.flush()
        await peers.emit_both(
            session,
            peer,
            "federation.peer_resumed" if not still_held else "federation.peer_suspension_lifted",
            correlation_id=correlation_id,
            payload={
                "reason": reason,
                "by": actor,
                "side": side,
                "still_suspended_by": [a for a, _ in still_held],
                "cross_serials": [c.serial for c in cross],
            },
        )
        if not from_remote:
            await self.mark_pending(session, peer, 'resume', reason)
        return await peers.to_out(session, peer, now=now)

    async def revoke(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peer_id: int,
        reason: str,
        actor: str | None = None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
        from_remote: bool = False,
    ) -> FederationPeerOut:
        """Terminal, from either side: cross certs leave both bundles and go on the signing roots' CRLs."""
        now = now or utcnow()
        reason = peers.check_reason(reason)
        peer = await peers.visible(session, account_id, peer_id)
        peer.status = check_action(peer.status, "revoke", peer_id=peer.id)
        peer.token_digest = None
        peer.revoked_at, peer.revoked_reason, peer.revoked_by = now, reason, actor
        serials = await self.authorities.withdraw_trust(session, peer, reason=f"revoked: {reason}", now=now)
        await peers.emit_both(
            session,
            peer,
            "federation.peer_revoked",
            severity="medium",
            payload={"reason": reason, "by": actor, "revoked_serials": serials},
            correlation_id=correlation_id,
        )
        if not from_remote:
            await self.mark_pending(session, peer, 'revoke', reason)
        return await peers.to_out(session, peer, now=now)

    async def verify_handshake(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peer_id: int,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> HandshakeOut:
        if await self.remote.remote_of(session, peer_id) is not None:
            return await self.verify_remote_handshake(
                session, account_id=account_id, peer_id=peer_id, now=now, correlation_id=correlation_id
            )
        return await self.verifier.verify(
            session, account_id=account_id, peer_id=peer_id, now=now, correlation_id=correlation_id
        )

    # -- federation with other instances: lifecycle push and pull, bundle refresh ---------------------

    async def accept_remote(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peering_token: str,
        actor: str | None = None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> AcceptOut:
        """Accept a proposal made on another instance: dial, check the pin, establish, confirm."""
        return await self.remote.accept(
            session,
            account_id=account_id,
            peering_token=peering_token,
            actor=actor,
            now=now,
            correlation_id=correlation_id,
        )

    async def _channel(self, session: AsyncSession, link: FederationRemote) -> Channel:
        return await self.remote.channel(session, link)

    async def _channel_call(
        self, session: AsyncSession, link: FederationRemote, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        return await (await self._channel(session, link)).call(method, path, body)

    async def mark_pending(self, session: AsyncSession, peer: FederationPeer, action: str, reason: str) -> None:
        """Record a lifecycle change for the other instance (if the peer has one): it commits with the change
        here and is delivered after the commit (`prepare_poll(push_only=True)`), or by the next poll."""
        link = await self.remote.remote_of(session, peer.id)
        if link is None or link.remote_peer_id is None or link.outbound_channel_cert_pem is None:
            return
        link.pending_action, link.pending_reason = action, reason[:500]
        await session.flush()

    @staticmethod
    def _record_push(
        link: FederationRemote, action: str, reason: str, status: int, answer: dict[str, Any], *, now: dt.datetime
    ) -> None:
        """The answer to a lifecycle push: delivered clears it; otherwise it stays pending for the next poll
        (the other side also learns it from its own bundle poll)."""
        if status == 200:
            link.pending_action = link.pending_reason = None
            link.remote_status, link.last_contact_at = str(answer.get("status", ""))[:16] or None, now
            link.last_error = link.last_error_kind = None
        else:
            link.pending_action, link.pending_reason = action, reason[:500]
            err = answer.get("error") or {}
            link.last_error = str(err.get("message", f"status {status}"))[:500]
            link.last_error_kind = "unreachable" if status == 0 else "refused"

    def _other_side(self, peer: FederationPeer, link: FederationRemote) -> tuple[int, str]:
        """The remote account's id and its side ('local' = proposer, 'remote' = acceptor) of the peer."""
        if peer.local_account_id == link.local_account_id:
            return peer.remote_account_id, "remote"
        return peer.local_account_id, "local"

    async def receive_lifecycle(
        self, session: AsyncSession, peer: FederationPeer, link: FederationRemote, body: dict[str, Any], *,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """Apply what the other instance did, as its side: its suspension is its own hold (only it lifts it),
        its revoke is terminal. Nothing here signs on its behalf."""
        action, reason = body.get("action"), body.get("reason")
        if action not in ("suspend", "resume", "revoke") or not isinstance(reason, str) or not reason.strip():
            raise InvalidArgument("lifecycle needs action suspend|resume|revoke and a reason")
        link.last_contact_at = now
        await self._apply_remote(session, peer, link, action, f"{reason.strip()[:400]} (from the other instance)", now)
        return {"status": peer.status}

    async def _apply_remote(
        self, session: AsyncSession, peer: FederationPeer, link: FederationRemote, action: str, reason: str,
        now: dt.datetime,
    ) -> None:
        if peer.status == PeerStatus.REVOKED.value:
            return
        other_id, other_side = self._other_side(peer, link)
        holds = getattr(peer, f"{other_side}_suspended_by") is not None
        actor = f"{link.remote_account_name}@{link.remote_instance_id}"
        kw: dict[str, Any] = {"account_id": other_id, "peer_id": peer.id, "reason": reason, "actor": actor,
                              "now": now, "from_remote": True}
        if action == "revoke":
            await self.revoke(session, **kw)
            link.remote_status = PeerStatus.REVOKED.value
        elif action == "suspend" and not holds and peer.status != PeerStatus.PROPOSED.value:
            await self.suspend(session, **kw)
        elif action == "resume" and holds:
            await self.resume(session, **kw)

    # A poll of the other instance runs in three steps so that no write transaction is open while it dials
    # (on SQLite the unit of work holds the process's single writer): `prepare_poll` reads what it needs in
    # a read session, `dial_poll` talks to the other instance with no session at all, and `apply_poll`
    # re-reads the rows in a short unit of work, drops the answer when they changed meanwhile
    # (compare-and-set; the next poll retries) and applies it.

    async def established(
        self, session: AsyncSession, *, peer_id: int, account_id: int | None = None
    ) -> tuple[FederationPeer, FederationRemote] | None:
        """A peer established on another instance with its link; None when it is not one (a Conflict, or
        NotFound when invisible, when a caller's account asked for it)."""
        peer = (
            await peers.visible(session, account_id, peer_id)
            if account_id is not None
            else await session.get(FederationPeer, peer_id)
        )
        link = await self.remote.remote_of(session, peer_id) if peer is not None else None
        if peer is None or link is None or link.remote_peer_id is None or link.outbound_channel_cert_pem is None:
            if account_id is not None:
                raise Conflict(
                    f"federation peer {peer_id} is not an established peer on another instance",
                    hint="only peers accepted across instances have a bundle to refresh",
                    federation_peer_id=peer_id,
                )
            return None
        return peer, link

    async def prepare_poll(
        self, session: AsyncSession, *, peer_id: int, account_id: int | None = None, push_only: bool = False
    ) -> RemotePoll | None:
        """What a poll of one peer needs before it dials (a read session is enough); None when the peer is not
        established on another instance (a Conflict when a caller's account asked for it). With `push_only`
        the poll delivers the pending lifecycle change and fetches no bundle (None when nothing is pending)."""
        found = await self.established(session, peer_id=peer_id, account_id=account_id)
        if found is None:
            return None
        peer, link = found
        if push_only and not link.pending_action:
            return None
        return RemotePoll(
            peer_id=peer.id,
            state=_poll_state(peer, link),
            pending=(link.pending_action, link.pending_reason or "") if link.pending_action else None,
            push_only=push_only,
            channel=await self._channel(session, link),
        )

    async def dial_poll(self, poll: RemotePoll) -> RemotePoll:
        """The network half of a poll, outside any transaction: deliver the pending lifecycle change, then
        fetch the bundle (not for a revoked peer). Failures are kept on the poll, never raised."""
        if poll.pending is not None:
            action, reason = poll.pending
            try:
                poll.pushed = await poll.channel.call("POST", "lifecycle", {"action": action, "reason": reason})
            except ExternalError as exc:
                poll.pushed = (0, {"error": {"code": "unreachable", "message": exc.message}})
        if poll.push_only or poll.state[0] == PeerStatus.REVOKED.value:
            return poll
        try:
            poll.bundle = await poll.channel.call("GET", "bundle", None)
        except ExternalError as exc:
            poll.bundle_error = exc
        return poll

    async def apply_poll(self, session: AsyncSession, poll: RemotePoll, *, now: dt.datetime | None = None) -> str:
        """Apply a dialed poll in the caller's unit of work. Returns what happened: ok | unreachable | refused |
        wrong_trust_domain | sequence_backwards | malformed | revoked | not_remote | changed (the peer or its
        link changed while the poll was on the wire: its answer is dropped and the next poll asks again)."""
        now = now or utcnow()
        peer = await session.get(FederationPeer, poll.peer_id, populate_existing=True)
        link = await self.remote.remote_of(session, poll.peer_id) if peer is not None else None
        if peer is None or link is None:
            return "not_remote"
        if poll.pushed is not None and poll.pending == (link.pending_action, link.pending_reason or ""):
            self._record_push(link, poll.pending[0], poll.pending[1], *poll.pushed, now=now)
            await session.flush()
        if _poll_state(peer, link) != poll.state:
            return "changed"
        if poll.push_only:
            return link.last_error_kind or "ok"
        if peer.status == PeerStatus.REVOKED.value:
            return "revoked"

        def fail(kind: str, message: str) -> str:
            link.last_error_kind, link.last_error = kind, message[:500]
            return kind

        if poll.bundle_error is not None:
            exc = poll.bundle_error
            result = fail("malformed" if exc.subject.get("wire_code") else "unreachable", exc.message)
            await session.flush()
            return result
        assert poll.bundle is not None
        status, answer = poll.bundle
        if status != 200:
            code = str((answer.get("error") or {}).get("code", status))
            result = fail("refused", f"the other instance refused the bundle request ({code})")
            await session.flush()
            return result
        try:
            trust_domain = str(answer["trust_domain"]).lower()
            sequence = int(answer["sequence"])
            remote_status = str(answer["status"])
            sender_holds = bool(answer.get("suspended_by_sender", False))
            root_pem, inter_pem = str(answer["root_pem"]), str(answer["intermediate_pem"])
            remote_mod._check_ca_pair(root_pem, inter_pem)
            PeerStatus(remote_status)
        except (KeyError, TypeError, ValueError, remote_mod.Refusal):
            result = fail("malformed", "the other instance sent a bundle that is not well formed")
            await session.flush()
            return result
        if trust_domain != link.remote_domain.lower():
            result = fail("wrong_trust_domain", f"the bundle is for trust domain {trust_domain!r}, not {link.remote_domain!r}")
            await session.flush()
            return result
        if sequence < link.bundle_sequence:
            result = fail("sequence_backwards", f"bundle sequence went backwards ({link.bundle_sequence} → {sequence})")
            await session.flush()
            return result
        link.remote_status, link.last_contact_at = remote_status, now
        link.bundle_fetched_at, link.last_error, link.last_error_kind = now, None, None
        hint = answer.get("refresh_hint")
        link.refresh_hint = max(30, min(3600, int(hint))) if isinstance(hint, int) else link.refresh_hint
        if remote_status == PeerStatus.REVOKED.value:
            await self._apply_remote(session, peer, link, "revoke", "revoked on the other instance", now)
            await session.flush()
            return "revoked"
        _, other_side = self._other_side(peer, link)
        holds = getattr(peer, f"{other_side}_suspended_by") is not None
        if sender_holds and not holds:
            await self._apply_remote(session, peer, link, "suspend", "suspended on the other instance", now)
        elif holds and not sender_holds:
            await self._apply_remote(session, peer, link, "resume", "resumed on the other instance", now)
        if sequence > link.bundle_sequence:
            other_id, _ = self._other_side(peer, link)
            ca = await self.authorities.get(session, other_id)
            rotated = ca is not None and ca.intermediate_cert_pem.strip() != inter_pem.strip()
            crl = answer.get("intermediate_crl_pem") if isinstance(answer.get("intermediate_crl_pem"), str) else None
            await self.remote.store_remote_ca(session, other_id, root_pem, inter_pem, crl)
            link.bundle_sequence = sequence
            if rotated and peer.status in {s.value for s in TRUSTED_STATUSES}:
                # The other side rotated its intermediate: re-sign the new one, retire the old cross cert.
                for old in (
                    await session.execute(
                        select(IssuedCertificate).where(
                            IssuedCertificate.peer_id == peer.id,
                            IssuedCertificate.account_id == link.local_account_id,
                            IssuedCertificate.revoked_at.is_(None),
                            IssuedCertificate.superseded_at.is_(None),
                        )
                    )
                ).scalars():
                    old.superseded_at = now
                await self.remote.cross_sign_local(session, peer, link, now=now)
                await peers.emit_both(session, peer, "federation.remote_ca_rotated", payload={"sequence": sequence})
        await session.flush()
        return "ok"

    async def verify_remote_handshake(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peer_id: int,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> HandshakeOut:
        """A real mutual-TLS handshake between a fresh node of this instance's account (client, trusting only
        its own bundle) and a fresh node of the other instance's account (server, trusting only its bundle),
        served by the other instance's federation endpoint under an SNI name it hands out over the channel.
        Success on both ends makes the peer active on both instances."""
        now = now or utcnow()
        peer = await peers.visible(session, account_id, peer_id)
        link = await self.remote.remote_of(session, peer_id)
        assert link is not None
        if link.remote_peer_id is None or link.outbound_channel_cert_pem is None:
            raise Conflict(
                f"federation peer {peer.id} is not established yet; there is nothing to verify",
                hint="the remote instance accepts it first",
                federation_peer_id=peer.id,
            )
        local = await accounts.by_id(session, link.local_account_id)
        other_id, _ = self._other_side(peer, link)
        other_name = (await accounts.by_id(session, other_id)).name
        node = await self.verifier.probe_identity(session, local, peer, now, correlation_id)
        error: str | None = None
        try:
            status, answer = await self._channel_call(session, link, "POST", "probe", {})
            server_name = str(answer.get("server_name", "")) if status == 200 else ""
            if not server_name:
                code = (answer.get("error") or {}).get("code", status)
                raise ExternalError(f"the other instance did not serve a probe ({code})")
            assert link.remote_endpoint is not None
            status, answer = await wire.call(
                link.remote_endpoint,
                "GET",
                f"{remote_mod.API}/probe/{server_name}",
                None,
                ctx=handshake.build_context(node, server=False),
                server_hostname=server_name,
            )
            if status != 200 or answer.get("ok") is not True:
                error = f"{other_name} (server) rejected {local.name}: {(answer.get('error') or {}).get('message')}"
        except ExternalError as exc:
            error = exc.message
        ok = error is None
        direction = DirectionOut(from_=local.name, to=other_name, ok=ok, error=error, tls_version=None)
        if ok:
            peer.last_handshake_at, peer.last_handshake_error = now, None
            if peer.status == PeerStatus.ACCEPTED.value:
                peer.status = check_action(peer.status, "activate", peer_id=peer.id)
                kind, severity = "federation.peer_activated", "info"
            elif peer.status in {s.value for s in TRUSTED_STATUSES}:
                kind, severity = "federation.handshake_verified", "info"
            else:
                kind, severity = "federation.revoked_but_trusted", "critical"
        else:
            peer.last_handshake_error = error
            kind = "federation.handshake_failed"
            severity = "high" if peer.status in {s.value for s in TRUSTED_STATUSES} else "info"
        await session.flush()
        await peers.emit_both(
            session, peer, kind, severity=severity, payload={"ok": ok, "error": error}, correlation_id=correlation_id
        )
        return HandshakeOut(ok=ok, directions=[direction], federation_peer=await peers.to_out(session, peer, now=now))

    async def record_remote_handshake(
        self, session: AsyncSession, peer: FederationPeer, *, now: dt.datetime
    ) -> None:
        """The other instance's node completed a verified handshake with one of ours (server side)."""
        peer.last_handshake_at, peer.last_handshake_error = now, None
        if peer.status == PeerStatus.ACCEPTED.value:
            peer.status = check_action(peer.status, "activate", peer_id=peer.id)
            await peers.emit_both(session, peer, "federation.peer_activated")
        await session.flush()

    # -- governance and renewal ------------------------------------------------------------------

    async def scan(
        self, session: AsyncSession, *, account_id: int, now: dt.datetime | None = None
    ) -> ScanOut:
        """Governance findings for every peer the account is a side of."""
        now = now or utcnow()
        rows = (
            (
                await session.execute(
                    select(FederationPeer).where(peers.involving(account_id)).order_by(FederationPeer.id)
                )
            )
            .scalars()
            .all()
        )
        ids = [p.id for p in rows]
        certs = (
            (
                await session.execute(
                    select(IssuedCertificate).where(
                        IssuedCertificate.kind == "cross", IssuedCertificate.peer_id.in_(ids)
                    )
                )
            )
            .scalars()
            .all()
            if ids
            else []
        )
        account_ids = {account_id} | {p.local_account_id for p in rows} | {p.remote_account_id for p in rows}
        accts = (
            await session.execute(
                select(Account.id, Account.name, Account.federation_domain).where(Account.id.in_(account_ids))
            )
        ).all()
        failures = await self.acceptance.account_failures(session, account_id, now)
        remotes = (
            (await session.execute(select(FederationRemote).where(FederationRemote.peer_id.in_(ids)))).scalars().all()
            if ids
            else []
        )
        findings = governance.scan_peers(
            rows,
            certs,
            now=now,
            account_names={i: n for i, n, _ in accts},
            account_domains={i: d for i, _, d in accts},
            account_failures={account_id: failures},
            thresholds=self.config.scan,
            remotes={r.peer_id: r for r in remotes},
        )
        return ScanOut(
            findings=findings,
            finding_count=len(findings),
            severity_summary=governance.severity_summary(findings),
        )

    async def renew_cross_certificates(self, session: AsyncSession, now: dt.datetime | None = None) -> int:
        """Scheduler job: re-sign cross certificates past half their life while their peer is trusted, and
        re-sign CRLs past half theirs. Returns how many cross certificates were renewed."""
        now = now or utcnow()
        due = (
            (
                await session.execute(
                    select(IssuedCertificate)
                    .join(FederationPeer, FederationPeer.id == IssuedCertificate.peer_id)
                    .where(
                        IssuedCertificate.kind == "cross",
                        IssuedCertificate.revoked_at.is_(None),
                        IssuedCertificate.superseded_at.is_(None),
                        IssuedCertificate.not_after <= now + self.config.renew_when_left,
                        FederationPeer.status.in_([s.value for s in TRUSTED_STATUSES]),
                    )
                    .order_by(IssuedCertificate.id)
                )
            )
            .scalars()
            .all()
        )
        touched: set[int] = set()
        for old in due:
            peer = await session.get(FederationPeer, old.peer_id)
            assert peer is not None and old.subject_account_id is not None
            new = await self.authorities.cross_sign(
                session, signer_id=old.account_id, subject_id=old.subject_account_id, peer=peer, now=now
            )
            old.superseded_at = now
            if old.account_id == peer.local_account_id:
                peer.local_cross_serial = new.serial
            else:
                peer.remote_cross_serial = new.serial
            touched.add(old.account_id)
            await session.flush()
            await peers.emit_both(
                session,
                peer,
                "federation.cross_certificate_renewed",
                payload={
                    "old_serial": old.serial,
                    "new_serial": new.serial,
                    "not_after": new.not_after.isoformat(),
                },
            )
        for account_id in sorted(touched):
            await self.authorities.refresh_bundle(session, account_id)
        for ca in (await session.execute(select(CertificateAuthority))).scalars().all():
            await self.authorities.refresh_stale_crls(session, ca, now)
        return len(due)
