"""The live state one repository is compared against, and a cheap digest of it for the drift sensor.

Scope: every live resource of the account except those another repository manages and this
repository does not mention (two repositories never delete each other's resources). A resource
that another repository manages *and* this one declares is in scope: the proposal takes it over.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, literal, literal_column, or_, select, union_all
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.fleet.spec import KINDS
from fleet_mcp.fleet.store import MODEL_BY_KIND, SUPPRESS_FOREVER, gitops_owner, suppression_until_out
from fleet_mcp.gitops.diff import LiveResource, Suppression
from fleet_mcp.gitops.fleetfile import DesiredState


@dataclass(frozen=True)
class LiveView:
    resources: dict[str, dict[str, LiveResource]]
    suppressed: dict[tuple[str, str], Suppression]


def _in_scope(managed_by: str, owner: str, kind: str, name: str, desired: DesiredState | None) -> bool:
    if not managed_by.startswith("gitops:") or managed_by == owner:
        return True
    return desired is not None and name in desired.resources.get(kind, {})


async def next_suppression_expiry(session: AsyncSession, *, account_id: int, now: dt.datetime) -> dt.datetime | None:
    """The earliest future end of a drift suppression in the account (None if none will end)."""
    parts = []
    for kind in KINDS:
        model: Any = MODEL_BY_KIND[kind]
        until = model.drift_suppressed_until
        parts.append(
            select(func.min(until)).where(model.account_id == account_id, until > now, until < SUPPRESS_FOREVER)
        )
    rows: list[Any] = list((await session.execute(union_all(*parts))).scalars().all())
    found = [r for r in rows if r is not None]
    return min(found) if found else None


async def live_digest(
    session: AsyncSession,
    *,
    account_id: int,
    repository_id: int,
    desired: Callable[[], Awaitable[DesiredState | None]],
    now: dt.datetime,
) -> str:
    """SHA-256 over (kind, name, fingerprint, suppressed-now) of the in-scope live rows.

    The per-row lines are built and concatenated inside the database (one row back per kind, no
    attributes), so an unchanged repository costs a few aggregate queries. `desired` is only awaited
    when rows managed by another repository exist (the scope rule needs it)."""
    owner = gitops_owner(repository_id)
    conn = await session.connection()
    postgres = conn.dialect.name == "postgresql"
    aggregates = []
    foreign_parts = []
    for kind in KINDS:
        model: Any = MODEL_BY_KIND[kind]
        active = case((model.drift_suppressed_until > now, "1"), else_="0")
        line = (literal(kind) + "|" + model.name + "|" + model.fingerprint + "|" + active + "\n").label("line")
        mine = or_(~model.managed_by.like("gitops:%"), model.managed_by == owner)
        rows = select(line, model.name).where(model.account_id == account_id, mine)
        if postgres:
            sub = rows.subquery()
            agg = select(func.string_agg(sub.c.line, aggregate_order_by(literal_column("''"), sub.c.name)))
        else:  # SQLite concatenates in the order of the subquery (name: the unique index, no sort)
            sub = rows.order_by(model.name).subquery()
            agg = select(func.group_concat(sub.c.line, ""))
        aggregates.append(agg.scalar_subquery())
        foreign_parts.append(
            select(literal(kind), model.name, model.fingerprint, active).where(model.account_id == account_id, ~mine)
        )
    h = hashlib.sha256()
    for part in (await conn.execute(select(*aggregates))).one():
        h.update((part or "").encode())
        h.update(b"\x1e")
    foreign: list[Any] = list((await conn.execute(union_all(*foreign_parts))).all())
    if foreign:
        state = await desired()
        lines = sorted(
            f"{kind}|{name}|{fp}|{act}\n"
            for kind, name, fp, act in foreign
            if state is not None and name in state.resources.get(kind, {})
        )
        h.update("".join(lines).encode())
    return h.hexdigest()


async def load_live(
    session: AsyncSession, *, account_id: int, repository_id: int, desired: DesiredState | None, now: dt.datetime
) -> LiveView:
    owner = gitops_owner(repository_id)
    resources: dict[str, dict[str, LiveResource]] = {}
    suppressed: dict[tuple[str, str], Suppression] = {}
    conn = await session.connection()
    for kind in KINDS:
        model: Any = MODEL_BY_KIND[kind]
        stmt = select(
            model.name,
            model.attributes,
            model.fingerprint,
            model.revision,
            model.managed_by,
            model.drift_suppressed_until,
            model.drift_suppressed_reason,
        ).where(model.account_id == account_id)
        bucket: dict[str, LiveResource] = {}
        rows: list[Any] = list((await conn.execute(stmt)).all())
        for name, attributes, fp, revision, managed_by, until, reason in rows:
            if not _in_scope(managed_by, owner, kind, name, desired):
                continue
            bucket[name] = LiveResource(
                kind=kind, name=name, attributes=attributes, fingerprint=fp, revision=revision, managed_by=managed_by
            )
            if until is not None and until > now:
                suppressed[(kind, name)] = Suppression(until=suppression_until_out(until), reason=reason)
        resources[kind] = bucket
    return LiveView(resources=resources, suppressed=suppressed)
