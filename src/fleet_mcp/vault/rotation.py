"""The pepper rotation engine: rotate the transit key, then rewrap every ciphertext of every account in
batches, crash-safely and resumably.

It is a background job, not a tool call: it owns its transactions through the app's sessionmaker. Each
batch commits the compare-and-set updates, the job's progress and cursor, and an audit row together, so
a crash loses at most the batch in flight and a resume continues at the cursor. The rewrap runs in two
phases: first the whole table in id order (`cursor_account_id` is None meanwhile), then account by account,
which rewraps what writers left behind and moves each account's key version. Finalize and trim (the
steps after a rotation) live in `fleet_mcp.vault.finalize` and are re-exported here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from itertools import repeat
from typing import Any, cast

import anyio
from sqlalchemy import Table, Update, bindparam, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleet_mcp import audit, events
from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Account
from fleet_mcp.errors import Busy, Conflict, ExternalError, FleetError, NotFound
from fleet_mcp.vault.batches import (
    ACCOUNT_ID,
    CIPHERTEXT,
    ID,
    KEY_VERSION,
    NAME,
    OldRow,
    Rewrapped,
    compare_and_set,
    ensure_planner_stats,
    landed_ids,
    read_page,
    read_wide_page,
)
from fleet_mcp.vault.finalize import TRIM_WARNING, finalize, trim
from fleet_mcp.vault.models import JOB_ACTIVE, Credential, RotationFailure, RotationJob
from fleet_mcp.vault.rotation_jobs import active_job, count_below, get_job, job_info, plan_job
from fleet_mcp.vault.schemas import RotationJobInfo
from fleet_mcp.vault.transit import TransitBackend, TransitItemError, ciphertext_version
from fleet_mcp.vault.transit.ciphertext import PREFIX

log = logging.getLogger(__name__)

#: `async progress(done, total, message)`
ProgressFn = Callable[[int, int, str], Awaitable[None]]
AUDIT_TOOL = "system_rotate_vault_transit_pepper"
_HOST = socket.gethostname()[:40]
_instance = f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"
_running: set[int] = set()  # jobs this process is driving right now
_tasks: set[asyncio.Task[Any]] = set()  # strong references to background runs


#: The job's columns every progress save writes (besides the JSON ones and the timestamps).
_SAVED = (
    "status",
    "to_version",
    "total",
    "rewrapped",
    "failed",
    "skipped",
    "cursor_account_id",
    "cursor_row_id",
    "cursor_pass",
    "batches",
    "error",
)


@functools.cache
def _save_stmt(extra: tuple[str, ...]) -> Update:
    """The progress UPDATE for a set of extra columns, guarded by ownership; bound as `p_<column>`."""
    t = cast(Table, RotationJob.__table__)
    cols = (*_SAVED, "account_progress", "skipped_accounts", "heartbeat_at", "updated_at", *extra)
    return (
        update(t)
        .where(t.c.id == bindparam("w_job_id"), t.c.owner == bindparam("w_owner"))
        .values({c: bindparam(f"p_{c}", type_=t.c[c].type) for c in cols})
    )


#: What a batch commit records: a pause starts again from these.
_PROGRESS = (
    RotationJob.total,
    RotationJob.rewrapped,
    RotationJob.failed,
    RotationJob.skipped,
    RotationJob.account_progress,
    RotationJob.skipped_accounts,
    RotationJob.cursor_account_id,
    RotationJob.cursor_row_id,
    RotationJob.cursor_pass,
    RotationJob.batches,
)


def _forget(task: asyncio.Task[Any]) -> None:
    _tasks.discard(task)
    if not task.cancelled():
        task.exception()  # a rewrap abandoned after a failure elsewhere: its error is not news


def instance_id() -> str:
    """`host:pid:random`: who owns a running job (on the same host, a dead pid frees the job at once)."""
    global _instance
    if not _instance.startswith(f"{_HOST}:{os.getpid()}:"):  # forked child: a new instance
        _instance = f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"
    return _instance


def running_here(job_id: int) -> bool:
    """Whether this process is driving the job right now."""
    return job_id in _running


def _owner_is_dead(owner: str | None) -> bool:
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != _HOST or not pid.isdigit() or owner == instance_id():
        return False
    if int(pid) == os.getpid():
        return True  # this pid, another random part: an earlier incarnation of this process
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _LostOwnership(Exception):
    """Another process claimed the job (ours looked dead to it); stop without writing."""


class RotationEngine:
    """Runs rotation jobs with short transactions of its own (one per batch)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        transit: TransitBackend,
        *,
        batch_size: int = 250,
        stale_after: float = 120.0,
        max_passes: int = 3,
    ) -> None:
        self.sm = sessionmaker
        self.transit = transit
        self.batch_size = batch_size
        #: A running job whose heartbeat is older than this (seconds) may be claimed by another process.
        self.stale_after = stale_after
        #: Sweeps per account: later sweeps catch rows written below the target behind the cursor.
        self.max_passes = max_passes

    # -- entry points ------------------------------------------------------------------------------
    async def start(
        self,
        *,
        started_by: str,
        batch_size: int | None = None,
        reencrypt_existing: bool = True,
        progress: ProgressFn | None = None,
        run: bool = True,
    ) -> RotationJobInfo:
        """Record a job (own transaction; Busy if one is active), then run it unless `run` is False."""
        async with self.sm() as s, s.begin():
            job = await plan_job(
                s,
                self.transit,
                started_by=started_by,
                batch_size=batch_size or self.batch_size,
                reencrypt_existing=reencrypt_existing,
            )
        if not run:
            return job_info(job)
        return await self.run(job.id, progress=progress)

    async def resume(self, job_id: int, *, progress: ProgressFn | None = None) -> RotationJobInfo:
        """Continue a pending, paused or abandoned job from its cursor."""
        return await self.run(job_id, progress=progress)

    async def run(self, job_id: int, *, progress: ProgressFn | None = None) -> RotationJobInfo:
        """Claim the job and drive it until it completes or pauses (e.g. Vault unreachable)."""
        if job_id in _running:
            raise Busy(f"rotation job {job_id} is already running in this process", job_id=job_id)
        _running.add(job_id)
        try:
            job = await self._claim(job_id)
            return await self._drive(job, progress)
        finally:
            _running.discard(job_id)

    def launch(
        self, job_id: int, *, progress: ProgressFn | None = None, wait_visible: float = 60.0
    ) -> asyncio.Task[Any]:
        """Run a job in the background. Its row may not be committed yet (planned in a tool's unit of work):
        the task waits up to `wait_visible` seconds for it, and gives up quietly if it never appears."""

        async def body() -> None:
            deadline = anyio.current_time() + wait_visible
            while True:
                try:
                    async with self.sm() as s:
                        if await s.get(RotationJob, job_id) is not None:
                            break
                except OperationalError:  # SQLite: the creating unit of work still holds the write lock
                    pass
                if anyio.current_time() > deadline:
                    log.warning("rotation job %s never became visible; not started", job_id)
                    return
                await anyio.sleep(0.1)
            try:
                await self.run(job_id, progress=progress)
            except (Busy, Conflict) as exc:
                log.info("rotation job %s not run: %s", job_id, exc.message)
            except Exception:
                log.exception("rotation job %s crashed", job_id)

        task = asyncio.get_running_loop().create_task(body(), name=f"rotation-job-{job_id}")
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
        return task

    # -- job state ---------------------------------------------------------------------------------
    def check_resumable(self, job_id: int, job: RotationJob | None) -> RotationJob:
        """Raise unless this process may run the job now (it exists, is active, and no live process runs it)."""
        if job is None:
            raise NotFound(f"no rotation job {job_id}", job_id=job_id)
        if job.status not in JOB_ACTIVE:
            raise Conflict(
                f"rotation job {job_id} is {job.status}; only pending, running or paused jobs resume",
                hint="start a new rotation to retry what is left",
                job_id=job_id,
            )
        if job.status == "running" and job.owner != instance_id() and not _owner_is_dead(job.owner):
            age = (utcnow() - job.heartbeat_at).total_seconds() if job.heartbeat_at else 0.0
            if age < self.stale_after:
                raise Busy(
                    f"rotation job {job_id} is running in process {job.owner} (last heartbeat {age:.0f} s ago)",
                    hint=f"wait, or resume it after {self.stale_after:.0f} s without a heartbeat",
                    job_id=job_id,
                )
        return job

    async def _claim(self, job_id: int) -> RotationJob:
        me = instance_id()
        async with self.sm() as s, s.begin():
            job = (
                await s.execute(select(RotationJob).where(RotationJob.id == job_id).with_for_update())
            ).scalar_one_or_none()
            job = self.check_resumable(job_id, job)
            now = utcnow()
            job.status, job.owner, job.heartbeat_at, job.error, job.updated_at = "running", me, now, None, now
            job.started_at = job.started_at or now
            await self._audit(
                s,
                job,
                "-",
                "claimed",
                {"owner": me, "cursor_account_id": job.cursor_account_id, "cursor_row_id": job.cursor_row_id},
            )
        return job

    async def _audit(
        self,
        s: AsyncSession,
        job: RotationJob,
        account: str,
        outcome: str,
        detail: dict[str, Any],
        **arguments: Any,
    ) -> None:
        await audit.append(
            s,
            principal=job.started_by,
            account=account,
            tool=AUDIT_TOOL,
            arguments={"job_id": job.id, **arguments},
            decision="background",
            outcome=outcome,
            detail=detail,
        )

    async def _save(self, s: AsyncSession, job: RotationJob, **extra: Any) -> None:
        """Write the job's progress in `s` — only while this process still owns the job."""
        now = utcnow()
        job.heartbeat_at = job.updated_at = now
        values = {c: getattr(job, c) for c in _SAVED}
        values.update(
            account_progress=dict(job.account_progress),
            skipped_accounts=list(job.skipped_accounts),
            heartbeat_at=now,
            updated_at=now,
            **extra,
        )
        # A statement built once per set of columns: building and caching a fresh UPDATE every batch costs
        # more than running it.
        params = {f"p_{k}": v for k, v in values.items()}
        conn = await s.connection()
        res = await conn.execute(
            _save_stmt(tuple(sorted(extra))), {"w_job_id": job.id, "w_owner": instance_id(), **params}
        )
        if res.rowcount != 1:
            raise _LostOwnership()

    async def _end(self, job: RotationJob, status: str, error: str | None) -> None:
        job.status, job.error = status, error
        finished = status not in JOB_ACTIVE
        extra: dict[str, Any] = {"owner": None}
        if finished:
            extra.update(active_slot=None, finished_at=utcnow())
        async with self.sm() as s, s.begin():
            await self._save(s, job, **extra)
            detail = {
                "status": status,
                "rewrapped": job.rewrapped,
                "failed": job.failed,
                "skipped": job.skipped,
                "to_version": job.to_version,
                "error": error,
            }
            await self._audit(s, job, "-", status, detail)
            severity = "high" if status == "paused" else ("medium" if job.failed else "info")
            await events.emit(
                s,
                account_id=None,
                kind=f"vault.rotation_{status}",
                severity=severity,
                payload={"job_id": job.id, **detail},
            )
        job.owner = None

    async def _reload_progress(self, job: RotationJob) -> None:
        """Take the job's progress from its row: what the last committed batch recorded. A batch whose
        transaction failed (or was interrupted) moved the counters in memory only."""
        async with self.sm() as s:
            row = (await s.execute(select(*_PROGRESS).where(RotationJob.id == job.id))).one()
        for col, value in zip(_PROGRESS, row, strict=True):
            setattr(job, col.key, value)

    async def _pause(self, job: RotationJob, error: str) -> None:
        try:
            await self._reload_progress(job)
            await self._end(job, "paused", error)
        except _LostOwnership:
            pass
        except Exception:  # the database may be what failed; the stale heartbeat frees the job later
            log.exception("could not record the pause of rotation job %s", job.id)

    # -- the run -----------------------------------------------------------------------------------
    async def _drive(self, job: RotationJob, progress: ProgressFn | None) -> RotationJobInfo:
        async def report(msg: str) -> None:
            if progress is not None:
                await progress(job.rewrapped + job.failed + job.skipped, max(job.total, 1), msg)

        try:
            if job.to_version is None:
                await self._rotate_phase(job)
                await report(f"rotated {job.key_name} to v{job.to_version}; {job.total} ciphertexts to rewrap")
            if job.reencrypt_existing:
                async with self.sm() as s, s.begin():
                    await ensure_planner_stats(s)
                async with self.sm() as s:
                    accounts = (await s.execute(select(Account.id, Account.name).order_by(Account.id))).all()
                swept = job.cursor_account_id is None
                if swept:
                    # Phase one: the whole table in id order. Phase two, account by account, then finds
                    # (almost) nothing left to rewrap and moves each account's key version.
                    await self._sweep(job, None, dict(accounts), report)
                    job.cursor_account_id = accounts[0].id if accounts else None
                    job.cursor_row_id = job.cursor_pass = 0
                for account_id, name in accounts:
                    if job.cursor_account_id is None or account_id >= job.cursor_account_id:
                        await self._rewrap_account(job, account_id, name, report, swept=swept)
                await self._recheck(job, report)
            status = "completed_with_failures" if job.failed else "completed"
            await self._end(job, status, None)
            await report(f"{status}: {job.rewrapped} rewrapped, {job.failed} failed, {job.skipped} skipped")
        except _LostOwnership:
            log.warning("rotation job %s was taken over by another process; stopping", job.id)
        except (FleetError, OperationalError) as exc:
            # Vault unreachable, sealed, denied, key missing, database locked: pause with the reason.
            what = exc.message if isinstance(exc, FleetError) else f"database error ({type(exc).__name__})"
            await self._pause(
                job,
                f"{what}. Fix the cause, then resume the job (system_vault_resume_rotation_job job_id={job.id}).",
            )
            await report(f"paused: {what}")
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
                reason = "interrupted (shutdown)" if cancelled else f"internal error ({type(exc).__name__})"
                await self._pause(job, f"{reason}; resume the job to continue")
            raise
        async with self.sm() as s:
            return await get_job(s, job.id)

    async def _rotate_phase(self, job: RotationJob) -> None:
        key = await self.transit.read_key()
        # A crash after rotate() but before it was recorded leaves latest > from_version: never rotate twice.
        to = key.latest_version if key.latest_version > job.from_version else await self.transit.rotate()
        async with self.sm() as s, s.begin():
            counts = dict(
                (
                    await s.execute(
                        select(Credential.account_id, func.count())
                        .where(Credential.key_version < to)
                        .group_by(Credential.account_id)
                    )
                ).all()
            )
            accounts = (await s.execute(select(Account.id, Account.name).order_by(Account.id))).all()
            job.to_version = to
            job.account_progress = {str(a.id): _progress_entry(a.name, int(counts.get(a.id, 0))) for a in accounts}
            job.total = sum(int(n) for n in counts.values())
            job.cursor_account_id = None  # the table-wide sweep comes first
            job.cursor_row_id = job.cursor_pass = 0
            await self._save(s, job)
            await self._audit(
                s,
                job,
                "-",
                "rotated",
                {"from_version": job.from_version, "to_version": to, "total": job.total},
            )

    async def _recheck(self, job: RotationJob, report: Callable[[str], Awaitable[None]]) -> None:
        """Before completing, look again across all accounts: a writer that encrypted under the old version
        and committed after its account was swept left a row behind. Sweep those accounts once more."""
        assert job.to_version is not None
        failed = select(RotationFailure.credential_id).where(RotationFailure.job_id == job.id)
        for _ in range(self.max_passes):
            async with self.sm() as s:
                stale = (
                    await s.execute(
                        select(Account.id, Account.name)
                        .where(
                            Account.id.in_(
                                select(Credential.account_id).where(
                                    Credential.key_version < job.to_version, Credential.id.not_in(failed)
                                )
                            )
                        )
                        .order_by(Account.id)
                    )
                ).all()
            if not stale:
                return
            for account_id, name in stale:
                job.account_progress.setdefault(str(account_id), _progress_entry(name, 0))["status"] = "pending"
                await self._rewrap_account(job, account_id, name, report)

    async def _rewrap_account(
        self,
        job: RotationJob,
        account_id: int,
        name: str,
        report: Callable[[str], Awaitable[None]],
        *,
        swept: bool = False,
    ) -> None:
        """Sweep one account (again, after the table-wide sweep when `swept`) and move its key version."""
        st = job.account_progress.setdefault(str(account_id), _progress_entry(name, 0))
        st["name"] = name
        if st["status"] in ("done", "done_with_failures", "skipped"):
            return
        if job.cursor_account_id != account_id or (swept and job.cursor_row_id == 0):
            job.cursor_account_id, job.cursor_row_id, job.cursor_pass = account_id, 0, 0
            if swept:
                # The table-wide sweep was this account's first pass; rows below the target now were
                # written behind it: a second pass, counted as such.
                async with self.sm() as s:
                    remaining = await self._remaining(s, job, account_id)
                if not remaining:
                    await self._finish_account(job, account_id, name, st, 0)
                    return
                job.cursor_pass = 1
                job.total += remaining
                st["total"] += remaining
        while True:
            remaining = await self._sweep(job, account_id, {account_id: name}, report)
            if remaining and job.cursor_pass + 1 < self.max_passes:
                # Rows below the target behind the cursor: a writer that encrypted before the rotation and
                # committed after we passed. Sweep the account again.
                job.cursor_row_id, job.cursor_pass = 0, job.cursor_pass + 1
                job.total += remaining
                st["total"] += remaining
                continue
            await self._finish_account(job, account_id, name, st, remaining)
            return

    async def _sweep(
        self,
        job: RotationJob,
        account_id: int | None,
        names: dict[int, str],
        report: Callable[[str], Awaitable[None]],
    ) -> int:
        """One pass from the cursor over one account, or over the whole table when `account_id` is None;
        return how many rows of the account are still below the target (0 for the whole table).

        A two-stage pipeline: while one page's compare-and-set commits, the next page is already being
        rewrapped (by Vault, or by the local keyring on a worker thread). Pages commit strictly in order,
        one transaction each, so the cursor and the counters only ever cover committed rows."""
        async with self.sm() as s:
            cur = await self._read(s, job, account_id, job.cursor_row_id)
            nxt = await self._read(s, job, account_id, cur[-1][ID]) if cur else []
        work = self._rewrap(cur) if cur else None
        try:
            while cur:
                assert work is not None
                results = await work
                work = self._rewrap(nxt) if nxt else None
                # The commit reads the page after `nxt`: it is next to be rewrapped while `nxt` commits.
                ahead, message = await self._commit(job, account_id, names, cur, results, nxt[-1][ID] if nxt else None)
                await report(message)
                cur, nxt = nxt, ahead
        finally:
            if work is not None and not work.done():
                work.cancel()  # nothing of it was written; its rows are read again from the cursor
        if account_id is None:
            return 0
        async with self.sm() as s:
            return await self._remaining(s, job, account_id)

    def _rewrap(self, rows: Sequence[OldRow]) -> asyncio.Task[list[str | TransitItemError]]:
        task = asyncio.ensure_future(self.transit.rewrap_batch([r[CIPHERTEXT] for r in rows]))
        _tasks.add(task)
        task.add_done_callback(_forget)
        return task

    async def _read(self, s: AsyncSession, job: RotationJob, account_id: int | None, after_id: int) -> Sequence[OldRow]:
        assert job.to_version is not None
        if account_id is None:
            return await read_wide_page(s, below=job.to_version, after_id=after_id, job_id=job.id, limit=job.batch_size)
        return await read_page(
            s, account_id=account_id, below=job.to_version, after_id=after_id, job_id=job.id, limit=job.batch_size
        )

    async def _remaining(self, s: AsyncSession, job: RotationJob, account_id: int) -> int:
        assert job.to_version is not None
        failed = select(RotationFailure.credential_id).where(RotationFailure.job_id == job.id)
        return int(
            (
                await s.execute(
                    select(func.count())
                    .select_from(Credential)
                    .where(
                        Credential.account_id == account_id,
                        Credential.key_version < job.to_version,
                        Credential.id.not_in(failed),
                    )
                )
            ).scalar_one()
        )

    def _sort(
        self,
        job: RotationJob,
        account_id: int | None,
        rows: Sequence[OldRow],
        results: list[str | TransitItemError],
    ) -> tuple[list[Rewrapped], list[RotationFailure]]:
        """Split a page's rewrap results into compare-and-set updates and failures to record."""
        to = job.to_version
        assert to is not None
        if len(rows) != len(results):
            raise ExternalError(f"the transit backend answered {len(results)} results for {len(rows)} ciphertexts")
        first = results[0] if results else None
        version = ciphertext_version(first) if type(first) is str else None
        if version is not None and version >= to:
            # The usual page: every item came back at one version. One C-level pass checks it.
            try:
                uniform = all(map(str.startswith, results, repeat(f"{PREFIX}{version}:")))  # type: ignore[arg-type]
            except TypeError:  # an item error among them
                uniform = False
            if uniform:
                return list(zip(results, repeat(version), (r[ID] for r in rows), (r[CIPHERTEXT] for r in rows))), []  # type: ignore[arg-type]
        updates: list[Rewrapped] = []
        failures: list[RotationFailure] = []
        for r, res in zip(rows, results, strict=True):
            if isinstance(res, TransitItemError):
                error = res.message
            elif (version := ciphertext_version(res)) is not None and version >= to:
                updates.append((res, version, r[ID], r[CIPHERTEXT]))
                continue
            else:
                error = f"rewrap answered version {version}, below the target v{to}"
            failures.append(
                RotationFailure(
                    job_id=job.id,
                    credential_id=r[ID],
                    account_id=account_id if account_id is not None else r[ACCOUNT_ID],  # type: ignore[misc]
                    credential_name=r[NAME],
                    key_version=r[KEY_VERSION],
                    error=error,
                )
            )
        return updates, failures

    async def _commit(
        self,
        job: RotationJob,
        account_id: int | None,
        names: dict[int, str],
        rows: Sequence[OldRow],
        results: list[str | TransitItemError],
        read_after: int | None,
    ) -> tuple[Sequence[OldRow], str]:
        """Commit one rewrapped page with the job's progress and its audit row; in the same transaction read
        the page after `read_after` (one fewer round trip), or nothing when it is None. Returns that page and
        a progress message."""
        to = job.to_version
        assert to is not None
        updates, failures = self._sort(job, account_id, rows, results)
        async with self.sm() as s, s.begin():
            landed = await compare_and_set(s, updates)
            if failures:
                s.add_all(failures)
            # Per account: [rewrapped, failed, skipped].
            if account_id is not None:
                per = {account_id: [landed, len(failures), len(updates) - landed]}
            else:
                owner = {r[ID]: r[ACCOUNT_ID] for r in rows}  # type: ignore[misc]
                kept = None if landed == len(updates) else await landed_ids(s, updates)
                per = {}
                for u in updates:
                    counts = per.setdefault(owner[u[2]], [0, 0, 0])
                    counts[0 if kept is None or u[2] in kept else 2] += 1
                for f in failures:
                    per.setdefault(f.account_id, [0, 0, 0])[1] += 1
            skipped = len(updates) - landed
            job.rewrapped += landed
            job.failed += len(failures)
            job.skipped += skipped
            job.batches += 1
            for acct, (rewrapped, failed, skipped_here) in per.items():
                name = names.get(acct, str(acct))
                st = job.account_progress.setdefault(str(acct), _progress_entry(name, 0))
                st["rewrapped"] += rewrapped
                st["failed"] += failed
                st["skipped"] += skipped_here
                if st["status"] == "pending":
                    st["status"] = "running"
                processed = st["rewrapped"] + st["failed"] + st["skipped"]
                if processed > st["total"]:  # rows that appeared after the job counted them (late writers)
                    job.total += processed - st["total"]
                    st["total"] = processed
            job.cursor_row_id = rows[-1][ID]
            await self._save(s, job)
            accounts = sorted(per)
            single = names.get(accounts[0], str(accounts[0])) if len(accounts) == 1 else None
            detail: dict[str, Any] = {
                "rewrapped": landed,
                "failed": len(failures),
                "skipped": skipped,
                "first_id": rows[0][ID],
                "last_id": rows[-1][ID],
                "to_version": to,
            }
            if account_id is not None:
                detail["account_id"] = account_id
            else:
                detail["account_ids"] = accounts
            await self._audit(s, job, single or "-", "batch_committed", detail, batch=job.batches)
            ahead = await self._read(s, job, account_id, read_after) if read_after is not None else []
        if single is not None:
            st = job.account_progress[str(accounts[0])]
            message = f"account {single}: {st['rewrapped'] + st['failed'] + st['skipped']}/{st['total']}"
        else:
            label = ", ".join(names.get(a, str(a)) for a in accounts)
            message = f"accounts {label}: {job.rewrapped + job.failed + job.skipped}/{job.total}"
        return ahead, message

    async def _finish_account(
        self, job: RotationJob, account_id: int, name: str, st: dict[str, Any], remaining: int
    ) -> None:
        to = job.to_version
        assert to is not None
        async with self.sm() as s, s.begin():
            failed_here = int(
                (
                    await s.execute(
                        select(func.count())
                        .select_from(RotationFailure)
                        .where(RotationFailure.job_id == job.id, RotationFailure.account_id == account_id)
                    )
                ).scalar_one()
            )
            clean = remaining == 0 and failed_here == 0
            if clean:
                # Every row of the account is on the target: the account's version moves.
                await s.execute(
                    update(Account)
                    .where(Account.id == account_id, Account.transit_key_version < to)
                    .values(transit_key_version=to, transit_key_rotated_at=utcnow())
                )
            if clean and st["total"] == 0:
                st["status"] = "skipped"
                if name not in job.skipped_accounts:
                    job.skipped_accounts = [*job.skipped_accounts, name]
            else:
                st["status"] = "done" if clean else "done_with_failures"
            nxt = (await s.execute(select(func.min(Account.id)).where(Account.id > account_id))).scalar_one()
            job.cursor_account_id = nxt if nxt is not None else account_id + 1
            job.cursor_row_id = job.cursor_pass = 0
            await self._save(s, job)
            await self._audit(
                s,
                job,
                name,
                "account_done",
                {
                    "account_id": account_id,
                    "status": st["status"],
                    "to_version": to,
                    "remaining_below": remaining,
                    "failed": failed_here,
                },
            )


def _progress_entry(name: str, total: int) -> dict[str, Any]:
    return {"name": name, "total": total, "rewrapped": 0, "failed": 0, "skipped": 0, "status": "pending"}


async def resume_interrupted(
    sessionmaker: async_sessionmaker[AsyncSession],
    transit: TransitBackend,
    *,
    progress: ProgressFn | None = None,
    stale_after: float = 120.0,
    include_paused: bool = True,
    batch_size: int = 250,
) -> list[RotationJobInfo]:
    """At server start: resume every pending, paused (unless `include_paused` is False) or abandoned running
    job, each to its end. Run it as a background task; a job running in a live process elsewhere is left
    alone."""
    engine = RotationEngine(sessionmaker, transit, stale_after=stale_after, batch_size=batch_size)
    statuses = JOB_ACTIVE if include_paused else tuple(s for s in JOB_ACTIVE if s != "paused")
    async with sessionmaker() as s:
        ids = list(
            (
                await s.execute(select(RotationJob.id).where(RotationJob.status.in_(statuses)).order_by(RotationJob.id))
            ).scalars()
        )
    out = []
    for job_id in ids:
        try:
            out.append(await engine.run(job_id, progress=progress))
        except (Busy, Conflict) as exc:
            log.info("rotation job %s not resumed: %s", job_id, exc.message)
    return out


__all__ = [
    "AUDIT_TOOL",
    "TRIM_WARNING",
    "ProgressFn",
    "RotationEngine",
    "active_job",
    "count_below",
    "finalize",
    "get_job",
    "instance_id",
    "job_info",
    "plan_job",
    "resume_interrupted",
    "running_here",
    "trim",
]
