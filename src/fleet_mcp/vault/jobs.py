"""Scheduler job: take over pepper rotations whose process stopped, crashed or drained.

Every replica runs this tick (every `FLEET_MCP_JOB_TAKEOVER_INTERVAL` seconds; on PostgreSQL one replica
at a time, under the tick's advisory lock). It looks for active jobs nobody holds: pending ones without an
owner (planned but never started, or released by a draining replica), and running ones whose owner is
dead (same host) or whose heartbeat is older than the lease (`FLEET_MCP_JOB_LEASE_SECONDS`); a job planned
less than one interval ago and never started is left to the call that planned it. It launches
each in this process's background; the launch claims the job by compare-and-set (`lease.claim`), so two
replicas never run one job, and audits the takeover as `system/<instance id>`. An abandoned job is thus
resumed within lease + tick interval. A paused job (Vault down, an error) waits for an explicit resume,
except on the first tick after this process starts, which resumes paused jobs too. On SQLite (one process)
the same code finds the jobs a previous run of the process left behind.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from fleet_mcp.db.base import utcnow
from fleet_mcp.scheduler import job

log = logging.getLogger(__name__)

_first_tick_done = False


@job("vault.resume_rotations", lambda app: float(app.settings.job_takeover_interval))
async def resume_rotations(app: Any) -> int:
    """Launch every abandoned job here (see the module); returns how many were launched. Wait for them
    with `app.drain()`."""
    global _first_tick_done
    if app.transit is None or app.sessionmaker is None or app.draining:
        return 0
    from fleet_mcp.vault import lease
    from fleet_mcp.vault.models import RotationJob
    from fleet_mcp.vault.rotation import RotationEngine

    include_paused = not _first_tick_done
    _first_tick_done = True
    statuses = ("pending", "running", "paused") if include_paused else ("pending", "running")
    engine = RotationEngine(app, app.transit, batch_size=app.settings.rotation_batch_size)
    async with app.read_sessionmaker() as s:
        jobs = (
            await s.execute(select(RotationJob).where(RotationJob.status.in_(statuses)).order_by(RotationJob.id))
        ).scalars().all()
    launched = 0
    interval = float(app.settings.job_takeover_interval)
    for j in jobs:
        if lease.running_here(j.id) or not (j.status == "paused" or lease.is_abandoned(j, engine.stale_after)):
            continue
        if j.status == "pending" and j.started_at is None and (utcnow() - j.created_at).total_seconds() < interval:
            continue  # just planned: the call that planned it launches it after its commit
        log.info("rotation job %s (%s, owner %s) is taken over here", j.id, j.status, j.owner or "none")
        engine.launch(j.id, takeover=True)
        launched += 1
    return launched
