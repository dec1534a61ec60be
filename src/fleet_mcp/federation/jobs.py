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
    async with app.sessionmaker() as session, session.begin():
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
