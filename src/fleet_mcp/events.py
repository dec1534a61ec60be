"""Fleet events: what happened that an operator or agent should notice (drift, failed accepts, rotations)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.audit import mask
from fleet_mcp.db.models import FleetEvent

SEVERITIES = ("info", "low", "medium", "high", "critical")


async def emit(
    session: AsyncSession,
    *,
    account_id: int | None,
    kind: str,
    severity: str = "info",
    payload: dict[str, Any] | None = None,
    correlation_id: str | None = None,
) -> FleetEvent:
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    event = FleetEvent(
        account_id=account_id, kind=kind, severity=severity, payload=mask(payload or {}), correlation_id=correlation_id
    )
    session.add(event)  # flushed with the unit of work
    return event


async def recent(
    session: AsyncSession, *, account_id: int | None, kind: str | None = None, limit: int = 50
) -> list[FleetEvent]:
    stmt = select(FleetEvent).order_by(FleetEvent.id.desc()).limit(limit)
    if account_id is not None:
        stmt = stmt.where((FleetEvent.account_id == account_id) | (FleetEvent.account_id.is_(None)))
    if kind:
        stmt = stmt.where(FleetEvent.kind.like(_like(kind), escape="\\") if "*" in kind else FleetEvent.kind == kind)
    return list((await session.execute(stmt)).scalars().all())


def _like(pattern: str) -> str:
    """`*` is the only wildcard: LIKE's own '%' and '_' (and the escape character) match themselves."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")
