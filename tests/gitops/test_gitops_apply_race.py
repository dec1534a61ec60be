"""Concurrent applies of one proposal on PostgreSQL: one applies, the others see "already applied".

PostgreSQL runs writers concurrently (SQLite serialises them, so there the loser simply reads the
proposal as applied). The race is made deterministic: the winner applies and holds its transaction
open until the database shows the loser waiting on a lock (pg_stat_activity, a real condition, not
a timer); only then does the winner commit.
"""

from __future__ import annotations

import anyio
import pytest
from sqlalchemy import func, select, text

from fleet_mcp.db.models import Module, Template
from fleet_mcp.errors import Conflict
from fleet_mcp.gitops import service as gitops
from fleet_mcp.gitops.models import GitOpsProposal
from tests.gitops.gitops_helpers import BASE_FLEET

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def db_url(pg_db_url: str) -> str:
    """Only PostgreSQL: this race cannot happen on SQLite (one writer at a time)."""
    return pg_db_url


async def _wait_for_lock_waiter(sessionmaker) -> None:  # noqa: ANN001
    """Return once another backend of this database waits for a lock."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND wait_event_type = 'Lock'")
    with anyio.fail_after(30):
        while True:
            async with sessionmaker() as s:
                if (await s.execute(query)).scalar_one():
                    return
            await anyio.sleep(0.01)  # polling a database condition, not a timing assumption


async def _sync(sessionmaker, account, fleet_repo, options) -> list[GitOpsProposal]:  # noqa: ANN001
    async with sessionmaker() as s, s.begin():
        repo = await gitops.register_repository(s, account_id=account.id, name="fleet", repo_url=fleet_repo.url,
                                                allow_local=True)
    async with sessionmaker() as s, s.begin():
        run = await gitops.sync_repository(s, account_id=account.id, repository_id=repo.id, options=options)
    async with sessionmaker() as s:
        return await gitops.list_proposals(s, account_id=account.id, sync_run_id=run.id)


@pytest.mark.parametrize("how", ["proposal", "sync_run", "reject", "sync"])
async def test_concurrent_applies_of_one_proposal(sessionmaker, account, fleet_repo, options, how: str) -> None:  # noqa: ANN001
    proposals = await _sync(sessionmaker, account, fleet_repo, options)
    target = next(p for p in proposals if (p.kind, p.name) == ("template", "web"))
    if how == "sync":  # git now wants another description for web: a sync supersedes the pending proposal
        fleet_repo.commit({"fleet.yaml": BASE_FLEET.replace("Web nodes", "Web tier")}, "describe web anew")
    applied = anyio.Event()
    loser_waits = anyio.Event()
    outcomes: dict[str, object] = {}

    async def apply(session, loser: bool = False):  # noqa: ANN001, ANN202
        if how == "sync" and loser:  # a sync that would supersede the proposal runs while the apply commits
            return await gitops.sync_repository(session, account_id=account.id, repository_id=target.repository_id,
                                                options=options)
        if how == "reject" and loser:  # a reviewer rejects while the apply is committing
            return await gitops.reject_proposal(session, account_id=account.id, proposal_id=target.id,
                                                reason="not wanted", decided_by="test")
        if how in ("proposal", "reject", "sync"):
            return await gitops.apply_proposal(session, account_id=account.id, proposal_id=target.id,
                                               applied_by="test")
        return await gitops.apply_sync_run(session, account_id=account.id, sync_run_id=target.sync_run_id,
                                           applied_by="test")

    async def winner() -> None:
        async with sessionmaker() as s, s.begin():
            outcomes["winner"] = await apply(s)
            applied.set()
            await loser_waits.wait()

    async def loser() -> None:
        await applied.wait()
        try:
            async with sessionmaker() as s, s.begin():
                savepoint = await s.begin_nested()  # as the gate runs a handler
                try:
                    outcomes["loser"] = await apply(s, loser=True)
                except Conflict as exc:
                    await savepoint.rollback()
                    outcomes["loser"] = exc
                else:
                    await savepoint.commit()
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion below
            outcomes["loser"] = exc

    async def watcher() -> None:
        await applied.wait()
        await _wait_for_lock_waiter(sessionmaker)
        loser_waits.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(winner)
        tg.start_soon(loser)
        tg.start_soon(watcher)

    assert outcomes["winner"].applied is True
    lost = outcomes["loser"]
    if how == "sync":
        assert lost.status == "success", lost.error
        async with sessionmaker() as s:
            assert (await gitops.get_proposal(s, account_id=account.id, proposal_id=target.id)).status == "applied"
        return
    assert isinstance(lost, Conflict), lost
    assert ("is applied" if how == "reject" else "already applied") in str(lost)
    async with sessionmaker() as s:
        statuses = {p.id: p.status for p in await gitops.list_proposals(s, account_id=account.id)}
        assert statuses[target.id] == "applied"
        if how == "sync_run":
            assert set(statuses.values()) == {"applied"}
        assert (await s.execute(select(func.count()).select_from(Template))).scalar_one() == (
            2 if how == "sync_run" else 1)
        if how == "reject":
            assert (await gitops.get_proposal(s, account_id=account.id, proposal_id=target.id)).reason is None
        if how == "sync_run":
            assert (await s.execute(select(func.count()).select_from(Module))).scalar_one() == 2
