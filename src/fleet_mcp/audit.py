"""The append-only, hash-chained audit log: append inside the caller's transaction, verify, query, export."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretBytes, SecretStr
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import AuditEntry, AuditHead
from fleet_mcp.errors import ExternalError

if TYPE_CHECKING:
    from fleet_mcp.db.uow import WriteLock

log = logging.getLogger(__name__)

GENESIS = "0" * 64
MASK = "***"
# A key names a secret when its last word is one of these (acceptance_token, vault_token, password,
# private_key…); `token_ttl_seconds` or `credential` (a reference by name) are not secrets.
_SECRET_KEY = re.compile(
    r"(?:^|[_-])(?:secret|secret_id|token|password|passwd|passphrase|private_key|privatekey|ciphertext|"
    r"api_key|apikey|master_key|plaintext)$",
    re.IGNORECASE,
)


class AuditUnavailable(ExternalError):
    """The audit row of a call could not be committed; the call's result is withheld."""

    def __init__(self) -> None:
        super().__init__("the audit log could not be written, so the result is withheld",
                         hint="check the server's database and log, then retry the call")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def mask(value: Any, key: str | None = None) -> Any:
    """Return a JSON-ready copy with secret values replaced by '***' (by type and by key name)."""
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if key is not None and is_secret_key(key) and value not in (None, "", [], {}):
        return MASK
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python")
    if isinstance(value, Mapping):
        return {str(k): mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [mask(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return MASK
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr | SecretBytes):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return _reveal(value.model_dump(mode="python"))
    if isinstance(value, Mapping):
        return {str(k): _reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(v) for v in value]
    return value


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the exact arguments (secrets included, so a changed secret
    changes the digest; the digest itself reveals nothing about a 256-bit-entropy secret, and only
    a digest of the whole argument set is stored)."""
    return hashlib.sha256(canonical_json(_reveal(arguments)).encode()).hexdigest()


_HASHED = ("seq", "principal", "account", "tool", "args_digest", "arguments", "decision", "outcome", "detail",
           "approval_id", "prev_hash")


def _row_hash(entry: AuditEntry | Mapping[str, Any]) -> str:
    get = entry.get if isinstance(entry, Mapping) else (lambda k: getattr(entry, k))
    body = {k: get(k) for k in _HASHED}
    body["at"] = get("at").astimezone(dt.UTC).isoformat(timespec="microseconds")
    body["duration_ms"] = round(float(get("duration_ms")), 3)
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


async def ensure_head(session: AsyncSession | AsyncConnection) -> None:
    """Create the head row if missing; safe when many sessions race to do it."""
    bind = session if isinstance(session, AsyncConnection) else session.bind
    dialect = bind.dialect.name if bind is not None else "sqlite"
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    await session.execute(insert(AuditHead).values(id=1, seq=0, hash=GENESIS).on_conflict_do_nothing())


def build_row(
    *,
    principal: str,
    account: str,
    tool: str,
    arguments: Mapping[str, Any],
    decision: str,
    outcome: str,
    detail: Mapping[str, Any] | None = None,
    approval_id: str | None = None,
    duration_ms: float = 0.0,
) -> dict[str, Any]:
    """The masked column values of one row, without its place in the chain (seq, prev_hash, hash)."""
    return {
        # Microsecond precision survives both backends, so the hash recomputes identically on read.
        "at": utcnow(),
        "principal": principal,
        "account": account,
        "tool": tool,
        "args_digest": arguments_digest(arguments),
        "arguments": mask(dict(arguments)),
        "decision": decision,
        "outcome": outcome,
        "detail": mask(dict(detail)) if detail else None,
        "approval_id": approval_id,
        "duration_ms": round(float(duration_ms), 3),
    }


_HEAD = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
_INSERT = insert(AuditEntry.__table__)
_MOVE_HEAD = update(AuditHead.__table__).where(AuditHead.id == 1).values(seq=bindparam("new_seq"),
                                                                          hash=bindparam("new_hash"))


async def append_rows(db: AsyncSession | AsyncConnection, rows: list[dict[str, Any]]) -> int:
    """Chain and insert rows built by `build_row` in the caller's transaction (a session or a connection);
    returns the last seq. The head row's lock (PostgreSQL) or the write transaction (SQLite) serializes
    appenders everywhere; three statements whatever the number of rows."""
    head = (await db.execute(_HEAD)).one_or_none()
    if head is None:
        await ensure_head(db)
        head = (await db.execute(_HEAD)).one()
    seq, prev = head
    for row in rows:
        seq += 1
        row["seq"] = seq
        row["prev_hash"] = prev
        row["hash"] = prev = _row_hash(row)
    await db.execute(_INSERT, rows[0] if len(rows) == 1 else rows)
    await db.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev})
    return seq


async def append(session: AsyncSession, **fields: Any) -> int:
    """Append one row in the caller's transaction (keywords of `build_row`); returns its seq."""
    return await append_rows(session, [build_row(**fields)])


class AuditWriter:
    """Group commit for rows that have no other write to join (read-only calls, refusals): concurrent
    callers' rows go into one transaction, and each caller returns only once its row is committed.
    A row, once handed over, is written even if its caller is cancelled."""

    def __init__(self, engine: AsyncEngine, write_lock: WriteLock | None = None) -> None:
        self._engine = engine
        self._write_lock = write_lock
        self._pending: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(self, **fields: Any) -> int:
        """Queue one row (keywords of `build_row`), wait until it is committed; returns its seq. Raises
        AuditUnavailable when the database refused the batch."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((build_row(**fields), fut))
        try:
            await self._turn(fut)
            # Usually done by now; else a flush that a cancelled leader left running holds the row.
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if not fut.done():  # have it written without us
                self._spawn(self._turn(fut))
            raise

    async def _turn(self, fut: asyncio.Future[int]) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            # Whoever holds the lock writes everything queued so far; later arrivals are then done. The
            # flush runs as its own task: a cancelled leader must not abandon the rows of its followers.
            if not fut.done():
                await asyncio.shield(self._spawn(self._flush()))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self._write_lock is not None:  # a unit of work of its own, in its own task
                    await stack.enter_async_context(self._write_lock.hold())
                conn = await stack.enter_async_context(self._engine.begin())
                last = await append_rows(conn, [row for row, _ in batch])
        except Exception:
            log.exception("could not append %d audit row(s); their calls report the audit as unavailable",
                          len(batch))
            for _, f in batch:
                if not f.done():
                    f.set_exception(AuditUnavailable())
            return
        first = last - len(batch) + 1
        for i, (_, f) in enumerate(batch):
            if not f.done():
                f.set_result(first + i)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries_checked: int
    first_bad_seq: int | None
    problem: str | None = None


async def verify(session: AsyncSession, *, page: int = 5000) -> VerifyResult:
    """Walk the chain in seq order; report the first row whose seq, link or hash is wrong."""
    expected_seq = 1
    prev = GENESIS
    checked = 0
    last_seq = 0
    while True:
        rows = (
            await session.execute(
                select(AuditEntry).where(AuditEntry.seq >= expected_seq).order_by(AuditEntry.seq).limit(page)
            )
        ).scalars().all()
        if not rows:
            break
        for row in rows:
            if row.seq != expected_seq:
                return VerifyResult(False, checked, expected_seq, f"seq {expected_seq} is missing")
            if row.prev_hash != prev:
                return VerifyResult(False, checked, row.seq, "link to the previous row is broken")
            if _row_hash(row) != row.hash:
                return VerifyResult(False, checked, row.seq, "row content does not match its hash")
            prev = row.hash
            last_seq = row.seq
            expected_seq += 1
            checked += 1
        session.expunge_all()
    head = await session.get(AuditHead, 1)
    if head is not None and (head.seq != last_seq or head.hash != prev):
        return VerifyResult(False, checked, last_seq + 1, "rows after the last present seq were removed")
    return VerifyResult(True, checked, None)


async def query(
    session: AsyncSession,
    *,
    tool: str | None = None,
    principal: str | None = None,
    account: str | None = None,
    since: dt.datetime | None = None,
    approval_id: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    stmt = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)
    if tool:
        stmt = stmt.where(AuditEntry.tool == tool)
    if principal:
        stmt = stmt.where(AuditEntry.principal == principal)
    if account:
        stmt = stmt.where(AuditEntry.account == account)
    if since:
        stmt = stmt.where(AuditEntry.at >= since)
    if approval_id:
        stmt = stmt.where(AuditEntry.approval_id == approval_id)
    return list((await session.execute(stmt)).scalars().all())


def entry_dict(e: AuditEntry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "at": e.at.isoformat(),
        "principal": e.principal,
        "account": e.account,
        "tool": e.tool,
        "args_digest": e.args_digest,
        "arguments": e.arguments,
        "decision": e.decision,
        "outcome": e.outcome,
        "detail": e.detail,
        "approval_id": e.approval_id,
        "duration_ms": e.duration_ms,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


async def export(session: AsyncSession, *, page: int = 5000) -> AsyncIterator[dict[str, Any]]:
    after = 0
    while True:
        rows = (
            await session.execute(select(AuditEntry).where(AuditEntry.seq > after).order_by(AuditEntry.seq).limit(page))
        ).scalars().all()
        if not rows:
            return
        for row in rows:
            yield entry_dict(row)
        after = rows[-1].seq
        session.expunge_all()
