"""The unit of work: the only place a write transaction begins and commits, with hooks that run after it.

On SQLite every write transaction of the process first queues on one explicit lock (SQLite has a single
writer; queueing here hands the lock over in arrival order instead of polling SQLite's). On every database a
unit of work that tries to open another write transaction — itself, or a task it started and may wait for —
gets `ReentrantUnitOfWork` at once: waiting would wait on a lock its own unit of work holds (on SQLite,
forever). Work that must commit on its own runs after the commit (`UnitOfWork.after_commit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

#: Work to run once the unit of work has committed, outside any transaction.
AfterCommit = Callable[[], Awaitable[None]]


class ReentrantUnitOfWork(RuntimeError):
    """A task that holds a unit of work tried to open a second write transaction."""

    def __init__(self) -> None:
        super().__init__(
            "this task already holds a unit of work and tried to open another write transaction; "
            "do the work in the same unit of work, or after it commits (UnitOfWork.after_commit)"
        )


@dataclass
class _Holding:
    """One unit of work being held: by its task and by every task started inside it (they inherit the
    context), so work that the holder waits for cannot wait on the holder's lock either."""

    active: bool = True
    connection: int | None = None


_holding: contextvars.ContextVar[_Holding | None] = contextvars.ContextVar("fleet_mcp_unit_of_work", default=None)


class WriteLock:
    """Who holds a unit of work (per context); on SQLite also the process's single-writer queue."""

    def __init__(self, *, serialize: bool) -> None:
        self._serialize = serialize
        self._lock: asyncio.Lock | None = None

    @staticmethod
    def held_here() -> bool:
        current = _holding.get()
        return current is not None and current.active

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        if self.held_here():
            raise ReentrantUnitOfWork()
        if self._serialize:
            if self._lock is None:
                self._lock = asyncio.Lock()
            await self._lock.acquire()
        holding = _Holding()
        token = _holding.set(holding)
        try:
            yield
        finally:
            holding.active = False
            _holding.reset(token)
            if self._serialize and self._lock is not None:
                self._lock.release()

    def on_begin(self, conn: object) -> None:
        """Called as a write transaction begins on a connection (the engine's `begin` event): the holder's
        first begin is its own unit of work; another one, while it still holds it, would wait on itself."""
        current = _holding.get()
        if current is None or not current.active:
            return
        if current.connection is not None and current.connection != id(conn):
            raise ReentrantUnitOfWork()
        current.connection = id(conn)

    def on_end(self, conn: object) -> None:
        """A transaction ended (commit or rollback): if it was the holder's, a new one may begin in the same
        unit of work."""
        current = _holding.get()
        if current is not None and current.connection == id(conn):
            current.connection = None


@dataclass
class UnitOfWork:
    """One write transaction: the session to work in and what to do after it commits."""

    session: AsyncSession
    _after: list[AfterCommit] = field(default_factory=list)

    def after_commit(self, fn: AfterCommit) -> None:
        """Run `fn` once this unit of work has committed (never when it rolls back)."""
        self._after.append(fn)

    def take_after_commit(self) -> list[AfterCommit]:
        hooks, self._after = self._after, []
        return hooks


@contextlib.asynccontextmanager
async def unit_of_work(sessionmaker: async_sessionmaker[AsyncSession], lock: WriteLock) -> AsyncIterator[UnitOfWork]:
    """Begin a write transaction, commit it when the block ends normally (roll back on an exception), then
    run the after-commit hooks in order. Hooks are run by the owner of the unit of work and must not raise;
    one that does is logged and the rest still run."""
    async with lock.hold():
        async with sessionmaker() as session:
            await session.begin()
            uow = UnitOfWork(session)
            try:
                yield uow
            except BaseException:
                await session.rollback()
                raise
            await session.commit()
    for hook in uow.take_after_commit():
        try:
            await hook()
        except Exception:
            log.exception("an after-commit hook failed; the unit of work had committed")
