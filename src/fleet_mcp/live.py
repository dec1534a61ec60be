"""Live fleet state as the manual edit path: validation and referential checks on top of
`fleet.store`, which GitOps apply writes through too (one meaning of revision and fingerprint)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.db.models import Assignment
from fleet_mcp.errors import Conflict, NotFound
from fleet_mcp.fleet import store
from fleet_mcp.fleet.spec import assignment_name, canonical_attributes, check_name, split_assignment_name


async def list_resources(session: AsyncSession, account_id: int, kind: str) -> list[Any]:
    return await store.list_resources(session, account_id, kind)


async def get(session: AsyncSession, account_id: int, kind: str, name: str) -> Any:
    check_name(kind, name)
    return await store.require_resource(session, account_id, kind, name)


async def put(
    session: AsyncSession, account_id: int, kind: str, name: str, spec: Mapping[str, Any] | BaseModel
) -> tuple[Any, bool]:
    """Create or replace a resource by hand; returns (row, changed)."""
    check_name(kind, name)
    attrs = canonical_attributes(kind, spec)
    if kind == "assignment":
        template, module = split_assignment_name(name)
        for k, n in (("template", template), ("module", module)):
            if await store.get_resource(session, account_id, k, n) is None:
                raise NotFound(f"{k} {n!r} does not exist", hint=f"create it first with system_put_{k}",
                               kind=k, name=n)
    before = await store.get_resource(session, account_id, kind, name)
    old = (before.fingerprint, before.managed_by) if before is not None else None
    row = await store.put_resource(session, account_id=account_id, kind=kind, name=name, attributes=attrs,
                                   existing=before)
    return row, old != (row.fingerprint, row.managed_by)


async def delete(session: AsyncSession, account_id: int, kind: str, name: str) -> None:
    row = await get(session, account_id, kind, name)
    if kind in ("template", "module"):
        # Exact comparison of the assignment key's part (never LIKE: '_' is a legal name character).
        # Names never contain ':', so '<name>:' as a prefix (or ':<name>' as a suffix) is exactly that part.
        if kind == "template":
            part = func.substr(Assignment.name, 1, len(name) + 1) == f"{name}:"
        else:
            part = func.substr(Assignment.name, func.length(Assignment.name) - len(name)) == f":{name}"
        users = (await session.execute(
            select(func.count()).select_from(Assignment).where(Assignment.account_id == account_id, part)
        )).scalar_one()
        if users:
            raise Conflict(f"{kind} {name!r} is used by {users} assignment(s)",
                           hint="unassign its modules first (system_unassign_module_from_template)",
                           kind=kind, name=name)
    await store.delete_resource(session, row)


def assignment_key(template: str, module: str) -> str:
    name = assignment_name(template, module)
    check_name("assignment", name)
    return name


def to_item(kind: str, row: Any) -> dict[str, Any]:
    until = store.suppression_until_out(row.drift_suppressed_until)
    return {
        "kind": kind,
        "name": row.name,
        "spec": row.attributes,
        "revision": row.revision,
        "fingerprint": row.fingerprint,
        "managed_by": row.managed_by,
        "drift_suppressed_until": until.isoformat() if until else None,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }
