"""Where a background rotation job gets its transactions: one unit of work per step (claim, rotation,
batch, end), and read-only sessions for looking. Never the transaction of the tool call that asked for it.

`JobStorage.of(app)` uses the app's units of work (`app.unit_of_work()`: on SQLite it holds the process's
write lock for exactly one step) and its read sessions; `JobStorage.of(sessionmaker)` serves scripts and
tests that have only a sessionmaker (each write step: a session with one transaction).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class JobStorage:
    def __init__(
        self,
        write: Callable[[], AbstractAsyncContextManager[AsyncSession]],
        read: Callable[[], AbstractAsyncContextManager[AsyncSession]],
    ) -> None:
        self._write = write
        self._read = read

    def write(self) -> AbstractAsyncContextManager[AsyncSession]:
        """One unit of work: a session whose transaction commits on normal exit, rolls back on error."""
        return self._write()

    def read(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session for reading only."""
        return self._read()

    @classmethod
    def of(cls, source: Any) -> JobStorage:
        if isinstance(source, JobStorage):
            return source
        if isinstance(source, async_sessionmaker):
            return cls.of_sessionmaker(source)
        return cls.of_app(source)

    @classmethod
    def of_sessionmaker(
        cls, sm: async_sessionmaker[AsyncSession], read_sm: Callable[[], Any] | None = None
    ) -> JobStorage:
        @asynccontextmanager
        async def write() -> AsyncIterator[AsyncSession]:
            async with sm() as s, s.begin():
                yield s

        @asynccontextmanager
        async def read() -> AsyncIterator[AsyncSession]:
            async with (read_sm or sm)() as s:
                yield s

        return cls(write, read)

    @classmethod
    def of_app(cls, app: Any) -> JobStorage:
        unit_of_work = getattr(app, "unit_of_work", None)
        read_sm = getattr(app, "read_sessionmaker", None) or app.sessionmaker
        if unit_of_work is None:
            assert app.sessionmaker is not None
            return cls.of_sessionmaker(app.sessionmaker, read_sm)

        @asynccontextmanager
        async def write() -> AsyncIterator[AsyncSession]:
            async with unit_of_work() as uow:
                yield uow.session

        @asynccontextmanager
        async def read() -> AsyncIterator[AsyncSession]:
            async with read_sm() as s:
                yield s

        return cls(write, read)
