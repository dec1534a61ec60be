"""Federation scheduler jobs: renew cross certificates (one short unit of work), poll peers on other instances
and renew channel certificates (dialing with no transaction open)."""

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


async def _remote_peer_ids(app: Any, *where: Any) -> list[int]:
    """Ids of the peers established with another instance (a remote peer id is known), filtered by WHERE."""
    from sqlalchemy import select

    from fleet_mcp.federation.models import FederationPeer, FederationRemote

    async with app.read_sessionmaker() as session:
        rows = await session.execute(
            select(FederationRemote.peer_id)
            .join(FederationPeer, FederationPeer.id == FederationRemote.peer_id)
            .where(FederationRemote.remote_peer_id.is_not(None), *where)
        )
        return list(rows.scalars().all())


@job("federation.refresh_remote_bundles", lambda app: float(getattr(app.settings, "federation_refresh_seconds", 300)))
async def refresh_remote_bundles(app: Any) -> int:
    """Poll every established peer on another instance: pending lifecycle pushes, bundle, status (pull).
    Each dials with no transaction open, then applies in one short unit of work per peer, audited when it
    changed anything; a failure stays on the peer for the scan. Returns how many polls were not `ok`."""
    if app.transit is None:
        return 0
    from fleet_mcp.federation.lifecycle import PeerStatus
    from fleet_mcp.federation.listener import build_service
    from fleet_mcp.federation.models import FederationPeer, FederationRemote
    from fleet_mcp.federation.polling import poll_peer

    svc = build_service(app)
    ids = await _remote_peer_ids(
        app, (FederationPeer.status != PeerStatus.REVOKED.value) | FederationRemote.pending_action.is_not(None))
    changed = 0
    for peer_id in ids:
        if await poll_peer(app, svc, peer_id) != "ok":
            changed += 1
    return changed


def _channel_renew_interval(app: Any) -> float:
    """A twelfth of the channel certificate lifetime (so a renewal at 2/3 of the life has several chances before
    it expires), at least every hour and at most every 5 s."""
    life = float(getattr(app.settings, "federation_channel_cert_seconds", 365 * 86_400))
    return max(5.0, min(3600.0, life / 12))


@job("federation.renew_channel_certificates", _channel_renew_interval)
async def renew_channel_certificates(app: Any) -> int:
    """Renew, over the channel, every channel certificate another instance issued to us that is past two thirds
    of its life (peers not revoked), dialing with no transaction open; then one short audited unit of work per
    peer. A failure keeps the current certificate and is recorded on the link for the scan
    (`channel_cert_expiring`)."""
    if app.transit is None:  # (no listener needed here: the holder only dials the issuer)
        return 0
    from fleet_mcp.federation.lifecycle import PeerStatus
    from fleet_mcp.federation.listener import build_service
    from fleet_mcp.federation.models import FederationPeer, FederationRemote
    from fleet_mcp.federation.polling import renew_channel

    svc = build_service(app)
    ids = await _remote_peer_ids(app, FederationRemote.outbound_channel_cert_pem.is_not(None),
                                 FederationPeer.status != PeerStatus.REVOKED.value)
    renewed = 0
    for peer_id in ids:
        if await renew_channel(app, svc, peer_id):
            renewed += 1
    if renewed:
        log.info("renewed %d federation channel certificate(s)", renewed)
    return renewed
