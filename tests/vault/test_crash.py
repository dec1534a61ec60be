"""Crash safety: a real process rotating 20k credentials is SIGKILLed at random points, then resumed.

After every kill, the job's counters must match the rows actually on the target version (progress and
rows commit together) and nothing reported as committed may be lost; at most the batch in flight is
redone. At the end every secret decrypts to its original, all rows are on the target version, the key
was rotated exactly once, and the audit chain verifies."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fleet_mcp import audit
from fleet_mcp.db.base import Base
from fleet_mcp.db.engine import create_engine, make_sessionmaker
from fleet_mcp.db.models import Account
from fleet_mcp.vault.models import Credential, RotationJob
from fleet_mcp.vault.transit import load_or_create_master_key
from fleet_mcp.vault.transit.local import LocalTransit
from tests.vault.vault_helpers import make_account, plaintexts_of, secret_for, seed

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = Path(__file__).with_name("crash_worker.py")
ROWS = {"acme": 12_000, "globex": 8_000}
BATCH = 250


def spawn(db: Path, key: Path, self_kill_at: int | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, str(WORKER), str(db), str(key), str(BATCH)]
    if self_kill_at is not None:
        args.append(str(self_kill_at))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
        from fleet_mcp.vault.models import TransitKeyConfig

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

    rng = random.Random(20240606)
    kills = 0
    plan: list[tuple[str, float]] = [("early", rng.uniform(0.2, 0.9))]  # during start-up / rotate phase
    plan += [("self", rng.randint(2, 12)) for _ in range(2)]  # right after a commit
    plan += [("lines", rng.randint(1, 10)) for _ in range(3)]  # mid-batch, after N committed steps
    for kind, arg in [*plan, ("finish", 0)]:
        proc = spawn(db, key, self_kill_at=int(arg) if kind == "self" else None)
        reported = -1  # work the worker said was committed before we killed it
        assert proc.stdout is not None
        if kind == "early":
            time.sleep(arg)
            proc.send_signal(signal.SIGKILL)
        elif kind == "lines":
            for _ in range(int(arg)):
                line = proc.stdout.readline()
                if not line.startswith("P "):
                    break
                reported = int(line.split()[1])
            time.sleep(rng.uniform(0, 0.01))
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        for line in out.splitlines():
            if line.startswith("P "):
                reported = max(reported, int(line.split()[1]))
        job, on_target, latest = await snapshot(sm)
        if kind == "finish":
            assert proc.returncode == 0, err
            assert "DONE completed" in out
            break
        assert proc.returncode == -signal.SIGKILL, (kind, proc.returncode, err[-2000:])
        kills += 1
        if job is None:
            continue  # killed before the job row was committed
        assert latest <= 2, "the key was rotated more than once"
        # Progress and rows commit together: the counters are exactly what is on the target version.
        assert job.rewrapped == on_target
        # Nothing reported as committed was lost; at most the batch in flight (not yet reported) landed.
        assert job.rewrapped + job.failed >= reported
        assert job.rewrapped + job.failed <= max(reported, 0) + BATCH

    assert kills == len(plan)
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
    await transit.close()
    await engine.dispose()
