"""Engine and session factory for SQLite (WAL, immediate write transactions) and PostgreSQL (asyncpg)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from fleet_mcp.db import sqlite
from fleet_mcp.db.uow import WriteLock


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, echo: bool = False, pool_size: int = 10, readonly: bool = False,
                  write_lock: WriteLock | None = None) -> AsyncEngine:
    """Create an async engine. On SQLite every write transaction begins IMMEDIATE (it takes the write lock
    up front, so a transaction that reads then writes queues instead of failing "database is locked"), on
    aiosqlite (`fleet_mcp.db.sqlite`).
    A `readonly` engine refuses writes (SQLite `query_only`, PostgreSQL read-only transactions); on SQLite
    it begins plain (deferred) transactions: in WAL mode readers never wait for the writer.
    `write_lock` is told when a write transaction begins and ends, so a unit of work that begins a second
    write transaction fails at once instead of waiting on itself. Bound parameters never appear in SQL error
    messages or logs (they can hold ciphertexts and digests)."""
    if is_sqlite(url):
        engine = create_async_engine(url, echo=echo, hide_parameters=True, **sqlite.engine_options(url))
        _install_sqlite_pragmas(engine, readonly=readonly, write_lock=write_lock)
    else:
        connect_args = {"server_settings": {"default_transaction_read_only": "on"}} if readonly else {}
        engine = create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size * 2,
                                     pool_pre_ping=True, connect_args=connect_args, hide_parameters=True)
    if write_lock is not None and not readonly:
        _install_write_guard(engine, write_lock, check_begin=not is_sqlite(url))
    return engine


def _install_write_guard(engine: AsyncEngine, lock: WriteLock, *, check_begin: bool) -> None:
    def _begun(conn: Any) -> None:
        # An autocommit connection (the local keyring's kept reader) holds no transaction to wait behind.
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return
        lock.on_begin(conn)

    def _ended(conn: Any) -> None:
        lock.on_end(conn)

    if check_begin:  # on SQLite the begin listener below checks before its BEGIN IMMEDIATE could wait
        event.listen(engine.sync_engine, "begin", _begun)
    event.listen(engine.sync_engine, "commit", _ended)
    event.listen(engine.sync_engine, "rollback", _ended)


def _install_sqlite_pragmas(engine: AsyncEngine, *, readonly: bool = False, write_lock: WriteLock | None = None
                            ) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # Another process's write lock is waited for on aiosqlite's worker thread, never on the event loop.
        cur.execute(f"PRAGMA busy_timeout={int(sqlite.LOCK_TIMEOUT * 1000)}")
        if readonly:
            cur.execute("PRAGMA query_only=ON")
        cur.close()

    # The driver runs in autocommit mode (isolation_level=None); transactions are opened here. Within this
    # process, write transactions queue on the unit of work's explicit lock (fleet_mcp.db.uow) before they
    # get here; against other processes the driver waits for SQLite's lock.
    statement = "BEGIN" if readonly else "BEGIN IMMEDIATE"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if write_lock is not None and not readonly:
            write_lock.on_begin(conn)  # refuses before BEGIN IMMEDIATE could wait on its own unit of work
        sqlite.run(conn, statement)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
