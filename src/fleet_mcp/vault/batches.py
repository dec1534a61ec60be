"""The rotation's hot path against the database: read a keyset page of old ciphertexts, write rewrapped ones
with compare-and-set. Plain SQL through the session's connection, plain tuples in and out: per-row ORM (or
even per-row Python object) work would cost more than the statements."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger(__name__)

#: A page row: (id, name, ciphertext, key_version), and on a table-wide page also account_id.
OldRow = tuple[int, str, str, int] | tuple[int, str, str, int, int]
#: A compare-and-set update: (new ciphertext, its version, id, old ciphertext) — SQLite's parameter order.
Rewrapped = tuple[str, int, int, str]

ID: Final = 0
NAME: Final = 1
CIPHERTEXT: Final = 2
KEY_VERSION: Final = 3
ACCOUNT_ID: Final = 4

# "key_version + 0" keeps the planner on the (account_id, id) index: walk the account in id order and filter
# versions, instead of collecting all old rows through (account_id, key_version) and sorting them per page.
_PAGE_SQL = (
    "SELECT id, name, ciphertext, key_version FROM credentials "
    "WHERE account_id = {} AND key_version + 0 < {} AND id > {} "
    "AND id NOT IN (SELECT credential_id FROM rotation_failures WHERE job_id = {}) "
    "ORDER BY id LIMIT {}"
)
_PAGE = text(_PAGE_SQL.format(":account_id", ":below", ":after", ":job_id", ":limit"))
_PAGE_SQLITE = _PAGE_SQL.format("?", "?", "?", "?", "?")
# The whole table in id order, every account at once: each database page is read and written once per
# sweep (an account-by-account walk touches every page once per account when accounts' rows interleave).
_WIDE_SQL = (
    "SELECT id, name, ciphertext, key_version, account_id FROM credentials "
    "WHERE key_version + 0 < {} AND id > {} "
    "AND id NOT IN (SELECT credential_id FROM rotation_failures WHERE job_id = {}) "
    "ORDER BY id LIMIT {}"
)
_WIDE = text(_WIDE_SQL.format(":below", ":after", ":job_id", ":limit"))
_WIDE_SQLITE = _WIDE_SQL.format("?", "?", "?", "?")
_CURRENT = text("SELECT id, ciphertext FROM credentials WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))
_CAS_SQLITE = "UPDATE credentials SET ciphertext = ?, key_version = ? WHERE id = ? AND ciphertext = ?"
_CAS_ONE = text("UPDATE credentials SET ciphertext = :new, key_version = :ver WHERE id = :id AND ciphertext = :old")
# One statement for the whole batch; the count comes back as one row instead of one id per landed row. The
# redundant "c.id = ANY(ids)" lets the planner fetch just the batch's rows by primary key even when its
# estimate of unnest() (100 rows) or of the table is off.
_CAS_POSTGRES = text(
    "WITH landed AS (UPDATE credentials AS c SET ciphertext = v.new, key_version = v.ver "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:olds AS text[]), "
    "CAST(:news AS text[]), CAST(:vers AS integer[])) "
    "AS v(id, old, new, ver) WHERE c.id = ANY(CAST(:ids AS bigint[])) AND c.id = v.id AND c.ciphertext = v.old "
    "RETURNING 1) SELECT count(*) FROM landed"
)
# PostgreSQL 14+: reltuples is -1 until the table's first VACUUM or ANALYZE.
_NEVER_ANALYZED = text("SELECT reltuples < 0 FROM pg_class WHERE oid = CAST('credentials' AS regclass)")


def _fetch_dbapi(conn: Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    # SQLite's rows straight from the DB-API cursor: no result object, no Row per row.
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(sql, params)
        return list(cur.fetchall())
    finally:
        cur.close()


async def ensure_planner_stats(s: AsyncSession) -> bool:
    """PostgreSQL: ANALYZE the credentials table if it never was (a fresh import, a restored dump). Without
    statistics every page and every compare-and-set is planned as a scan of the whole table; autovacuum
    may take minutes to get there. Returns whether it ran; a refusal (not the owner) is not an error."""
    if s.get_bind().dialect.name != "postgresql":
        return False
    conn = await s.connection()
    if not (await conn.execute(_NEVER_ANALYZED)).scalar():
        return False
    try:
        async with conn.begin_nested():
            await conn.execute(text("ANALYZE credentials"))
    except DBAPIError:
        log.info("could not ANALYZE credentials before the rotation; continuing without statistics")
        return False
    return True


async def read_page(
    s: AsyncSession, *, account_id: int, below: int, after_id: int, job_id: int, limit: int
) -> Sequence[OldRow]:
    """Rows of one account below version `below`, after `after_id`, not already failed in this job."""
    conn = await s.connection()
    if conn.dialect.name == "sqlite":
        return await conn.run_sync(_fetch_dbapi, _PAGE_SQLITE, (account_id, below, after_id, job_id, limit))
    params = {"account_id": account_id, "below": below, "after": after_id, "job_id": job_id, "limit": limit}
    return (await conn.execute(_PAGE, params)).all()


async def read_wide_page(s: AsyncSession, *, below: int, after_id: int, job_id: int, limit: int) -> Sequence[OldRow]:
    """Rows of every account below version `below`, after `after_id`, not already failed in this job."""
    conn = await s.connection()
    if conn.dialect.name == "sqlite":
        return await conn.run_sync(_fetch_dbapi, _WIDE_SQLITE, (below, after_id, job_id, limit))
    params = {"below": below, "after": after_id, "job_id": job_id, "limit": limit}
    return (await conn.execute(_WIDE, params)).all()


async def landed_ids(s: AsyncSession, updates: list[Rewrapped]) -> set[int]:
    """Which of `updates` are in place (in the session's transaction): the rare path after a compare-and-set
    found rows changed by a concurrent writer."""
    if not updates:
        return set()
    conn = await s.connection()
    mine = {u[2]: u[0] for u in updates}
    rows = (await conn.execute(_CURRENT, {"ids": list(mine)})).tuples().all()
    return {id_ for id_, ct in rows if mine.get(id_) == ct}


async def compare_and_set(s: AsyncSession, updates: list[Rewrapped]) -> int:
    """Write each rewrapped ciphertext only where the row still holds what was read; return how many landed.

    A row changed in between was re-encrypted (at the latest version) by its writer: it is skipped, never
    overwritten."""
    if not updates:
        return 0
    conn = await s.connection()
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return int((await conn.exec_driver_sql(_CAS_SQLITE, updates)).rowcount)
    news, vers, ids, olds = (list(c) for c in zip(*updates, strict=True))
    if dialect == "postgresql":
        params = {"ids": ids, "olds": olds, "news": news, "vers": vers}
        return int((await conn.execute(_CAS_POSTGRES, params)).scalar_one())
    landed = 0  # any other database: one statement per row, exact
    for new, ver, id_, old in updates:
        res = await conn.execute(_CAS_ONE, {"new": new, "ver": ver, "id": id_, "old": old})
        landed += int(res.rowcount)
    return landed
