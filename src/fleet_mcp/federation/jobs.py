"""Scheduler job: renew cross certificates of trusted peers (and refresh CRLs) in one short unit of work."""

from __future__ import annotations

import logging
from typing import Any

from fleet_mcp import audit
from fleet_mcp.scheduler import job

log = logging.getLogger(__name__)

RENEW_INTERVAL = 3600.0


@job("federation.renew_cross_certificates", lambda app: RENEW_INTERVAL)
async def renew_cross_certificates(app: Any) -> int:
    """Re-sign cross certificates past half their life while their peer is accepted or active."""
    if app.transit is None:
        return 0
    from fleet_mcp.federation.config import FederationConfig
    from fleet_mcp.federation.service import FederationService
    from fleet_mcp.vault.credentials import CredentialKeySealer

    svc = FederationService(CredentialKeySealer(app.transit), FederationConfig.from_settings(app.settings))
    async with app.unit_of_work() as uow:
        session = uow.session
        renewed = await svc.renew_cross_certificates(session)
        if renewed:
            await audit.append(
                session,
                principal="system/scheduler",
                account="*",
                tool="federation.renew_cross_certificates",
                arguments={},
                decision="scheduled",
                outcome="ok",
                detail={"renewed": renewed},
            )
    if renewed:
        log.info("renewed %d federation cross certificate(s)", renewed)
    return renewed


@job("federation.refresh_remote_bundles", lambda app: float(getattr(app.settings, "federation_refresh_seconds", 300)))
async def refresh_remote_bundles(app: Any) -> int:
    """Poll every established peer on another instance: pending lifecycle pushes, bundle, status (pull).
    One unit of work per peer, audited when it changed anything; a failure stays on the peer for the scan."""
    if app.transit is None:
        return 0
    from sqlalchemy import select

    from fleet_mcp.federation.lifecycle import PeerStatus
    from fleet_mcp.federation.listener import build_service
    from fleet_mcp.federation.models import FederationPeer, FederationRemote

    svc = build_service(app)
    async with app.read_sessionmaker() as session:
        ids = (
            await session.execute(
                select(FederationRemote.peer_id)
                .join(FederationPeer, FederationPeer.id == FederationRemote.peer_id)
                .where(
                    FederationRemote.remote_peer_id.is_not(None),
                    (FederationPeer.status != PeerStatus.REVOKED.value) | FederationRemote.pending_action.is_not(None),
                )
            )
        ).scalars().all()
    changed = 0
    for peer_id in ids:
        async with app.unit_of_work() as uow:
            session = uow.session
            before = (await session.get(FederationPeer, peer_id)).status
            outcome = await svc.refresh_remote(session, peer_id=peer_id)
            after = (await session.get(FederationPeer, peer_id)).status
            if outcome != "ok" or before != after:
                changed += 1
                await audit.append(
                    session,
                    principal="system/scheduler",
                    account="*",
                    tool="federation.refresh_remote_bundles",
                    arguments={"federation_peer_id": peer_id},
                    decision="scheduled",
                    outcome="ok" if outcome in ("ok", "revoked") else "error",
                    detail={"outcome": outcome, "status": after},
                )
    return changed


def _channel_renew_interval(app: Any) -> float:
    """A twelfth of the channel certificate lifetime (so a renewal at 2/3 of the life has several chances before
    it expires), at least every hour and at most every 5 s."""
    life = float(getattr(app.settings, "federation_channel_cert_seconds", 365 * 86_400))
    return max(5.0, min(3600.0, life / 12))


@job("federation.renew_channel_certificates", _channel_renew_interval)
async def renew_channel_certificates(app: Any) -> int:
    """Renew, over the channel, every channel certificate another instance issued to us that is past two thirds
    of its life (peers not revoked). One audited unit of work per peer; a failure keeps the current certificate
    and is recorded on the link for the scan (`channel_cert_expiring`)."""
    if app.transit is None:  # (no listener needed here: the holder only dials the issuer)
        return 0
    from sqlalchemy import select

    from fleet_mcp.db.base import utcnow
    from fleet_mcp.errors import ExternalError
    from fleet_mcp.federation.lifecycle import PeerStatus
    from fleet_mcp.federation.listener import build_service
    from fleet_mcp.federation.models import FederationPeer, FederationRemote

    svc = build_service(app)
    async with app.read_sessionmaker() as session:
        ids = (
            await session.execute(
                select(FederationRemote.peer_id)
                .join(FederationPeer, FederationPeer.id == FederationRemote.peer_id)
                .where(
                    FederationRemote.remote_peer_id.is_not(None),
                    FederationRemote.outbound_channel_cert_pem.is_not(None),
                    FederationPeer.status != PeerStatus.REVOKED.value,
                )
            )
        ).scalars().all()
    renewed = 0
    for peer_id in ids:
        async with app.unit_of_work() as uow:
            session = uow.session
            link = await svc.remote.remote_of(session, peer_id)
            now = utcnow()
            if link is None or not svc.remote.channel_renewal_due(link, now):
                continue
            try:
                not_after = await svc.remote.renew_outbound(session, link, now=now)
            except ExternalError as exc:
                link.last_error_kind, link.last_error = "channel_renewal_failed", exc.message[:500]
                outcome, detail = "error", {"error": exc.message}
            else:
                renewed += 1
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
    if renewed:
        log.info("renewed %d federation channel certificate(s)", renewed)
    return renewed
