"""Crash safety: a real process rotating 20k credentials is SIGKILLed at named points, then resumed.

The worker (crash_worker.py) announces each checkpoint of the engine and waits; the test kills it exactly
there — between planning and rotating, between rotating and recording the rotation, before and after a
batch commit, after an account, before the end — never after a guessed delay. After every kill the key
was rotated at most once and agrees with the job (rotated ⇔ recorded), the job's counters match the rows
actually on the target version (progress and rows commit together), and nothing reported as committed is
lost. At the end every secret decrypts to its original, all rows are on the target version, and the audit
chain verifies."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fleet_mcp import audit
from fleet_mcp.db.base import Base
from fleet_mcp.db.engine import create_engine, make_sessionmaker
from fleet_mcp.db.models import Account, AuditEntry
from fleet_mcp.vault.models import Credential, RotationJob, TransitKeyConfig
from fleet_mcp.vault.transit import load_or_create_master_key
from fleet_mcp.vault.transit.local import LocalTransit
from tests.vault.vault_helpers import make_account, plaintexts_of, secret_for, seed

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = Path(__file__).with_name("crash_worker.py")
ROWS = {"acme": 12_000, "globex": 8_000}
BATCH = 250


class Worker:
    """One run of the worker process, driven event by event."""

    def __init__(self, db: Path, key: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(db), str(key), str(BATCH)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.reported = -1  # work the worker said was committed
        self.events: list[str] = []

    def run_until(self, prefix: str | None, nth: int = 1) -> bool:
        """Let the worker run; SIGKILL it at the `nth` checkpoint whose name starts with `prefix` (None:
        never). True if it was killed there, False if it ended first."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        seen = 0
        for line in self.proc.stdout:
            if line.startswith("P "):
                self.reported = max(self.reported, int(line.split()[1]))
            elif line.startswith("E "):
                name = line[2:].strip()
                self.events.append(name)
                if prefix is not None and name.startswith(prefix):
                    seen += 1
                    if seen == nth:
                        self.proc.send_signal(signal.SIGKILL)
                        self.proc.wait(timeout=60)
                        return True
                self.proc.stdin.write("go\n")
                self.proc.stdin.flush()
        self.proc.wait(timeout=60)
        return False

    def finish(self) -> tuple[int, str]:
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()


async def snapshot(sm) -> tuple[RotationJob | None, int, int]:  # noqa: ANN001
    """The active or last job, rows already on its target, and the latest key version."""
    async with sm() as s:
        job = (await s.execute(select(RotationJob).order_by(RotationJob.id.desc()).limit(1))).scalar_one_or_none()
        on_target = 0
        if job is not None and job.to_version is not None:
            on_target = (
                await s.execute(
                    select(func.count()).select_from(Credential).where(Credential.key_version >= job.to_version)
                )
            ).scalar_one()
        latest = (await s.execute(select(TransitKeyConfig.latest_version))).scalar_one()
    return job, on_target, latest


async def test_sigkill_at_random_points_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    key = tmp_path / "master.key"
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sm = make_sessionmaker(engine)
    transit = LocalTransit(sm, load_or_create_master_key(key))
    await transit.ensure_key()
    accounts = {name: await make_account(sm, name) for name in ROWS}
    for name, n in ROWS.items():
        await seed(sm, transit, accounts[name], n)
    total = sum(ROWS.values())

    rng = random.Random()
    seed_used = rng.randrange(2**32)
    rng.seed(seed_used)
    # Every dangerous gap once, in order, then random batch-level points.
    plan: list[tuple[str, int]] = [
        ("after-intent", 1),  # planned and committed, nothing rotated
        ("after-claim", 1),
        ("after-rotate", 1),  # rotated inside the unit of work that records it, not yet committed
        ("after-rotation-recorded", 1),
        ("before-batch-commit-", rng.randint(1, 10)),  # rewrapped, not yet committed
        ("after-batch-", rng.randint(1, 10)),  # committed, not yet reported
        ("before-batch-commit-", rng.randint(1, 10)),
        ("after-account-acme", 1),
        ("before-end", 1),
    ]
    history: list[list[str]] = []
    committed = 0  # what the job had committed before this run
    for prefix, nth in plan:
        w = Worker(db, key)
        killed = w.run_until(prefix, nth)
        history.append(w.events)
        code, err = w.finish()
        assert killed, (seed_used, prefix, nth, code, err[-2000:], w.events[-5:])
        assert code == -signal.SIGKILL
        job, on_target, latest = await snapshot(sm)
        assert job is not None, (seed_used, prefix)  # the intent was committed before the first checkpoint
        assert latest <= 2, f"the key was rotated more than once (seed {seed_used}, killed at {prefix})"
        # Rotated exactly when recorded: the rotation and the job's record commit together.
        assert latest == (1 if job.to_version is None else 2), (seed_used, prefix, job.to_version, latest)
        assert job.target_version == 2
        # Progress and rows commit together: the counters are exactly what is on the target version.
        assert job.rewrapped == on_target, (seed_used, prefix)
        # Nothing committed before or reported as committed was lost; at most the batch in flight (not yet
        # reported) landed.
        known = max(w.reported, committed)
        assert known <= job.rewrapped + job.failed <= known + BATCH, (seed_used, prefix, known, job.rewrapped)
        committed = job.rewrapped + job.failed

    w = Worker(db, key)
    assert not w.run_until(None)
    code, err = w.finish()
    assert code == 0, err[-2000:]
    job, on_target, latest = await snapshot(sm)
    assert job is not None and job.status == "completed"
    assert (job.to_version, latest) == (2, 2)
    assert (job.rewrapped, job.failed, job.skipped, on_target) == (total, 0, 0, total)
    for name, n in ROWS.items():
        plain = await plaintexts_of(sm, transit, accounts[name])
        assert plain == {f"cred-{i:06d}": secret_for(accounts[name], i) for i in range(n)}
    async with sm() as s:
        versions = (await s.execute(select(Account.transit_key_version))).scalars().all()
        assert set(versions) == {2}
        result = await audit.verify(s)
        assert result.ok, result
        outcomes = (
            (await s.execute(select(AuditEntry.outcome).where(AuditEntry.tool == "system_rotate_vault_transit_pepper")))
            .scalars()
            .all()
        )
    # The key was rotated once; the runs after that adopted nothing (the rotation was recorded with it).
    assert outcomes.count("rotated") == 1 and "rotation_adopted" not in outcomes
    await transit.close()
    await engine.dispose()
