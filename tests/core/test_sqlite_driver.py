"""SQLite on aiosqlite: lock waits never block the event loop, a cancelled statement leaves neither its
transaction nor the database's write lock behind, another process's writer is waited for, and the read
engine refuses writes."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from fleet_mcp.db import sqlite
from fleet_mcp.db.engine import create_engine

pytestmark = pytest.mark.anyio


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}"


async def make_table(url: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    await engine.dispose()


async def _insert(engine, value: str) -> None:  # noqa: ANN001
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})


async def test_waiting_for_another_writer_keeps_the_loop_running(tmp_path: Path) -> None:
    """While a write waits for another process's write lock, other tasks run (here: reads on the same file,
    which WAL never blocks), and the write goes through once the lock is free."""
    url = sqlite_url(tmp_path)
    await make_table(url)
    other = sqlite3.connect(tmp_path / "driver.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer, as far as SQLite knows
    engine = create_engine(url)
    reader = create_engine(url, readonly=True)
    try:
        task = asyncio.create_task(_insert(engine, "waited"))
        for _ in range(20):
            async with reader.connect() as conn:
                assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
        assert not task.done()  # still waiting for the lock, while the loop served 20 reads
        other.execute("COMMIT")
        await asyncio.wait_for(task, 30)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT v FROM t"))).scalars().all() == ["waited"]
    finally:
        other.close()
        await reader.dispose()
        await engine.dispose()


async def test_bulk_statements_return_everything(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await make_table(url)
    engine = create_engine(url)
    n = 1_000
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": f"r{i}"} for i in range(n)])
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT v FROM t ORDER BY id"))).scalars().all()
        assert rows == [f"r{i}" for i in range(n)]
    finally:
        await engine.dispose()


async def test_cancelled_bulk_statement_leaves_the_connection_usable(tmp_path: Path) -> None:
    """A bulk insert cancelled mid-statement: SQLAlchemy terminates the connection; the statement runs to its
    end on aiosqlite's thread, then the connection closes for real (cursors finalized, rolled back), so the
    write lock is released and nothing of the insert stays. Without `ClosingConnection` SQLite keeps the
    closed connection as a zombie holding the lock until garbage collection, and the insert below fails
    "database is locked" after the busy timeout."""
    url = sqlite_url(tmp_path)
    await make_table(url)
    engine = create_engine(url)
    loop = asyncio.get_running_loop()
    running = asyncio.Event()

    @event.listens_for(engine.sync_engine, "connect")
    def _mark(dbapi_conn, _record) -> None:  # noqa: ANN001
        # mark(v) runs inside the statement, on aiosqlite's thread: it tells the test the insert is under way.
        def mark(v: str) -> str:
            loop.call_soon_threadsafe(running.set)
            return v

        dbapi_conn.create_function("mark", 1, mark)

    params = [{"v": "x" * 200} for _ in range(20_000)]
    gc.disable()  # a zombie connection must not be rescued by a collection
    try:
        async def bulk() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (v) VALUES (mark(:v))"), params)

        task = asyncio.create_task(bulk())
        await asyncio.wait_for(running.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _insert(engine, "after")  # the write lock was released and the engine still works
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT v FROM t"))).scalars().all() == ["after"]
    finally:
        gc.enable()
        await engine.dispose()


async def test_closing_a_connection_with_an_unfinished_statement_releases_the_lock(tmp_path: Path) -> None:
    """The mechanism itself, without asyncio: a plain sqlite3 connection closed with a cursor mid-statement
    keeps the write lock (SQLite's zombie close); `ClosingConnection` does not."""
    path = tmp_path / "driver.db"
    await make_table(sqlite_url(tmp_path))
    gc.disable()
    try:
        for factory, keeps_lock in ((sqlite3.Connection, True), (sqlite.ClosingConnection, False)):
            conn = sqlite3.connect(path, isolation_level=None, factory=factory)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES ('x'), ('y')")
            cur = conn.execute("SELECT v FROM t")
            cur.fetchone()  # the statement is left unfinished
            conn.close()
            probe = sqlite3.connect(path, isolation_level=None, timeout=0)
            try:
                if keeps_lock:
                    with pytest.raises(sqlite3.OperationalError, match="locked"):
                        probe.execute("BEGIN IMMEDIATE")
                    del cur
                    gc.collect()  # only now does the plain connection let go
                else:
                    probe.execute("BEGIN IMMEDIATE")
                    assert probe.execute("SELECT count(*) FROM t").fetchone() == (0,)
                    probe.execute("ROLLBACK")
            finally:
                probe.close()
    finally:
        gc.enable()


async def test_a_writer_in_another_process_is_waited_for(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await make_table(url)
    other = sqlite3.connect(tmp_path / "driver.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    engine = create_engine(url)
    reader = create_engine(url, readonly=True)
    try:
        task = asyncio.create_task(_insert(engine, "waited"))
        async with reader.connect() as conn:
            await conn.execute(text("SELECT 1"))  # the write had its turns to fail by now
        assert not task.done()
        other.execute("COMMIT")
        await asyncio.wait_for(task, 30)
    finally:
        other.close()
        await reader.dispose()
        await engine.dispose()


async def test_read_engine_refuses_writes(db_url: str) -> None:
    from fleet_mcp.db import all_models  # noqa: F401
    from fleet_mcp.db.base import Base

    writer = create_engine(db_url)
    async with writer.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    reader = create_engine(db_url, readonly=True)
    try:
        async with reader.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM accounts"))).scalar_one() == 0
        with pytest.raises(DBAPIError, match="(?i)read.?only"):
            async with reader.begin() as conn:
                await conn.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, 'x')"))
        async with writer.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM audit_head"))).scalar_one() == 0
    finally:
        await reader.dispose()
        await writer.dispose()
