"""What a tool handler gets: the call's unit of work, the app, the caller, progress and events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp import events
from fleet_mcp.principals import Caller

if TYPE_CHECKING:
    from fleet_mcp.app import App

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass
class ToolContext:
    app: App
    session: AsyncSession
    principal: Caller
    call_id: str
    approval_id: str | None = None
    #: What the tool's `prepare` step produced before the unit of work opened (None without one).
    prepared: Any = None
    #: True when the handler runs inside a unit of work that already holds database locks (an approved
    #: request executed in the approver's transaction, or an elicited approval recorded first). Work that
    #: commits on its own sessions must not wait for it: on SQLite it would wait on this very lock.
    shared_unit_of_work: bool = False
    _progress: ProgressFn | None = field(default=None, repr=False)

    async def report_progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        if self._progress is not None:
            await self._progress(done, total, message)

    async def emit(self, kind: str, severity: str = "info", payload: dict[str, Any] | None = None) -> None:
        await events.emit(
            self.session, account_id=self.principal.account_id, kind=kind, severity=severity, payload=payload,
            correlation_id=self.call_id,
        )
