"""What a tool handler gets: the call's unit of work, the app, the caller, progress and events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp import events
from fleet_mcp.principals import Caller

if TYPE_CHECKING:
    from fleet_mcp.app import App

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
#: Run by the gate with the call's result once the call's unit of work (with its audit row) committed,
#: outside any transaction; a returned model replaces the result. It must not raise: encode failures in
#: the result it returns.
AfterCommitFn = Callable[[BaseModel], Awaitable[BaseModel | None]]


@dataclass
class ToolContext:
    app: App
    session: AsyncSession
    principal: Caller
    call_id: str
    approval_id: str | None = None
    #: What the tool's `prepare` step produced before the unit of work opened (None without one).
    prepared: Any = None
    _progress: ProgressFn | None = field(default=None, repr=False)
    _after_commit: list[AfterCommitFn] = field(default_factory=list, repr=False)

    def after_commit(self, fn: AfterCommitFn) -> None:
        """Run `fn` after this call's unit of work committed (never if it rolls back): how a call launches
        work that commits on its own, such as a job it planned in this transaction."""
        self._after_commit.append(fn)

    @property
    def progress(self) -> ProgressFn | None:
        return self._progress

    async def report_progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        if self._progress is not None:
            await self._progress(done, total, message)

    async def emit(self, kind: str, severity: str = "info", payload: dict[str, Any] | None = None) -> None:
        await events.emit(
            self.session, account_id=self.principal.account_id, kind=kind, severity=severity, payload=payload,
            correlation_id=self.call_id,
        )
