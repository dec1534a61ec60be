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
            before = (await session.get(FederationPeer, peer_id)).status  # type: ignore[union-attr]
            outcome = await svc.refresh_remote(session, peer_id=peer_id)
            after = (await session.get(FederationPeer, peer_id)).status  # type: ignore[union-attr]
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
