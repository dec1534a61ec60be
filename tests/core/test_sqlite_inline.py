"""The inline SQLite driver: lock waits never block the event loop, bulk work goes to a thread and comes
back whole, a cancelled bulk statement leaves the connection usable, and the read engine refuses writes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, OperationalError

from fleet_mcp.db import sqlite_inline
from fleet_mcp.db.engine import create_engine

pytestmark = pytest.mark.anyio


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}"


async def make_table(url: str) -> None:
    engine = create_engine(url, sqlite_driver="inline")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    await engine.dispose()


async def _insert(engine, value: str) -> None:  # noqa: ANN001
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})


async def test_waiting_for_another_writer_keeps_the_loop_running(tmp_path: Path) -> None:
    """While a write waits for another process's write lock, other tasks run (here: reads on the same file,
    which WAL never blocks). A driver that waited on the loop's thread would only hand control back once the
    wait ended, with the write already done."""
    url = sqlite_url(tmp_path)
    await make_table(url)
    other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer, as far as SQLite knows
    engine = create_engine(url, sqlite_driver="inline")
    reader = create_engine(url, sqlite_driver="inline", readonly=True)
    connected = asyncio.Event()

    async def write() -> None:
        async with engine.connect() as conn:
            connected.set()  # from here on this task runs until BEGIN IMMEDIATE first yields
            async with conn.begin():
                await conn.execute(text("INSERT INTO t (v) VALUES ('waited')"))

    try:
        task = asyncio.create_task(write())
        await connected.wait()
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


async def test_lock_wait_gives_up_after_the_connection_timeout(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await make_table(url)
    other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        url, async_creator=lambda: sqlite_inline.connect(str(tmp_path / "inline.db"), timeout=0.3,
                                                          isolation_level=None))
    try:
        with pytest.raises(OperationalError, match="locked"):
            async with engine.connect() as conn:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        other.execute("ROLLBACK")
        other.close()
        await engine.dispose()


@pytest.mark.parametrize("driver", sqlite_inline.DRIVERS)
async def test_bulk_statements_return_everything(tmp_path: Path, driver: sqlite_inline.Driver) -> None:
    url = sqlite_url(tmp_path)
    await make_table(url)
    engine = create_engine(url, sqlite_driver=driver)
    n = sqlite_inline.INLINE_ROWS * 3 + 7
    assert n > sqlite_inline.THREAD_MANY
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": f"r{i}"} for i in range(n)])
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT v FROM t ORDER BY id"))).scalars().all()
        assert rows == [f"r{i}" for i in range(n)]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("driver", [
    "inline",
    pytest.param("aiosqlite", marks=pytest.mark.xfail(strict=True, raises=(OperationalError, sqlite3.OperationalError), reason=(
        "aiosqlite: after a cancelled statement SQLAlchemy terminates the connection, aiosqlite stops its thread "
        "without closing the sqlite3 connection, and the open transaction keeps SQLite's write lock until garbage "
        "collection. Why the inline driver stays the default (docs/BENCHMARKS.md)."))),
])
async def test_cancelled_bulk_statement_leaves_the_connection_usable(tmp_path: Path,
                                                                     driver: sqlite_inline.Driver) -> None:
    url = sqlite_url(tmp_path)
    await make_table(url)
    engine = create_engine(url, sqlite_driver=driver)
    loop = asyncio.get_running_loop()
    running = asyncio.Event()

    @event.listens_for(engine.sync_engine, "connect")
    def _mark(dbapi_conn, _record) -> None:  # noqa: ANN001
        # mark(v) runs inside the statement, in whatever thread executes it: it tells the test the bulk
        # insert is under way.
        def mark(v: str) -> str:
            loop.call_soon_threadsafe(running.set)
            return v

        dbapi_conn.create_function("mark", 1, mark)

    # The inline driver interrupts a cancelled statement; aiosqlite cannot, so its statement runs to its end
    # (holding SQLite's write lock) before the rollback: a smaller bulk keeps that wait short.
    params = [{"v": "x" * 200} for _ in range(200_000 if driver == "inline" else 20_000)]
    try:
        async def bulk() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (v) VALUES (mark(:v))"), params)

        task = asyncio.create_task(bulk())
        await asyncio.wait_for(running.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _insert(engine, "after")  # the write lock was released and the connection still works
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT v FROM t"))).scalars().all() == ["after"]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("driver", sqlite_inline.DRIVERS)
async def test_a_writer_in_another_process_is_waited_for(tmp_path: Path, driver: sqlite_inline.Driver) -> None:
    """Both drivers wait for another process's write lock instead of failing at once."""
    url = sqlite_url(tmp_path)
    await make_table(url)
    other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    engine = create_engine(url, sqlite_driver=driver)
    try:
        task = asyncio.create_task(_insert(engine, "waited"))
        async with create_engine(url, sqlite_driver=driver, readonly=True).connect() as conn:
            await conn.execute(text("SELECT 1"))  # the write had its turns to fail by now
        assert not task.done()
        other.execute("COMMIT")
        await asyncio.wait_for(task, 30)
    finally:
        other.close()
        await engine.dispose()


def test_the_driver_is_chosen_by_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fleet_mcp.settings import Settings

    monkeypatch.setenv("FLEET_MCP_SQLITE_DRIVER", "aiosqlite")
    assert Settings().sqlite_driver == "aiosqlite"
    monkeypatch.setenv("FLEET_MCP_SQLITE_DRIVER", "bogus")
    with pytest.raises(ValueError, match="inline"):
        Settings()
    with pytest.raises(ValueError, match="unknown SQLite driver"):
        sqlite_inline.engine_options(sqlite_url(tmp_path), "bogus")  # type: ignore[arg-type]


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
