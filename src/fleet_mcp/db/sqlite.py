"""SQLite through aiosqlite: connection options, and a sqlite3 connection class that really closes.

fleet-mcp runs SQLite on aiosqlite (statements on a worker thread per connection). An inline driver (statements
on the event loop's own thread) was measured against it and dropped: it bought 1.03–1.05× over stdio and was
slower over streamable HTTP, short of the 1.5× that would justify owning a driver (docs/BENCHMARKS.md, "SQLite
driver").

One aiosqlite behaviour needed care. When a statement is cancelled (a client disconnects, a call times out),
SQLAlchemy terminates the connection and aiosqlite closes the sqlite3 connection once the statement has run. A
sqlite3 connection closed with a cursor still holding an unfinished statement is not closed: SQLite keeps it
as a "zombie" (sqlite3_close_v2) with its transaction, and so the database's write lock, until the cursor is
garbage-collected. `ClosingConnection` (passed as sqlite3's documented `factory=`, which aiosqlite forwards)
closes its cursors and rolls back before it closes.
"""

from __future__ import annotations

import sqlite3
import weakref
from typing import Any

from sqlalchemy.engine import URL

#: Seconds a connection waits for another process's write lock (SQLite's busy timeout).
LOCK_TIMEOUT = 30.0


class ClosingConnection(sqlite3.Connection):
    """A sqlite3 connection whose close() finalizes its cursors and rolls back first, so the file's locks
    go with it."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()

    def cursor(self, *args: Any, **kw: Any) -> sqlite3.Cursor:  # type: ignore[override]
        # Connection.execute() creates its cursor through this method as well.
        cur = super().cursor(*args, **kw)
        self._cursors.add(cur)
        return cur

    def close(self) -> None:
        for cur in list(self._cursors):
            try:
                cur.close()
            except sqlite3.Error:
                pass
        try:
            self.rollback()
        except sqlite3.Error:
            pass
        super().close()


def engine_options(url: str | URL) -> dict[str, Any]:
    """Keyword arguments for `create_async_engine` of a `sqlite+aiosqlite://` URL: autocommit mode
    (isolation_level=None; the engine opens its transactions itself), the lock timeout, and connections that
    close for real."""
    return {"connect_args": {"timeout": LOCK_TIMEOUT, "isolation_level": None, "factory": ClosingConnection}}


async def _execute(driver_conn: Any, sql: str) -> None:
    cursor = await driver_conn.execute(sql)  # an aiosqlite.Connection
    await cursor.close()


def run(sa_connection: Any, sql: str) -> None:
    """Run one statement straight on the driver connection of a SQLAlchemy connection, from inside its
    greenlet (an engine event): BEGIN without the cost of SQLAlchemy's execution machinery. Uses only public
    SQLAlchemy API (`AdaptedConnection.run_async`)."""
    adapted = sa_connection.connection.dbapi_connection
    adapted.run_async(lambda driver_conn: _execute(driver_conn, sql))


__all__ = ["LOCK_TIMEOUT", "ClosingConnection", "engine_options", "run"]
