"""The rotation's hot path against the database: read a keyset page of old ciphertexts, write rewrapped ones
with compare-and-set. Plain SQL through the session's connection: per-row ORM work would dominate."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# "key_version + 0" keeps the planner on the (account_id, id) index: walk the account in id order and filter
# versions, instead of collecting all old rows through (account_id, key_version) and sorting them per page.
_PAGE = text(
    "SELECT id, name, ciphertext, key_version FROM credentials "
    "WHERE account_id = :account_id AND key_version + 0 < :below AND id > :after "
    "AND id NOT IN (SELECT credential_id FROM rotation_failures WHERE job_id = :job_id) "
    "ORDER BY id LIMIT :limit"
)
_CAS_SQLITE = "UPDATE credentials SET ciphertext = ?, key_version = ? WHERE id = ? AND ciphertext = ?"
_CAS_ONE = text("UPDATE credentials SET ciphertext = :new, key_version = :ver WHERE id = :id AND ciphertext = :old")
_CAS_POSTGRES = text(
    "UPDATE credentials AS c SET ciphertext = v.new, key_version = v.ver "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:olds AS text[]), "
    "CAST(:news AS text[]), CAST(:vers AS integer[])) "
    "AS v(id, old, new, ver) WHERE c.id = v.id AND c.ciphertext = v.old RETURNING c.id"
)


class OldRow(NamedTuple):
    id: int
    name: str
    ciphertext: str
    key_version: int


class Rewrapped(NamedTuple):
    id: int
    old: str
    new: str
    version: int


async def read_page(
    s: AsyncSession, *, account_id: int, below: int, after_id: int, job_id: int, limit: int
) -> list[OldRow]:
    """Rows of one account below version `below`, after `after_id`, not already failed in this job."""
    conn = await s.connection()
    res = await conn.execute(
        _PAGE, {"account_id": account_id, "below": below, "after": after_id, "job_id": job_id, "limit": limit}
    )
    return [OldRow(*r) for r in res.all()]


async def compare_and_set(s: AsyncSession, updates: list[Rewrapped]) -> int:
    """Write each rewrapped ciphertext only where the row still holds what was read; return how many landed.

    A row changed in between was re-encrypted (at the latest version) by its writer: it is skipped, never
    overwritten."""
    if not updates:
        return 0
    conn = await s.connection()
    if conn.dialect.name == "postgresql":
        params: dict[str, Any] = {
            "ids": [u.id for u in updates],
            "olds": [u.old for u in updates],
            "news": [u.new for u in updates],
            "vers": [u.version for u in updates],
        }
        return len((await conn.execute(_CAS_POSTGRES, params)).all())
    if conn.dialect.name == "sqlite":
        res = await conn.exec_driver_sql(_CAS_SQLITE, [(u.new, u.version, u.id, u.old) for u in updates])
        return int(res.rowcount)
    landed = 0  # any other database: one statement per row, exact
    for u in updates:
        res = await conn.execute(_CAS_ONE, {"new": u.new, "ver": u.version, "id": u.id, "old": u.old})
        landed += int(res.rowcount)
    return landed
