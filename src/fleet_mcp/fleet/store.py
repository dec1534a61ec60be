"""Reading and writing live fleet resources with their revision, fingerprint, owner and drift suppression.

Both the live-state tools (manual edits) and GitOps apply write through here, so a resource's
fingerprint always means the same thing: `fingerprint(canonical attributes)`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Assignment, Module, ProviderConfig, Template
from fleet_mcp.errors import InvalidArgument, NotFound
from fleet_mcp.fleet.models import LiveGeneration
from fleet_mcp.fleet.spec import KINDS, check_kind, fingerprint

LiveModel = type[Template] | type[Module] | type[Assignment] | type[ProviderConfig]
LiveRow = Template | Module | Assignment | ProviderConfig

MODEL_BY_KIND: dict[str, Any] = {
    "template": Template,
    "module": Module,
    "assignment": Assignment,
    "provider_config": ProviderConfig,
}

#: Stored as `drift_suppressed_until` for a suppression without an expiry.
SUPPRESS_FOREVER = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
MANUAL = "manual"


def gitops_owner(repository_id: int) -> str:
    return f"gitops:{repository_id}"


def is_suppressed(row: Any, now: dt.datetime) -> bool:
    """Drift of a resource is suppressed while `drift_suppressed_until` lies in the future."""
    until = row.drift_suppressed_until
    return until is not None and until > now


def suppression_until_out(until: dt.datetime | None) -> dt.datetime | None:
    """The expiry to show: None for "no expiry"."""
    return None if until is None or until >= SUPPRESS_FOREVER else until


@dataclass(frozen=True)
class ResourceRef:
    kind: str
    name: str


# Statements built once: composing SQLAlchemy expressions costs more than running them on SQLite.
_GET_BY_KIND: dict[str, Any] = {
    kind: select(model).where(model.account_id == bindparam("account_id"), model.name == bindparam("name"))
    for kind, model in MODEL_BY_KIND.items()
}
_LIST_BY_KIND: dict[str, Any] = {
    kind: select(model).where(model.account_id == bindparam("account_id")).order_by(model.name)
    for kind, model in MODEL_BY_KIND.items()
}
_BUMP_BY_DIALECT: dict[str, Any] = {}


async def get_resource(session: AsyncSession, account_id: int, kind: str, name: str) -> Any | None:
    stmt = _GET_BY_KIND[check_kind(kind)]
    return (await session.execute(stmt, {"account_id": account_id, "name": name})).scalar_one_or_none()


async def require_resource(session: AsyncSession, account_id: int, kind: str, name: str) -> Any:
    row = await get_resource(session, account_id, kind, name)
    if row is None:
        raise NotFound(
            f"{kind} {name!r} does not exist",
            hint=f"list them with system_list_{kind}s",
            kind=kind,
            name=name,
        )
    return row


async def list_resources(session: AsyncSession, account_id: int, kind: str | None = None) -> list[Any]:
    """Live rows of one kind (or all kinds, in KINDS order), by name."""
    rows: list[Any] = []
    for k in [check_kind(kind)] if kind else list(KINDS):
        rows.extend((await session.execute(_LIST_BY_KIND[k], {"account_id": account_id})).scalars().all())
    return rows


async def bump_generation(session: AsyncSession, account_id: int) -> None:
    """Move the account's live generation (an upsert; concurrent writers serialise on its row)."""
    dialect = (await session.connection()).dialect.name
    stmt = _BUMP_BY_DIALECT.get(dialect)
    if stmt is None:
        ins: Any = postgresql.insert(LiveGeneration) if dialect == "postgresql" else sqlite.insert(LiveGeneration)
        stmt = _BUMP_BY_DIALECT[dialect] = ins.values(
            account_id=bindparam("account_id"), generation=1, updated_at=bindparam("now")
        ).on_conflict_do_update(
            index_elements=[LiveGeneration.account_id],
            set_={"generation": LiveGeneration.generation + 1, "updated_at": bindparam("now")},
        )
    await session.execute(stmt, {"account_id": account_id, "now": utcnow()})


async def live_generation(session: AsyncSession, account_id: int) -> int:
    stmt = select(LiveGeneration.generation).where(LiveGeneration.account_id == account_id)
    return (await session.execute(stmt)).scalar_one_or_none() or 0


def new_row(kind: str, account_id: int, name: str, attributes: dict[str, Any], managed_by: str) -> Any:
    model = MODEL_BY_KIND[check_kind(kind)]
    return model(
        account_id=account_id,
        name=name,
        attributes=attributes,
        fingerprint=fingerprint(attributes),
        revision=1,
        managed_by=managed_by,
    )


def set_attributes(row: Any, attributes: dict[str, Any], managed_by: str) -> bool:
    """Replace a row's attributes in memory (revision +1 when they change); True when anything changed."""
    fp = fingerprint(attributes)
    changed = row.managed_by != managed_by
    if row.fingerprint != fp:
        row.attributes = attributes
        row.fingerprint = fp
        row.revision = row.revision + 1
        changed = True
    row.managed_by = managed_by
    return changed


async def put_resource(
    session: AsyncSession,
    *,
    account_id: int,
    kind: str,
    name: str,
    attributes: dict[str, Any],
    managed_by: str = MANUAL,
    existing: Any | None = None,
) -> Any:
    """Create or replace a resource with canonical `attributes`; revision +1 when the attributes change."""
    check_kind(kind)
    if not isinstance(attributes, dict):
        raise InvalidArgument("attributes must be a mapping")
    row = existing if existing is not None else await get_resource(session, account_id, kind, name)
    if row is None:
        row = new_row(kind, account_id, name, attributes, managed_by)
        session.add(row)
        changed = True
    else:
        changed = set_attributes(row, attributes, managed_by)
    await session.flush()
    if changed:
        await bump_generation(session, account_id)
    return row


async def delete_resource(session: AsyncSession, row: Any) -> None:
    account_id = row.account_id
    await session.delete(row)
    await session.flush()
    await bump_generation(session, account_id)
