"""The inline SQLite driver: lock waits never block the event loop, bulk work goes to a thread and comes
back whole, a cancelled bulk statement leaves the connection usable, and the read engine refuses writes."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from fleet_mcp.db import sqlite_inline
from fleet_mcp.db.engine import create_engine

pytestmark = pytest.mark.anyio


class Ticker:
    """Counts event-loop ticks and records the longest gap between two: a blocked loop shows as a gap."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            self.ticks += 1
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}"


async def make_table(url: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    await engine.dispose()


async def test_waiting_for_another_writer_keeps_the_loop_running(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await make_table(url)
    other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer, as far as SQLite knows
    engine = create_engine(url)
    try:
        with Ticker() as ticker:
            write = asyncio.create_task(_insert(engine, "waited"))
            await asyncio.sleep(0.4)
            assert not write.done()  # still waiting for the lock
            other.execute("COMMIT")
            await asyncio.wait_for(write, 10)
        assert ticker.ticks >= 20
        assert ticker.longest_gap < 0.2, f"the loop was blocked for {ticker.longest_gap:.3f} s"
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT v FROM t"))).scalars().all() == ["waited"]
    finally:
        other.close()
        await engine.dispose()


async def _insert(engine, value: str) -> None:  # noqa: ANN001
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})


async def test_lock_wait_gives_up_after_the_connection_timeout(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await make_table(url)
    other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, connect_args={"timeout": 0.3, "isolation_level": None},
                                 module=sqlite_inline.dbapi())
    try:
        t0 = time.monotonic()
        with Ticker() as ticker, pytest.raises(OperationalError, match="locked"):
            async with engine.connect() as conn:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
        assert 0.25 <= time.monotonic() - t0 < 5
        assert ticker.longest_gap < 0.2
    finally:
        other.execute("ROLLBACK")
        other.close()
        await engine.dispose()


async def test_bulk_statements_run_in_a_thread_and_return_everything(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await make_table(url)
    engine = create_engine(url)
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


async def test_cancelled_bulk_statement_leaves_the_connection_usable(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await make_table(url)
    engine = create_engine(url)
    params = [{"v": "x" * 200} for _ in range(200_000)]
    try:
        async def bulk() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), params)

        task = asyncio.create_task(bulk())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _insert(engine, "after")  # the write lock was released and the connection still works
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT v FROM t"))).scalars().all() == ["after"]
    finally:
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
