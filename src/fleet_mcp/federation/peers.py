"""Federation peers as the caller sees them: visibility, result shapes (never a token), inputs and events."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp import events
from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import InvalidArgument, NotFound
from fleet_mcp.federation import accounts, pki
from fleet_mcp.federation.lifecycle import PeerStatus, allowed_transitions
from fleet_mcp.federation.models import FederationPeer, FederationRemote, IssuedCertificate
from fleet_mcp.federation.schemas import CrossCertificateOut, FederationPeerOut, RemoteInstanceOut

log = logging.getLogger(__name__)

MAX_PREFIXES = 64
MAX_REASON = 500


def normalize_prefixes(value: str | Sequence[str] | None) -> list[str] | None:
    """CIDR prefixes from a comma/space separated string or a list; refuse anything that is not a prefix."""
    if value is None:
        return None
    items = value.replace(",", " ").split() if isinstance(value, str) else [str(v).strip() for v in value]
    items = [i for i in items if i]
    if not items:
        return None
    if len(items) > MAX_PREFIXES:
        raise InvalidArgument(f"too many prefixes ({len(items)})", hint=f"advertise at most {MAX_PREFIXES}")
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise InvalidArgument(
                f"{item!r} is not an IP prefix", prefix=item, hint="use CIDR notation such as 10.20.0.0/16"
            ) from None
    return out


def check_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise InvalidArgument("a reason is required", hint="say why, e.g. 'link decommissioned'")
    return reason[:MAX_REASON]


def involving(account_id: int) -> Any:
    return or_(FederationPeer.local_account_id == account_id, FederationPeer.remote_account_id == account_id)


async def visible(session: AsyncSession, account_id: int, peer_id: int) -> FederationPeer:
    """The peer if `account_id` is one of its two sides; otherwise it does not exist for the caller."""
    peer = await session.get(FederationPeer, peer_id)
    if peer is None or account_id not in (peer.local_account_id, peer.remote_account_id):
        raise NotFound(
            f"federation peer {peer_id} does not exist for this account",
            federation_peer_id=peer_id,
            hint="list peers with system_sdwan_list_federation_peers",
        )
    return peer


def side_of(peer: FederationPeer, account_id: int) -> str:
    """'local' (the proposing account) or 'remote' (the accepting one)."""
    return "local" if account_id == peer.local_account_id else "remote"


def suspension_holders(peer: FederationPeer) -> list[tuple[int, str]]:
    """(account id, principal) of each side that holds a suspension, proposing side first."""
    held = [(peer.local_account_id, peer.local_suspended_by), (peer.remote_account_id, peer.remote_suspended_by)]
    return [(a, by) for a, by in held if by is not None]


def _cert_state(c: IssuedCertificate, now: dt.datetime) -> str:
    if c.revoked_at:
        return "revoked"
    if c.superseded_at:
        return "superseded"
    return "expired" if c.not_after <= now else "current"


async def cross_certificates(
    session: AsyncSession, peer: FederationPeer, *, now: dt.datetime, names: dict[int, str]
) -> list[CrossCertificateOut]:
    certs = (
        (
            await session.execute(
                select(IssuedCertificate)
                .where(IssuedCertificate.peer_id == peer.id, IssuedCertificate.kind == "cross")
                .order_by(IssuedCertificate.id)
            )
        )
        .scalars()
        .all()
    )
    return [
        CrossCertificateOut(
            signed_by=names.get(c.account_id, str(c.account_id)),
            signed_for=names.get(c.subject_account_id or 0, str(c.subject_account_id)),
            serial=c.serial,
            not_before=c.not_before,
            not_after=c.not_after,
            name_constraints=list(c.name_constraints or []),
            state=_cert_state(c, now),
            revoked_at=c.revoked_at,
        )
        for c in certs
    ]


async def to_out(
    session: AsyncSession, peer: FederationPeer, *, now: dt.datetime | None = None
) -> FederationPeerOut:
    """The peer for results: status, transitions, timestamps, cross certificates — no token, no digest."""
    now = now or utcnow()
    names = await accounts.names(session, [peer.local_account_id, peer.remote_account_id])
    return FederationPeerOut(
        id=peer.id,
        local_account=names[peer.local_account_id],
        remote_account=names[peer.remote_account_id],
        status=peer.status,
        allowed_transitions=allowed_transitions(peer.status),
        remote_prefix_advertisement=peer.remote_prefix_advertisement,
        proposed_at=peer.proposed_at,
        proposed_by=peer.proposed_by,
        accepted_at=peer.accepted_at,
        accepted_by=peer.accepted_by,
        last_handshake_at=peer.last_handshake_at,
        last_handshake_error=peer.last_handshake_error,
        token_expires_at=peer.token_expires_at if peer.status == PeerStatus.PROPOSED.value else None,
        failed_attempts=peer.failed_attempts,
        locked_until=peer.locked_until,
        suspended_at=peer.suspended_at,
        suspended_reason=peer.suspended_reason,
        suspended_by=[names[a] for a, by in suspension_holders(peer)],
        revoked_at=peer.revoked_at,
        revoked_reason=peer.revoked_reason,
        cross_certificates=await cross_certificates(session, peer, now=now, names=names),
        remote_instance=await remote_instance(session, peer),
    )


async def remote_instance(session: AsyncSession, peer: FederationPeer) -> RemoteInstanceOut | None:
    """The other instance of a peer federated across instances, or None (both accounts live here)."""
    link = (
        await session.execute(select(FederationRemote).where(FederationRemote.peer_id == peer.id))
    ).scalar_one_or_none()
    if link is None:
        return None
    not_after = None
    if link.outbound_channel_cert_pem:
        with contextlib.suppress(ValueError):
            not_after = pki.load_cert(link.outbound_channel_cert_pem).not_valid_after_utc
    return RemoteInstanceOut(
        instance_id=link.remote_instance_id,
        account=link.remote_account_name,
        domain=link.remote_domain,
        endpoint=link.remote_endpoint,
        ca_pin=link.remote_ca_pin,
        role=link.role,
        remote_peer_id=link.remote_peer_id,
        remote_status=link.remote_status,
        bundle_sequence=link.bundle_sequence,
        bundle_fetched_at=link.bundle_fetched_at,
        refresh_hint=link.refresh_hint,
        last_contact_at=link.last_contact_at,
        last_error_kind=link.last_error_kind,
        last_error=link.last_error,
        pending_action=link.pending_action,
        channel_certificate_not_after=not_after,
    )


async def emit_both(
    session: AsyncSession,
    peer: FederationPeer,
    kind: str,
    *,
    severity: str = "info",
    payload: dict[str, Any] | None = None,
    correlation_id: str | None = None,
) -> None:
    """One event per side of the peer, so both accounts' operators see it."""
    body = {"federation_peer_id": peer.id, "status": peer.status, **(payload or {})}
    for account_id in dict.fromkeys((peer.local_account_id, peer.remote_account_id)):
        await events.emit(
            session,
            account_id=account_id,
            kind=kind,
            severity=severity,
            payload=body,
            correlation_id=correlation_id,
        )
    log.info("federation peer %s: %s (now %s)", peer.id, kind, peer.status)
