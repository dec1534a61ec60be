"""Engine and session factory for SQLite (WAL, immediate write transactions) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_only

from fleet_mcp.db import sqlite_inline


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, echo: bool = False, pool_size: int = 10, readonly: bool = False,
                  sqlite_driver: sqlite_inline.Driver | None = None) -> AsyncEngine:
    """Create an async engine; on SQLite every transaction begins IMMEDIATE so writers queue, not fail.
    A `readonly` engine refuses writes (SQLite `query_only`, PostgreSQL read-only transactions); on SQLite
    it begins plain (deferred) transactions: in WAL mode readers never wait for the writer, so lookups
    and read-only tools need not queue behind writes."""
    if is_sqlite(url):
        if sqlite_driver is None:
            from fleet_mcp.settings import Settings

            sqlite_driver = Settings().sqlite_driver
        engine = create_async_engine(url, echo=echo, **sqlite_inline.engine_options(url, sqlite_driver))
        sqlite_inline.remember(engine, sqlite_driver)
        _install_sqlite_pragmas(engine, readonly=readonly, busy_timeout_ms=sqlite_inline.busy_timeout_ms(sqlite_driver))
        return engine
    connect_args = {"server_settings": {"default_transaction_read_only": "on"}} if readonly else {}
    return create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True,
                               connect_args=connect_args)


def _install_sqlite_pragmas(engine: AsyncEngine, *, readonly: bool = False, busy_timeout_ms: int = 0) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # Inline driver: no busy timeout, it waits for another process's write lock without blocking the loop.
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if readonly:
            cur.execute("PRAGMA query_only=ON")
        cur.close()

    if readonly:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin_read(conn: Any) -> None:
            sqlite_inline.run(conn, "BEGIN")

        return

    # The driver runs in autocommit mode (isolation_level=None); we open transactions ourselves.
    # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then writes
    # would fail with "database is locked" instead of waiting when another writer is active.
    # Within this process, transactions first queue on an asyncio lock: sleep-polling for SQLite's lock
    # gives long tails under concurrency; the lock hands over in arrival order. (Against other processes
    # the driver waits for SQLite's lock with asyncio sleeps.)
    lock = asyncio.Lock()
    # Keyed by the Connection, not kept in `conn.info`: after a cancelled statement SQLAlchemy invalidates
    # the connection and `info` raises, which would leave the lock held for good.
    holders: set[int] = set()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        await_only(lock.acquire())
        try:
            sqlite_inline.run(conn, "BEGIN IMMEDIATE")
        except BaseException:
            lock.release()
            raise
        holders.add(id(conn))

    def _release(conn: Any) -> None:
        if id(conn) in holders:
            holders.discard(id(conn))
            lock.release()

    event.listen(engine.sync_engine, "commit", _release)
    event.listen(engine.sync_engine, "rollback", _release)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
