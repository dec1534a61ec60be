"""Engine and session factory for SQLite (WAL, immediate write transactions) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_only


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, echo: bool = False, pool_size: int = 10, readonly: bool = False) -> AsyncEngine:
    """Create an async engine; on SQLite every transaction begins IMMEDIATE so writers queue, not fail.
    A `readonly` SQLite engine begins plain (deferred) transactions: in WAL mode readers never wait for
    the writer, so lookups such as token checks need not queue behind tool calls."""
    if is_sqlite(url):
        engine = create_async_engine(
            url, echo=echo, connect_args={"timeout": 30, "isolation_level": None}
        )
        _install_sqlite_pragmas(engine, readonly=readonly)
        return engine
    return create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True)


def _install_sqlite_pragmas(engine: AsyncEngine, *, readonly: bool = False) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    if readonly:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin_read(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

        return

    # The driver runs in autocommit mode (isolation_level=None); we open transactions ourselves.
    # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then writes
    # would fail with "database is locked" instead of waiting when another writer is active.
    # Within this process, transactions first queue on an asyncio lock: SQLite's busy handler
    # sleep-polls, which gives long tails under concurrency; the lock hands over in arrival order.
    # (Other processes still meet SQLite's own lock and busy timeout.)
    lock = asyncio.Lock()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        await_only(lock.acquire())
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            lock.release()
            raise
        conn.info["fleet_write_lock"] = True

    def _release(conn: Any) -> None:
        if conn.info.pop("fleet_write_lock", False):
            lock.release()

    event.listen(engine.sync_engine, "commit", _release)
    event.listen(engine.sync_engine, "rollback", _release)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
