"""Talking to another instance without holding a write transaction: each poll, lifecycle push and channel
renewal reads what it needs in a read session, dials with no session open, then applies the answer in a
short audited unit of work that first checks the rows did not change meanwhile (docs/federation-protocol.md,
"Where the work runs"). On SQLite the unit of work holds the process's single writer, so a slow or hanging
instance must never be waited for inside one."""

from __future__ import annotations

import logging
from typing import Any

from fleet_mcp import audit
from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import ExternalError
from fleet_mcp.federation.models import FederationPeer

log = logging.getLogger(__name__)


async def poll_peer(
    app: Any, svc: Any, peer_id: int, *, push_only: bool = False, principal: str = "system/scheduler",
    account: str = "*", tool: str = "federation.refresh_remote_bundles", always_audit: bool = False,
) -> str:
    """One poll of a peer's other instance (with `push_only`, just the delivery of its pending lifecycle
    change). Audited when it changed anything or failed (always with `always_audit`)."""
    async with app.read_sessionmaker() as read:  # never committed; the engine refuses writes
        poll = await svc.prepare_poll(read, peer_id=peer_id, push_only=push_only)
    if poll is None:
        return "not_remote" if not push_only else "nothing_pending"
    await svc.dial_poll(poll)
    async with app.unit_of_work() as uow:
        session = uow.session
        outcome = await svc.apply_poll(session, poll)
        row = await session.get(FederationPeer, peer_id)
        after = row.status if row is not None else None
        if always_audit or outcome != "ok" or after != poll.state[0]:
            await audit.append(
                session,
                principal=principal,
                account=account,
                tool=tool,
                arguments={"federation_peer_id": peer_id},
                decision="scheduled" if principal == "system/scheduler" else "after_commit",
                outcome="ok" if outcome in ("ok", "revoked", "changed") else "error",
                detail={"outcome": outcome, "status": after},
            )
    return outcome


async def renew_channel(app: Any, svc: Any, peer_id: int) -> bool | None:
    """Renew our channel certificate for one peer if it is due: True renewed, False failed (recorded on the
    link), None not due or the link changed while the renewal was on the wire (the next run retries)."""
    now = utcnow()
    async with app.read_sessionmaker() as read:
        link = await svc.remote.remote_of(read, peer_id)
        if link is None or not svc.remote.channel_renewal_due(link, now):
            return None
        renewal = await svc.remote.prepare_renewal(read, link)
    error: ExternalError | None = None
    try:
        cert, key_pem = await svc.remote.dial_renewal(renewal, now=now)
    except ExternalError as exc:
        error = exc
    async with app.unit_of_work() as uow:
        session = uow.session
        peer = await session.get(FederationPeer, peer_id)
        link = await svc.remote.remote_of(session, peer_id)
        if peer is None or link is None or link.outbound_channel_cert_pem != renewal.current_cert_pem or (
            peer.status == "revoked"
        ):
            # Renewed or revoked meanwhile: drop this answer. The other instance keeps accepting the certificate
            # we still hold (as the previous one) until the renewed one is first used.
            return None
        if error is not None:
            link.last_error_kind, link.last_error = "channel_renewal_failed", error.message[:500]
            outcome, detail = "error", {"error": error.message}
        else:
            not_after = await svc.remote.store_renewal(session, link, cert, key_pem)
            outcome, detail = "ok", {"not_after": not_after}
        await audit.append(
            session,
            principal="system/scheduler",
            account="*",
            tool="federation.renew_channel_certificates",
            arguments={"federation_peer_id": peer_id},
            decision="scheduled",
            outcome=outcome,
            detail=detail,
        )
    return error is None
