"""Crash-test worker: start (or resume) a pepper rotation on a SQLite file, printing a line after every
committed step. The test kills this process with SIGKILL at random points.

usage: python crash_worker.py DB_FILE MASTER_KEY_FILE BATCH_SIZE [SELF_KILL_AT_STEP]
"""

from __future__ import annotations

import os
import signal
import sys

import anyio
from sqlalchemy import select

from fleet_mcp.db.engine import create_engine, make_sessionmaker
from fleet_mcp.vault.models import JOB_ACTIVE, RotationJob
from fleet_mcp.vault.rotation import RotationEngine
from fleet_mcp.vault.transit import load_or_create_master_key
from fleet_mcp.vault.transit.local import LocalTransit


async def main(db: str, key_file: str, batch: int, self_kill_at: int | None) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    sm = make_sessionmaker(engine)
    transit = LocalTransit(sm, load_or_create_master_key(key_file))
    steps = 0

    async def progress(done: int, total: int, message: str) -> None:
        nonlocal steps
        steps += 1
        print(f"P {done} {total} {message}", flush=True)
        if self_kill_at is not None and steps == self_kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # right after a commit

    rotation = RotationEngine(sm, transit, batch_size=batch)
    async with sm() as s:
        job_id = (await s.execute(select(RotationJob.id).where(RotationJob.status.in_(JOB_ACTIVE)))).scalar()
    if job_id is None:
        job = await rotation.start(started_by="crash-test", progress=progress)
    else:
        job = await rotation.resume(job_id, progress=progress)
    print(f"DONE {job.status} {job.rewrapped} {job.failed}", flush=True)
    await transit.close()
    await engine.dispose()


if __name__ == "__main__":
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), kill_at)
