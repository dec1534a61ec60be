"""The rewrap loop of a rotation job: walk the credentials below the job's target version in keyset pages,
rewrap each page through the transit backend, and commit it — compare-and-set updates, failures, the job's
counters and cursor, and an audit row — as one unit of work under the job's lease.

Two phases: first the whole table in id order (`cursor_account_id` is None meanwhile), then account by
account, which rewraps what writers left behind and moves each account's key version. A crash loses at
most the page in flight; a resume continues at the cursor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from itertools import repeat
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Account
from fleet_mcp.errors import ExternalError
from fleet_mcp.vault import lease
from fleet_mcp.vault.batches import (
    ACCOUNT_ID,
    CIPHERTEXT,
    ID,
    KEY_VERSION,
    NAME,
    OldRow,
    Rewrapped,
    compare_and_set,
    landed_ids,
    read_page,
    read_wide_page,
)
from fleet_mcp.vault.models import Credential, RotationFailure, RotationJob
from fleet_mcp.vault.progress import CheckpointFn, add_batch, batch_message, progress_entry
from fleet_mcp.vault.storage import JobStorage
from fleet_mcp.vault.transit import TransitBackend, TransitItemError, ciphertext_version
from fleet_mcp.vault.transit.ciphertext import PREFIX

Report = Callable[[str], Awaitable[None]]
#: `async audit(session, job, account, outcome, detail, **arguments)`
AuditFn = Callable[..., Awaitable[None]]

class Released(Exception):
    """The process is shutting down: the job stops after its last committed batch and gives up its lease."""


_tasks: set[asyncio.Task[Any]] = set()  # strong references to rewraps running ahead of their commit


def _forget(task: asyncio.Task[Any]) -> None:
    _tasks.discard(task)
    if not task.cancelled():
        task.exception()  # a rewrap abandoned after a failure elsewhere: its error is not news


class BatchLoop:
    def __init__(
        self,
        storage: JobStorage,
        transit: TransitBackend,
        audit: AuditFn,
        *,
        max_passes: int,
        checkpoint: CheckpointFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.storage = storage
        #: Asked after every committed batch (a batch boundary): True stops the job there (`Released`).
        self.should_stop = should_stop
        self.transit = transit
        self.audit = audit
        self.max_passes = max_passes
        self.checkpoint = checkpoint

    async def _point(self, name: str) -> None:
        if self.checkpoint is not None:
            await self.checkpoint(name)

    async def run(self, job: RotationJob, report: Report) -> None:
        """Rewrap everything below the job's target, from its cursor to the end."""
        async with self.storage.read() as s:
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
                await self._account(job, account_id, name, report, swept=swept)
        await self._recheck(job, report)

    async def _recheck(self, job: RotationJob, report: Report) -> None:
        """Before completing, look again across all accounts: a writer that encrypted under the old version
        and committed after its account was swept left a row behind. Sweep those accounts once more."""
        assert job.to_version is not None
        failed = select(RotationFailure.credential_id).where(RotationFailure.job_id == job.id)
        for _ in range(self.max_passes):
            async with self.storage.read() as s:
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
                job.account_progress.setdefault(str(account_id), progress_entry(name, 0))["status"] = "pending"
                await self._account(job, account_id, name, report)

    async def _account(
        self, job: RotationJob, account_id: int, name: str, report: Report, *, swept: bool = False
    ) -> None:
        """Sweep one account (again, after the table-wide sweep when `swept`) and move its key version."""
        st = job.account_progress.setdefault(str(account_id), progress_entry(name, 0))
        st["name"] = name
        if st["status"] in ("done", "done_with_failures", "skipped"):
            return
        if job.cursor_account_id != account_id or (swept and job.cursor_row_id == 0):
            job.cursor_account_id, job.cursor_row_id, job.cursor_pass = account_id, 0, 0
            if swept:
                # The table-wide sweep was this account's first pass; rows below the target now were
                # written behind it: a second pass, counted as such.
                async with self.storage.read() as s:
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

    async def _sweep(self, job: RotationJob, account_id: int | None, names: dict[int, str], report: Report) -> int:
        """One pass from the cursor over one account, or over the whole table when `account_id` is None;
        return how many rows of the account are still below the target (0 for the whole table).

        A two-stage pipeline: while one page's compare-and-set commits, the next page is already being
        rewrapped (by Vault, or by the local keyring on a worker thread). Pages commit strictly in order,
        one unit of work each, so the cursor and the counters only ever cover committed rows."""
        async with self.storage.read() as s:
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
                if self.should_stop is not None and self.should_stop():
                    raise Released()
                cur, nxt = nxt, ahead
        finally:
            if work is not None and not work.done():
                work.cancel()  # nothing of it was written; its rows are read again from the cursor
        if account_id is None:
            return 0
        async with self.storage.read() as s:
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
        stmt = (
            select(func.count())
            .select_from(Credential)
            .where(
                Credential.account_id == account_id,
                Credential.key_version < job.to_version,
                Credential.id.not_in(failed),
            )
        )
        return int((await s.execute(stmt)).scalar_one())

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
        """Commit one rewrapped page with the job's progress and its audit row, as one unit of work; in it
        also read the page after `read_after` (one fewer round trip), or nothing when it is None. Returns
        that page and a progress message."""
        to = job.to_version
        assert to is not None
        updates, failures = self._sort(job, account_id, rows, results)
        batch = job.batches + 1
        await self._point(f"before-batch-commit-{batch}")
        async with self.storage.write() as s:
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
            add_batch(job, per, names)
            job.cursor_row_id = rows[-1][ID]
            await lease.save(s, job)
            accounts = sorted(per)
            single = names.get(accounts[0], str(accounts[0])) if len(accounts) == 1 else None
            detail: dict[str, Any] = {
                "rewrapped": landed,
                "failed": len(failures),
                "skipped": len(updates) - landed,
                "first_id": rows[0][ID],
                "last_id": rows[-1][ID],
                "to_version": to,
            }
            if account_id is not None:
                detail["account_id"] = account_id
            else:
                detail["account_ids"] = accounts
            await self.audit(s, job, single or "-", "batch_committed", detail, batch=job.batches)
            ahead = await self._read(s, job, account_id, read_after) if read_after is not None else []
        await self._point(f"after-batch-{job.batches}")
        return ahead, batch_message(job, accounts, names)

    async def _finish_account(
        self, job: RotationJob, account_id: int, name: str, st: dict[str, Any], remaining: int
    ) -> None:
        to = job.to_version
        assert to is not None
        async with self.storage.write() as s:
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
            await lease.save(s, job)
            detail = {
                "account_id": account_id,
                "status": st["status"],
                "to_version": to,
                "remaining_below": remaining,
                "failed": failed_here,
            }
            await self.audit(s, job, name, "account_done", detail)
        await self._point(f"after-account-{name}")
