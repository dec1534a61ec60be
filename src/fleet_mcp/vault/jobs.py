"""Scheduler job: resume pepper rotations that a stopped or crashed server left behind."""

from __future__ import annotations

import logging
from typing import Any

from fleet_mcp.scheduler import job

log = logging.getLogger(__name__)

RESUME_INTERVAL = 60.0
_first_tick_done = False


@job("vault.resume_rotations", lambda app: RESUME_INTERVAL)
async def resume_rotations(app: Any) -> int:
    """On the first tick after start, resume pending, paused and abandoned jobs; later ticks pick up only
    pending and abandoned ones (a paused job waits for its cause to be fixed and an explicit resume)."""
    global _first_tick_done
    if app.transit is None or app.sessionmaker is None:
        return 0
    from fleet_mcp.vault.rotation import resume_interrupted

    include_paused = not _first_tick_done
    _first_tick_done = True
    jobs = await resume_interrupted(
        app, app.transit, include_paused=include_paused, batch_size=app.settings.rotation_batch_size
    )
    for j in jobs:
        log.info("resumed rotation job %s: %s", j.id, j.status)
    return len(jobs)
