"""Issue 15 (7): a rotation job survives the replica running it.

Two real `fleet-mcp serve` replicas on one PostgreSQL and one OpenBao (each through a proxy that can hold its
rewrap requests, so the test decides when a replica is stuck mid-job, without sleeping). The replica running
the job is killed (SIGKILL) or drained (SIGTERM) once the job has committed progress; the other replica's
takeover tick resumes the job from its cursor and finishes it: every credential decrypts, all on the latest
key version, the key rotated exactly once, the takeover audited as the system's, the audit chain whole.

In process (SQLite and PostgreSQL): the tick takes over a job whose heartbeat is older than the lease and
leaves a live lease alone; two claims of one abandoned job never both win."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select, text, update

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.engine import create_engine, make_sessionmaker
from fleet_mcp.db.models import Account, AuditEntry
from fleet_mcp.errors import Busy
from fleet_mcp.vault import jobs as vault_jobs
from fleet_mcp.vault import lease
from fleet_mcp.vault.models import Credential, RotationJob
from fleet_mcp.vault.rotation import RotationEngine
from tests.conftest import HttpServer, PostgresServer, call_as, make_caller, run_cli
from tests.issues.test_15_health_and_drain import bao, client, vault_env, wait_for  # noqa: F401 - fixture
from tests.vault.bao_server import OpenBaoServer, vault_transit
from tests.vault.holding_proxy import HoldingProxy
from tests.vault.vault_helpers import seed

pytestmark = pytest.mark.anyio


# -- in process: the tick and the claim ----------------------------------------------------------------
@pytest.fixture
def settings(settings):  # noqa: ANN001
    return settings.model_copy(update={"job_lease_seconds": 5.0})


async def _abandoned_job(app) -> int:  # noqa: ANN001
    ops = await make_caller(app, "acme", "ops", ("admin",))
    for i in range(4):
        assert (await call_as(app, ops, "system_vault_store_credential",
                              {"name": f"c{i}", "kind": "generic", "secret": f"s{i}"})).ok
    job = await RotationEngine(app, app.transit, batch_size=2).start(started_by="acme/ops", run=False)
    return job.id


async def _set_lease(app, job_id: int, owner: str | None, age: float) -> None:  # noqa: ANN001
    async with app.sessionmaker() as s, s.begin():
        await s.execute(update(RotationJob).where(RotationJob.id == job_id).values(
            status="running", owner=owner, heartbeat_at=utcnow() - dt.timedelta(seconds=age)))


async def test_tick_takes_over_a_job_whose_lease_expired_and_leaves_a_live_one(app) -> None:  # noqa: ANN001
    job_id = await _abandoned_job(app)
    elsewhere = "another-host:4242:cafe"  # another host: only the heartbeat tells whether it lives
    await _set_lease(app, job_id, elsewhere, age=1.0)
    vault_jobs._first_tick_done = True
    assert await vault_jobs.resume_rotations(app) == 0  # a live lease (heartbeat younger than 5 s)
    await _set_lease(app, job_id, elsewhere, age=6.0)
    assert await vault_jobs.resume_rotations(app) == 1
    await app.drain()
    async with app.read_sessionmaker() as s:
        job = await s.get(RotationJob, job_id)
        assert job is not None and (job.status, job.rewrapped, job.owner) == ("completed", 4, None)
        rows = (await s.execute(select(AuditEntry).where(AuditEntry.outcome == "taken_over"))).scalars().all()
    assert [r.principal for r in rows] == [f"system/{lease.instance_id()}"]
    assert rows[0].detail["previous_owner"] == elsewhere and rows[0].detail["heartbeat_age_seconds"] >= 5.0
    verified = await call_as(app, await make_caller(app, "acme", "ops", ("admin",)), "system_audit_verify", {})
    assert verified.ok and verified.data["ok"], verified.data


async def test_two_claims_of_one_abandoned_job_never_both_win(app) -> None:  # noqa: ANN001
    job_id = await _abandoned_job(app)
    await _set_lease(app, job_id, "another-host:4242:cafe", age=60.0)

    async def claim(replica: str) -> str:
        try:
            async with app.unit_of_work() as uow:
                claimed = await lease.claim(uow.session, job_id, 5.0, me=replica)
            return f"won from {claimed.previous_owner}"
        except Busy:
            return "busy"

    # Both found the job abandoned; the second claim meets the first one's owner and fresh heartbeat.
    outcomes = await asyncio.gather(claim("replica-a:1:aaaa"), claim("replica-b:2:bbbb"))
    assert sorted(outcomes) == ["busy", "won from another-host:4242:cafe"]


async def test_a_runner_whose_lease_was_taken_stops_at_its_next_batch(app) -> None:  # noqa: ANN001
    """Another replica took the job over while this one still ran it (this one looked dead to it): this
    one's next batch commit matches no row it owns, rolls back whole, and it stops writing."""
    ops = await make_caller(app, "acme", "ops", ("admin",))
    for i in range(6):
        assert (await call_as(app, ops, "system_vault_store_credential",
                              {"name": f"c{i}", "kind": "generic", "secret": f"s{i}"})).ok
    other = "replica-b:2:bbbb"

    async def taken_after_the_first_batch(point: str) -> None:
        if point == "after-batch-1":
            async with app.sessionmaker() as s, s.begin():
                await s.execute(update(RotationJob).values(owner=other, heartbeat_at=utcnow()))

    engine = RotationEngine(app, app.transit, batch_size=2, checkpoint=taken_after_the_first_batch)
    info = await engine.start(started_by="acme/ops")
    assert (info.status, info.batches, info.rewrapped) == ("running", 1, 2)  # the new owner's to finish
    async with app.read_sessionmaker() as s:
        job = await s.get(RotationJob, info.id)
        assert job is not None and job.owner == other
        versions = sorted((await s.execute(select(Credential.key_version))).scalars())
        batches = (await s.execute(select(AuditEntry).where(AuditEntry.outcome == "batch_committed"))).all()
    assert versions == [1, 1, 1, 1, 2, 2] and len(batches) == 1  # the second batch rolled back whole


@pytest.mark.postgres
async def test_the_claim_is_a_compare_and_set(pg_db_url: str, tmp_path: Path) -> None:
    """Two replicas read the job as abandoned at once; the second one's UPDATE waits for the first one's
    commit and then matches no row (owner and heartbeat changed): it is refused, it does not run the job."""
    from fleet_mcp.app import App
    from fleet_mcp.settings import Settings

    app = App(Settings(data_dir=tmp_path / "data", database_url=pg_db_url, scheduler=False, account="acme",
                       principal="alice", roles="admin"))
    await app.start(migrate_db=False)
    try:
        job_id = await _abandoned_job(app)
        await _set_lease(app, job_id, "another-host:4242:cafe", age=60.0)
        first_claimed, commit_first = asyncio.Event(), asyncio.Event()

        async def first() -> str | None:
            async with app.unit_of_work() as uow:
                claimed = await lease.claim(uow.session, job_id, 5.0, me="replica-a:1:aaaa")
                first_claimed.set()
                await commit_first.wait()
            return claimed.previous_owner

        async def second() -> str:
            try:
                async with app.unit_of_work() as uow:
                    await lease.claim(uow.session, job_id, 5.0, me="replica-b:2:bbbb")
            except Busy as exc:
                return exc.message
            return "won"

        a = asyncio.create_task(first())
        await asyncio.wait_for(first_claimed.wait(), 30)
        b = asyncio.create_task(second())  # reads the old owner (a's claim is not committed), then waits

        async def second_waits_on_the_row_lock() -> bool:
            assert app.engine is not None
            async with app.engine.connect() as conn:
                n = await conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                           "current_database() AND wait_event_type = 'Lock'"))
            return bool(n)

        with anyio.fail_after(30):
            while not await second_waits_on_the_row_lock():
                await asyncio.sleep(0.02)
        commit_first.set()
        assert await a == "another-host:4242:cafe"
        assert await b == f"rotation job {job_id} was just claimed by another process"
        async with app.read_sessionmaker() as s:
            job = await s.get(RotationJob, job_id)
            assert job is not None and job.owner == "replica-a:1:aaaa"
    finally:
        await app.close()


# -- real processes: two replicas, one PostgreSQL, one OpenBao -----------------------------------------
N = 40


@pytest.fixture
def replicas_db(postgres_server: PostgresServer) -> Iterator[str]:
    name = "r_" + uuid.uuid4().hex[:12]
    postgres_server.psql(f"CREATE DATABASE {name}")
    yield postgres_server.url(name)


async def _job(url: str) -> RotationJob | None:
    engine = create_engine(url)
    try:
        async with make_sessionmaker(engine)() as s:
            return (await s.execute(select(RotationJob).order_by(RotationJob.id.desc()).limit(1))).scalar_one_or_none()
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.openbao
@pytest.mark.parametrize("stop", ["sigkill", "sigterm"])
async def test_a_rotation_survives_the_replica_running_it(
    stop: str, bao: OpenBaoServer, replicas_db: str, tmp_path: Path  # noqa: F811
) -> None:
    key = f"pepper-{uuid.uuid4().hex[:10]}"
    # Each replica reaches OpenBao through its own proxy; whichever runs the job is held after two rewraps.
    proxies = [HoldingProxy(bao.port, f"/transit/rewrap/{key}".encode(), hold_after=2) for _ in range(2)]
    short = {"FLEET_MCP_JOB_LEASE_SECONDS": "3", "FLEET_MCP_JOB_TAKEOVER_INTERVAL": "0.5",
             "FLEET_MCP_DRAIN_TIMEOUT": "60"}
    data = tmp_path / "data"  # one data dir: the replicas share the audit digest key
    envs = [vault_env(data, replicas_db, p, key, **short) for p in proxies]
    run_cli(envs[0], "db", "upgrade")
    run_cli(envs[0], "account", "create", "acme")
    token = run_cli(envs[0], "token", "create", "--account", "acme", "--name", "ops", "--role", "admin"
                    ).stdout.strip().splitlines()[-1]
    engine = create_engine(replicas_db)
    transit = vault_transit(bao, key)
    try:
        sm = make_sessionmaker(engine)
        async with sm() as s:
            acme = (await s.execute(select(Account.id).where(Account.name == "acme"))).scalar_one()
        await seed(sm, transit, acme, N)
    finally:
        await transit.close()
        await engine.dispose()
    servers = [HttpServer(env) for env in envs]
    try:
        async with client(servers[0].url, token) as c:
            r = await c.call_tool("system_rotate_vault_transit_pepper", {"wait": False, "batch_size": 5})
            assert not r.is_error, r.content

        def running() -> RotationJob | None:
            job = anyio.from_thread.run(_job, replicas_db)
            if job is None or job.owner is None or job.batches < 1:
                return None
            pid = int(job.owner.split(":")[1])
            owner = next(i for i, s in enumerate(servers) if s.proc.pid == pid)
            return job if proxies[owner].held.is_set() else None

        job = await anyio.to_thread.run_sync(wait_for, running, "the job to commit a batch and be held")
        assert job.status == "running" and job.rewrapped < N
        first_owner = job.owner
        assert first_owner is not None
        owner = next(i for i, s in enumerate(servers) if str(s.proc.pid) == first_owner.split(":")[1])
        other = 1 - owner
        if stop == "sigkill":
            servers[owner].proc.kill()
            await anyio.to_thread.run_sync(servers[owner].proc.wait, 60)
        else:
            servers[owner].proc.send_signal(signal.SIGTERM)
            proxies[owner].release()  # its batch in flight completes; the job stops at that boundary
            assert await anyio.to_thread.run_sync(servers[owner].proc.wait, 120) == 0
        proxies[other].release()

        def finished() -> RotationJob | None:
            job = anyio.from_thread.run(_job, replicas_db)
            return job if job is not None and job.status not in ("pending", "running") else None

        done = await anyio.to_thread.run_sync(wait_for, finished, "the other replica to finish the job", 120)
        assert (done.status, done.rewrapped, done.failed, done.to_version) == ("completed", N, 0, 2), done.error
        async with client(servers[other].url, token) as c:
            verified = await c.call_tool("system_vault_verify_credentials", {})
            assert not verified.is_error, verified.content
            assert verified.structured_content["checked"] == verified.structured_content["ok"] == N
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.stop()
        for p in proxies:
            p.close()
    engine = create_engine(replicas_db)
    try:
        async with make_sessionmaker(engine)() as s:
            versions = set((await s.execute(select(Credential.key_version))).scalars())
    finally:
        await engine.dispose()
    assert versions == {2}
    assert bao.client().secrets.transit.read_key(name=key)["data"]["latest_version"] == 2  # rotated once
    after = {**envs[0], "FLEET_MCP_VAULT_ADDR": bao.addr}
    assert "audit chain ok" in run_cli(after, "audit", "verify").stdout
    rows: list[dict[str, Any]] = [json.loads(line) for line in run_cli(after, "audit", "export").stdout.splitlines()]
    job_rows = [r for r in rows if r["tool"] == "system_rotate_vault_transit_pepper" and r["decision"] == "background"]
    outcomes = [r["outcome"] for r in job_rows]
    assert outcomes.count("rotated") == 1 and outcomes.count("completed") == 1, outcomes
    taken = [r for r in job_rows if r["outcome"] == "taken_over"]
    assert len(taken) == 1, outcomes
    other_pid = str(servers[other].proc.pid)
    assert taken[0]["principal"].startswith("system/") and f":{other_pid}:" in taken[0]["principal"]
    assert outcomes.count("released") == (1 if stop == "sigterm" else 0), outcomes
    expected_previous = None if stop == "sigterm" else first_owner  # a drained replica released its lease
    assert taken[0]["detail"]["previous_owner"] == expected_previous
