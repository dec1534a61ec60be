"""The audit chain: tampering in every way is caught at the first bad seq; concurrency never forks it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import anyio
import pytest
from sqlalchemy import delete, select, text, update

from fleet_mcp import audit
from fleet_mcp.db.models import AuditEntry

pytestmark = pytest.mark.anyio


async def _fill(sessionmaker, n: int) -> None:  # noqa: ANN001
    for i in range(n):
        async with sessionmaker() as s, s.begin():
            await audit.append(s, principal="acme/alice", account="acme", tool="system_put_template",
                               arguments={"name": f"t{i}", "secret": "hunter2"}, decision="auto_approve",
                               outcome="ok")


async def _verify(sessionmaker):  # noqa: ANN001
    async with sessionmaker() as s:
        return await audit.verify(s)


async def test_chain_verifies_and_masks_secrets(sessionmaker) -> None:  # noqa: ANN001
    await _fill(sessionmaker, 5)
    r = await _verify(sessionmaker)
    assert r.ok and r.entries_checked == 5 and r.first_bad_seq is None
    async with sessionmaker() as s:
        rows = (await s.execute(select(AuditEntry))).scalars().all()
    assert all(row.arguments["secret"] == "***" for row in rows)
    assert all("hunter2" not in str(row.arguments) for row in rows)


async def test_edited_row(sessionmaker) -> None:  # noqa: ANN001
    await _fill(sessionmaker, 6)
    async with sessionmaker() as s, s.begin():
        await s.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(outcome="error"))
    r = await _verify(sessionmaker)
    assert not r.ok and r.first_bad_seq == 3


async def test_deleted_row(sessionmaker) -> None:  # noqa: ANN001
    await _fill(sessionmaker, 6)
    async with sessionmaker() as s, s.begin():
        await s.execute(delete(AuditEntry).where(AuditEntry.seq == 4))
    r = await _verify(sessionmaker)
    assert not r.ok and r.first_bad_seq == 4


async def test_deleted_tail(sessionmaker) -> None:  # noqa: ANN001
    await _fill(sessionmaker, 6)
    async with sessionmaker() as s, s.begin():
        await s.execute(delete(AuditEntry).where(AuditEntry.seq >= 5))
    r = await _verify(sessionmaker)
    assert not r.ok and r.first_bad_seq == 5


async def test_inserted_row(sessionmaker) -> None:  # noqa: ANN001
    await _fill(sessionmaker, 6)
    async with sessionmaker() as s, s.begin():
        # Make room at seq 3 and forge a row there, re-linking the forged row to seq 2.
        rows = (await s.execute(select(AuditEntry).order_by(AuditEntry.seq.desc()))).scalars().all()
        for row in rows:
            if row.seq >= 3:
                await s.execute(update(AuditEntry).where(AuditEntry.seq == row.seq).values(seq=row.seq + 100))
        s.expunge_all()
        prev = (await s.execute(select(AuditEntry).where(AuditEntry.seq == 2))).scalar_one()
        forged = AuditEntry(seq=3, at=prev.at, principal="mallory", account="acme", tool="x", args_digest="0" * 64,
                            arguments={}, decision="auto_approve", outcome="ok", prev_hash=prev.hash, hash="f" * 64)
        s.add(forged)
    r = await _verify(sessionmaker)
    assert not r.ok and r.first_bad_seq == 3


async def test_reordered_rows(sessionmaker) -> None:  # noqa: ANN001
    await _fill(sessionmaker, 6)
    async with sessionmaker() as s, s.begin():
        await s.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(seq=-2))
        await s.execute(update(AuditEntry).where(AuditEntry.seq == 4).values(seq=2))
        await s.execute(update(AuditEntry).where(AuditEntry.seq == -2).values(seq=4))
    r = await _verify(sessionmaker)
    assert not r.ok and r.first_bad_seq == 2


async def test_concurrent_sessions_never_fork(sessionmaker) -> None:  # noqa: ANN001
    async def writer(i: int) -> None:
        for j in range(10):
            async with sessionmaker() as s, s.begin():
                await audit.append(s, principal=f"acme/w{i}", account="acme", tool="t", arguments={"j": j},
                                   decision="auto_approve", outcome="ok")

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(writer, i)
    r = await _verify(sessionmaker)
    assert r.ok and r.entries_checked == 80


@pytest.mark.postgres
async def test_several_processes_on_one_postgres(pg_db_url: str) -> None:
    from fleet_mcp.db.engine import create_engine, make_sessionmaker

    db_url = pg_db_url
    engine = create_engine(db_url)
    sessionmaker = make_sessionmaker(engine)
    script = textwrap.dedent(f"""
        import asyncio
        from fleet_mcp import audit
        from fleet_mcp.db.engine import create_engine, make_sessionmaker
        async def main():
            eng = create_engine({db_url!r})
            sm = make_sessionmaker(eng)
            for j in range(25):
                async with sm() as s, s.begin():
                    await audit.append(s, principal="p", account="acme", tool="t", arguments={{"j": j}},
                                       decision="auto_approve", outcome="ok")
            await eng.dispose()
        asyncio.run(main())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(4)]
    assert all(p.wait(120) == 0 for p in procs)
    r = await _verify(sessionmaker)
    assert r.ok and r.entries_checked == 100
    async with sessionmaker() as s:
        distinct = (await s.execute(text("SELECT count(DISTINCT prev_hash) FROM audit_log"))).scalar_one()
    assert distinct == 100
    await engine.dispose()
