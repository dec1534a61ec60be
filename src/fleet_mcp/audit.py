"""The append-only, hash-chained audit log: append inside the caller's transaction, verify, query, export."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, SecretBytes, SecretStr
from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import AuditEntry, AuditHead
from fleet_mcp.errors import ExternalError, InvalidArgument, RateLimited
from fleet_mcp.keyring import check_private_file, create_private_file
from fleet_mcp.ratelimit import InvalidCallLimiter

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


#: Refused calls that cost an audit row each and are budgeted per principal: decision -> (what, hint).
LIMITED_DECISIONS = {
    "invalid": ("invalid", "fix the arguments (see the tool's input schema) before calling again"),
    "deny": ("denied", "the policy or your roles deny this call: system_policy_explain says why; ask an admin "
                       "instead of retrying"),
}


class TooManyInvalidCalls(RateLimited):
    """A principal sent more invalid (or denied) calls than its budget; the call was neither run nor
    recorded."""

    def __init__(self, principal: str, retry_after: int, decision: str = "invalid") -> None:
        what, hint = LIMITED_DECISIONS[decision]
        super().__init__(f"too many {what} calls from {principal}, retry after {retry_after} s",
                         hint=hint, retry_after_s=retry_after)


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


# -- keyed argument digests -----------------------------------------------------------------------
#: The scheme of digests written since 0.2: HMAC-SHA256 under the server's digest key. Older rows hold a
#: bare 64-hex unsalted SHA-256 (no prefix); they keep it, since the chain hash covers the stored string.
DIGEST_SCHEME = "hmac-sha256:"
DIGEST_KEY_BYTES = 32
_digest_key: bytes | None = None


def set_digest_key(key: bytes) -> None:
    """Install the server's digest key (App.start does, before any call); every digest after it uses it."""
    global _digest_key
    if len(key) < 16:
        raise ValueError("the audit digest key must be at least 16 bytes")
    _digest_key = bytes(key)


def _current_key() -> bytes:
    global _digest_key
    if _digest_key is None:
        # Only code that never started an App (unit tests, scripts) gets here: a random per-process key keeps
        # digests keyed; an approval it binds cannot be executed by another process (fails closed).
        log.warning("no audit digest key installed; using a random key for this process only")
        _digest_key = secrets.token_bytes(DIGEST_KEY_BYTES)
    return _digest_key


def digest_key_from_secret(secret: str) -> bytes:
    """A digest key derived from a configured secret (FLEET_MCP_AUDIT_KEY), the same in every process."""
    if len(secret) < 16:
        raise ValueError("FLEET_MCP_AUDIT_KEY must be at least 16 characters")
    return hmac.new(b"fleet-mcp audit digest key v1", secret.encode(), hashlib.sha256).digest()


def load_or_create_digest_key(path: Path) -> bytes:
    """Read the digest key file (base64 of 32 bytes), creating it with mode 0600 when missing; refuse a file
    that group or others may read. Two processes creating it at once end up with the same key."""
    path = Path(path)
    create_private_file(path, base64.b64encode(secrets.token_bytes(DIGEST_KEY_BYTES)) + b"\n")
    check_private_file(path, "audit key")
    try:
        key = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != DIGEST_KEY_BYTES:
        raise InvalidArgument(f"audit key file {path} does not hold a base64 32-byte key",
                              hint="restore it from backup (see docs/security/identity-audit.md, key rotation)")
    return key


def digest_key_for(settings: Any) -> bytes:
    """The digest key the settings name: FLEET_MCP_AUDIT_KEY when set, else the key file (created)."""
    secret = getattr(settings, "audit_key", None)
    if secret is not None:
        return digest_key_from_secret(secret.get_secret_value())
    path = getattr(settings, "audit_key_file", None) or Path(settings.data_dir) / "audit.key"
    return load_or_create_digest_key(path)


def arguments_digest(arguments: Mapping[str, Any], *, key: bytes | None = None) -> str:
    """`hmac-sha256:<hex>`: HMAC-SHA256, under the server's digest key, of the canonical JSON of the exact
    arguments (secrets included, so a changed secret changes the digest). Keyed, so whoever reads the
    digest (viewers of the audit log or an approval request) cannot test guesses of a secret against it."""
    mac = hmac.new(key or _current_key(), canonical_json(_reveal(arguments)).encode("utf-8", "surrogatepass"), hashlib.sha256)
    return DIGEST_SCHEME + mac.hexdigest()


def digest_matches(arguments: Mapping[str, Any], stored: str, *, key: bytes | None = None) -> bool:
    """Whether ARGUMENTS are those a stored digest binds, for either scheme (a digest written before keyed
    digests is a bare unsalted SHA-256; it is only ever compared, never written again)."""
    if stored.startswith(DIGEST_SCHEME):
        return hmac.compare_digest(arguments_digest(arguments, key=key), stored)
    legacy = hashlib.sha256(canonical_json(_reveal(arguments)).encode("utf-8", "surrogatepass")).hexdigest()
    return hmac.compare_digest(legacy, stored)


def short_digest(digest: str, n: int = 16) -> str:
    """The first N hex characters of a digest, without its scheme (for prompts)."""
    return digest.removeprefix(DIGEST_SCHEME)[:n]


_HASHED = ("seq", "principal", "account", "tool", "args_digest", "arguments", "decision", "outcome", "detail",
           "approval_id", "prev_hash")


def _row_hash(entry: AuditEntry | Mapping[str, Any]) -> str:
    get: Callable[[str], Any] = entry.get if isinstance(entry, Mapping) else (lambda k: getattr(entry, k))
    body = {k: get(k) for k in _HASHED}
    body["at"] = get("at").astimezone(dt.UTC).isoformat(timespec="microseconds")
    body["duration_ms"] = round(float(get("duration_ms")), 3)
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


async def ensure_head(session: AsyncSession | AsyncConnection) -> None:
    """Create the head row if missing; safe when many sessions race to do it."""
    bind = session if isinstance(session, AsyncConnection) else session.bind
    dialect = bind.dialect.name if bind is not None else "sqlite"
    from sqlalchemy.dialects import postgresql, sqlite

    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(insert_(AuditHead).values(id=1, seq=0, hash=GENESIS).on_conflict_do_nothing())


#: The most a row stores of a call's (masked) arguments or detail; larger ones are kept as size and digest.
MAX_STORED_BYTES = 16 * 1024


def _bounded(value: dict[str, Any], what: str) -> dict[str, Any]:
    """VALUE when its JSON fits in MAX_STORED_BYTES, else a small stand-in: its size, top-level keys (a few,
    shortened) and the SHA-256 of its (already masked) JSON, so a caller cannot make one row arbitrarily big."""
    text = canonical_json(value)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= MAX_STORED_BYTES:
        return value
    keys = [str(k)[:64] for k in list(value)[:20]]
    return {"_omitted": f"{what} of {size} bytes exceed the {MAX_STORED_BYTES}-byte limit of an audit row",
            "bytes": size, "keys": keys,
            "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()}


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
        "arguments": _bounded(mask(dict(arguments)), "arguments"),
        "decision": decision,
        "outcome": outcome,
        "detail": _bounded(mask(dict(detail)), "detail") if detail else None,
        "approval_id": approval_id,
        "duration_ms": round(float(duration_ms), 3),
    }


_HEAD = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
_INSERT = insert(cast(Table, AuditEntry.__table__))
_MOVE_HEAD = update(cast(Table, AuditHead.__table__)).where(AuditHead.id == 1).values(seq=bindparam("new_seq"),
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

    def __init__(self, engine: AsyncEngine, write_lock: WriteLock | None = None,
                 limiter: InvalidCallLimiter | None = None) -> None:
        self._engine = engine
        self._write_lock = write_lock
        #: Invalid calls (decision "invalid") beyond this per-principal budget are refused with RateLimited
        #: and not recorded one by one: the first refusal of a streak writes one summary row, and the next
        #: recorded invalid call says how many were refused in between.
        self.limiter = limiter if limiter is not None else InvalidCallLimiter()
        self._pending: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(self, **fields: Any) -> int:
        """Queue one row (keywords of `build_row`), wait until it is committed; returns its seq. Raises
        AuditUnavailable when the database refused the batch, TooManyInvalidCalls when an invalid call is
        over its principal's budget (after writing the streak's one summary row)."""
        if fields.get("decision") in LIMITED_DECISIONS:
            fields = await self._limit_refused(fields)
        return await self._append_row(build_row(**fields))

    async def _limit_refused(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Invalid and denied calls each have a per-principal budget (separate buckets)."""
        principal, decision = str(fields.get("principal", "")), str(fields["decision"])
        what = LIMITED_DECISIONS[decision][0]
        bucket = principal if decision == "invalid" else f"{decision}\x00{principal}"
        wait = self.limiter.check(bucket)
        if wait is None:
            refused = self.limiter.take_refused(bucket)
            if refused:
                fields = {**fields, "detail": {**(fields.get("detail") or {}), f"refused_{what}_calls": refused}}
            return fields
        if wait.first:
            await self._append_row(build_row(
                principal=principal, account=fields.get("account", ""), tool=fields.get("tool", ""), arguments={},
                decision=decision, outcome="rate_limited",
                detail={"reason": f"too many {what} calls; further ones are refused and counted, not recorded",
                        "retry_after_s": wait.seconds}))
        raise TooManyInvalidCalls(principal, wait.seconds, decision)

    async def _append_row(self, row: dict[str, Any]) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((row, fut))
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


async def count_rows(session: AsyncSession, *, account: str) -> int:
    """How many audit rows belong to one account."""
    return int((await session.execute(
        select(func.count()).select_from(AuditEntry).where(AuditEntry.account == account))).scalar_one())


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
