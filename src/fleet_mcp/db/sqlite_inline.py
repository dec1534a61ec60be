"""An asyncio driver for SQLite that runs short statements on the event loop's own thread.

A local SQLite statement takes microseconds; handing it to a worker thread (aiosqlite) costs about a
hundred microseconds a hop, several hops a statement, and under load each hop also queues behind every
other ready task — while the write lock is held. So statements run inline, and only work that can be
long goes to a thread: `executemany` of many rows and the rest of a large result after its first rows.

Lock waits never block the loop: connections have no SQLite busy timeout; a statement that meets
SQLITE_BUSY (another process holds the write lock) is retried after an asyncio sleep until the
connection's `timeout` has passed.

The connection is shaped like an `aiosqlite.Connection` and handed to SQLAlchemy's aiosqlite dialect through
the public `async_creator=` argument of `create_async_engine` (see `engine_options`): nothing here imports
SQLAlchemy's private adapter classes. `FLEET_MCP_SQLITE_DRIVER=aiosqlite` runs on aiosqlite itself instead.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, Literal, TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")
Driver = Literal["inline", "aiosqlite"]
DRIVERS: tuple[Driver, ...] = ("inline", "aiosqlite")
#: Seconds a connection waits for another process's write lock (both drivers).
LOCK_TIMEOUT = 30.0

#: More parameter sets than this and `executemany` runs in a worker thread.
THREAD_MANY = 64
#: Rows fetched inline before the rest of a result is fetched in a worker thread.
INLINE_ROWS = 256
_BUSY_SNAPSHOT = 517  # retrying cannot help: the transaction must restart


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "database is locked" in str(exc)
    return code & 0xFF == sqlite3.SQLITE_BUSY and code != _BUSY_SNAPSHOT


class Cursor:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        assert conn._conn is not None
        self._cursor = conn._conn.cursor()
        conn._cursors.add(self._cursor)

    def __await__(self) -> Generator[Any, None, Cursor]:
        """`await conn.cursor()` works as on aiosqlite (SQLAlchemy 2.0's adapter awaits it; 2.1's does not)."""

        async def itself() -> Cursor:
            return self

        return itself().__await__()

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = ()) -> Cursor:
        await self._conn._call(False, self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        params = seq_of_parameters if isinstance(seq_of_parameters, Sequence) else list(seq_of_parameters)
        await self._conn._call(len(params) > THREAD_MANY, self._cursor.executemany, sql, params)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        rows = self._cursor.fetchmany(INLINE_ROWS)
        if len(rows) == INLINE_ROWS:
            rows += await self._conn._in_thread(self._cursor.fetchall)
        return rows

    async def close(self) -> None:
        self._cursor.close()


class Connection:
    """The awaitable connection SQLAlchemy's aiosqlite adapter expects, over one sqlite3 connection."""

    def __init__(self, conn: sqlite3.Connection, timeout: float) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._timeout = timeout
        self._cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()

    @property
    def _connection(self) -> sqlite3.Connection | None:  # the adapter tests it before commit/rollback
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        assert self._conn is not None
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:  # sqlite3 takes None, "DEFERRED", "IMMEDIATE", "EXCLUSIVE"
        assert self._conn is not None
        self._conn.isolation_level = value

    async def _call(self, threaded: bool, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` (inline, or in a worker thread when it may be long); wait out SQLITE_BUSY asynchronously."""
        delay, deadline = 0.0005, None
        while True:
            try:
                return await self._in_thread(fn, *args) if threaded else fn(*args)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self._timeout
                if now >= deadline:
                    raise
                await asyncio.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 0.05)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in a worker thread. When the caller is cancelled the statement is interrupted and
        waited for: nobody may touch the connection (a rollback, a close) while the thread still uses it."""
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if self._conn is not None:
                self._conn.interrupt()
            while not work.done():
                try:
                    await asyncio.wait([work])
                except asyncio.CancelledError:
                    continue
            if not work.cancelled():
                work.exception()  # retrieved: the interruption's error is expected
            raise

    def cursor(self) -> Cursor:
        if self._conn is None:
            raise ValueError("Connection closed")
        return Cursor(self)

    async def execute(self, sql: str, parameters: Any = ()) -> Cursor:
        """As `aiosqlite.Connection.execute`: a new cursor that has run `sql`."""
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        assert self._conn is not None
        await self._call(False, self._conn.commit)

    async def rollback(self) -> None:
        assert self._conn is not None
        self._conn.rollback()

    async def create_function(self, *args: Any, **kw: Any) -> None:
        assert self._conn is not None
        self._conn.create_function(*args, **kw)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Close for real: a transaction or an unfinalized statement left open (a cancelled bulk insert)
        would otherwise keep the connection, and SQLite's write lock, alive after close()."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for cur in list(self._cursors):
            cur.close()
        try:
            conn.rollback()
        except sqlite3.Error:
            pass
        conn.close()


async def connect(database: str, *, timeout: float = 5.0, **kw: Any) -> Connection:  # noqa: ASYNC109 - DBAPI name
    # check_same_thread=False: a connection is used by one task at a time, sometimes from a worker thread.
    kw.pop("check_same_thread", None)
    conn = sqlite3.connect(database, timeout=0, check_same_thread=False, **kw)
    return Connection(conn, timeout)


#: The driver each SQLite engine was created with (`remember`), for engines opened beside it (`driver_of`).
_DRIVERS: weakref.WeakKeyDictionary[Any, Driver] = weakref.WeakKeyDictionary()


def remember(engine: AsyncEngine, driver: Driver) -> None:
    _DRIVERS[engine.sync_engine] = driver


def driver_of(engine: AsyncEngine) -> Driver:
    """The driver an engine made by `fleet_mcp.db.engine.create_engine` runs on (aiosqlite for others)."""
    return _DRIVERS.get(engine.sync_engine, "aiosqlite")


def engine_options(url: str | URL, driver: Driver) -> dict[str, Any]:
    """Keyword arguments for `create_async_engine` of a `sqlite+aiosqlite://` URL on the chosen driver.
    Both run in autocommit mode (isolation_level=None): the engine opens transactions itself."""
    if driver == "aiosqlite":
        return {"connect_args": {"timeout": LOCK_TIMEOUT, "isolation_level": None}}
    if driver != "inline":
        raise ValueError(f"unknown SQLite driver {driver!r}; known: {', '.join(DRIVERS)}")
    database = make_url(url).database or ":memory:"
    return {"async_creator": functools.partial(connect, database, timeout=LOCK_TIMEOUT, isolation_level=None)}


def busy_timeout_ms(driver: Driver) -> int:
    """SQLite's own busy timeout: none for the inline driver (it waits with asyncio sleeps, never blocking the
    loop), the lock timeout for aiosqlite (its worker thread may block)."""
    return 0 if driver == "inline" else int(LOCK_TIMEOUT * 1000)


async def _execute(driver_conn: Any, sql: str) -> None:
    if isinstance(driver_conn, Connection):
        assert driver_conn._conn is not None
        await driver_conn._call(False, driver_conn._conn.execute, sql)
    else:  # an aiosqlite.Connection
        cursor = await driver_conn.execute(sql)
        await cursor.close()


def run(sa_connection: Any, sql: str) -> None:
    """Run one statement straight on the driver connection of a SQLAlchemy connection, from inside its
    greenlet (an engine event): BEGIN without the cost of SQLAlchemy's execution machinery. Uses only public
    SQLAlchemy API (`AdaptedConnection.run_async`)."""
    adapted = sa_connection.connection.dbapi_connection
    adapted.run_async(lambda driver_conn: _execute(driver_conn, sql))


__all__ = ["DRIVERS", "Connection", "Cursor", "Driver", "busy_timeout_ms", "connect", "engine_options", "run"]
