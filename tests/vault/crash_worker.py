"""Crash-test worker: start (or resume) a pepper rotation on a SQLite file.

It reports on stdout: `P done total message` after every committed step (the job's progress callback),
and `E name` at each of the engine's named checkpoints (after-intent, after-claim, after-rotate,
after-rotation-recorded, before-batch-commit-N, after-batch-N, after-account-NAME, before-end). After an
`E` line it stops until the test answers on stdin: a line to go on, or SIGKILL. The kill point is
therefore an event the worker reached, never a moment on a clock.

usage: python crash_worker.py DB_FILE MASTER_KEY_FILE BATCH_SIZE
"""

from __future__ import annotations

import sys

import anyio
from sqlalchemy import select

from fleet_mcp.db.engine import create_engine, make_sessionmaker
from fleet_mcp.vault.models import JOB_ACTIVE, RotationJob
from fleet_mcp.vault.rotation import RotationEngine
from fleet_mcp.vault.transit import load_or_create_master_key
from fleet_mcp.vault.transit.local import LocalTransit


async def main(db: str, key_file: str, batch: int) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    sm = make_sessionmaker(engine)
    transit = LocalTransit(sm, load_or_create_master_key(key_file))

    async def progress(done: int, total: int, message: str) -> None:
        print(f"P {done} {total} {message}", flush=True)

    async def checkpoint(name: str) -> None:
        print(f"E {name}", flush=True)
        # Block the whole process (on purpose: nothing runs on) until the test says go, or kills us.
        if not sys.stdin.readline():
            raise SystemExit("the test closed stdin")

    rotation = RotationEngine(sm, transit, batch_size=batch, checkpoint=checkpoint)
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
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
