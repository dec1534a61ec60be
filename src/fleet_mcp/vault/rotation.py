"""The pepper rotation engine: rotate the transit key exactly once, then rewrap every ciphertext of every
account in batches (`fleet_mcp.vault.batch_loop`), crash-safely and resumably.

A job is planned inside the tool call that asks for it (`plan_job`: a `pending` row recording the intent,
`target_version`), and runs after that call committed, never inside it: each of its steps is its own unit
of work (`fleet_mcp.vault.storage`) under the job's lease (`fleet_mcp.vault.lease`):

1. claim: owner and heartbeat on the job row;
2. rotate: read the key; if it already reached `target_version` (a dead run rotated it and died before
   recording it) adopt that version, else rotate once. The local keyring rotates inside this unit of work,
   so its new version and the job's `to_version` commit together; Vault's rotate is one non-idempotent
   POST, never retried blindly (`TransitBackend.rotate_to`);
3. batches, each committing rows, counters, cursor and an audit row together;
4. end: status, audit row and event.

Named checkpoints (`checkpoint(name)`, for tests that stop a process at a known point): `after-claim`,
`after-rotate` (rotated, not yet committed), `after-rotation-recorded`, `before-batch-commit-N`,
`after-batch-N`, `after-account-NAME`, `before-end`. Finalize and trim live in `fleet_mcp.vault.finalize`;
jobs running in this process's background (waiting for them, a CLI following them) in
`fleet_mcp.vault.background`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp import audit, events
from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Account
from fleet_mcp.errors import Busy, Conflict, FleetError
from fleet_mcp.vault import background, lease
from fleet_mcp.vault.background import (
    finish_background_jobs,
    follow_background_jobs,
    text_progress,
    wait_for_launched,
)
from fleet_mcp.vault.batch_loop import BatchLoop, Released
from fleet_mcp.vault.batches import ensure_planner_stats
from fleet_mcp.vault.finalize import TRIM_WARNING, finalize, trim
from fleet_mcp.vault.lease import LostOwnership, instance_id, running_here
from fleet_mcp.vault.models import JOB_ACTIVE, Credential, RotationJob
from fleet_mcp.vault.progress import CheckpointFn, ProgressFn, done, progress_entry
from fleet_mcp.vault.rotation_jobs import active_job, count_below, get_job, job_info, plan_job
from fleet_mcp.vault.schemas import RotationJobInfo
from fleet_mcp.vault.storage import JobStorage
from fleet_mcp.vault.transit import TransitBackend

log = logging.getLogger(__name__)

AUDIT_TOOL = "system_rotate_vault_transit_pepper"

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


class RotationEngine:
    """Runs rotation jobs, one unit of work per step (claim, rotation, each batch, end).

    `storage` is the app (its units of work and read sessions), a `JobStorage`, or a plain sessionmaker."""

    def __init__(
        self,
        storage: Any,
        transit: TransitBackend,
        *,
        batch_size: int = 250,
        stale_after: float | None = None,
        max_passes: int = 3,
        checkpoint: CheckpointFn | None = None,
    ) -> None:
        self.storage = JobStorage.of(storage)
        #: The app's `spawn` when given an app: its background work is drained before a CLI exits and
        #: cancelled (the job pauses) when the app closes.
        self._spawn = getattr(storage, "spawn", None)
        #: The app, when given one: a draining app (SIGTERM) stops its jobs at the next batch boundary.
        self._app = storage if hasattr(storage, "draining") else None
        self.transit = transit
        self.batch_size = batch_size
        if stale_after is None:
            settings = getattr(storage, "settings", None)
            stale_after = float(getattr(settings, "job_lease_seconds", 120.0))
        #: The lease: a running job whose heartbeat is older than this (seconds) may be claimed by another
        #: process. The runner refreshes its heartbeat at every batch and every quarter of the lease.
        self.stale_after = stale_after
        #: Sweeps per account: later sweeps catch rows written below the target behind the cursor.
        self.max_passes = max_passes
        self.checkpoint = checkpoint
        self.loop = BatchLoop(self.storage, transit, self._audit, max_passes=max_passes, checkpoint=checkpoint,
                              should_stop=self.draining)

    def draining(self) -> bool:
        """Whether this process is shutting down: its jobs stop at the next batch boundary and release
        their lease, so another replica resumes them at once."""
        return bool(self._app is not None and self._app.draining)

    async def _point(self, name: str) -> None:
        if self.checkpoint is not None:
            await self.checkpoint(name)

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
        """Plan a job in a unit of work of its own (Busy if one is active), then run it unless `run` is
        False. (A tool plans in the call's unit of work instead and runs the job after the call committed.)"""
        async with self.storage.write() as s:
            job = await plan_job(
                s,
                self.transit,
                started_by=started_by,
                batch_size=batch_size or self.batch_size,
                reencrypt_existing=reencrypt_existing,
            )
            info = job_info(job)
        await self._point("after-intent")
        if not run:
            return info
        return await self.run(info.id, progress=progress)

    async def resume(self, job_id: int, *, progress: ProgressFn | None = None) -> RotationJobInfo:
        """Continue a pending, paused or abandoned job from its cursor."""
        return await self.run(job_id, progress=progress)

    async def run(
        self, job_id: int, *, progress: ProgressFn | None = None, takeover: bool = False
    ) -> RotationJobInfo:
        """Claim the job and drive it until it completes, pauses (e.g. Vault unreachable) or, when this
        process drains, is released at a batch boundary. `takeover`: the scheduler found the job abandoned
        (its holder dead or silent for longer than the lease); its claim is audited as the system's."""
        if self.draining():
            raise Busy(f"rotation job {job_id} is not started here: this process is shutting down", job_id=job_id)
        lease.mark_running(job_id)
        try:
            async with self.storage.write() as s:
                claimed = await lease.claim(s, job_id, self.stale_after)
                job = claimed.job
                detail: dict[str, Any] = {
                    "owner": job.owner,
                    "cursor_account_id": job.cursor_account_id,
                    "cursor_row_id": job.cursor_row_id,
                }
                if takeover:
                    detail.update(previous_owner=claimed.previous_owner, lease_seconds=self.stale_after,
                                  heartbeat_age_seconds=None if claimed.heartbeat_age is None
                                  else round(claimed.heartbeat_age, 3))
                outcome = "taken_over" if takeover else "claimed"
                await self._audit(s, job, "-", outcome, detail,
                                  principal=f"system/{lease.instance_id()}" if takeover else None)
            await self._point("after-claim")
            keeper = asyncio.get_running_loop().create_task(self._keep_lease(job_id), name=f"lease-{job_id}")
            try:
                return await self._drive(job, progress)
            finally:
                keeper.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(keeper, return_exceptions=True)
        finally:
            lease.mark_stopped(job_id)

    async def _keep_lease(self, job_id: int) -> None:
        """Refresh the heartbeat every quarter of the lease while the job runs, so a slow batch (Vault
        answering slowly) does not look abandoned; stop once the lease was taken (the run stops at its next
        batch). A failed refresh is retried at the next beat: the batches' own saves beat too."""
        while True:
            await anyio.sleep(self.stale_after / 4)
            try:
                async with self.storage.write() as s:
                    if not await lease.beat(s, job_id):
                        return
            except Exception:  # noqa: BLE001 - the database may be down; the job pauses on its own
                log.debug("heartbeat of rotation job %s failed", job_id, exc_info=True)

    def launch(
        self, job_id: int, *, progress: ProgressFn | None = None, takeover: bool = False
    ) -> asyncio.Task[RotationJobInfo | None]:
        """Run a committed job in the background (after the call that planned it committed: no waiting for
        its row to appear); await the task to wait for its end. A job another process runs, or one already
        finished, is left alone (the task's result is then None)."""
        follow = background.follower()
        reports = [p for p in (progress, follow) if p is not None]

        async def report(done: int, total: int, message: str) -> None:
            for p in reports:
                await p(done, total, message)

        async def body() -> RotationJobInfo | None:
            try:
                return await self.run(job_id, progress=report if reports else None, takeover=takeover)
            except (Busy, Conflict) as exc:
                log.info("rotation job %s not run: %s", job_id, exc.message)
            except Exception:
                log.exception("rotation job %s crashed", job_id)
            return None

        name = f"rotation-job-{job_id}"
        task = self._spawn(body(), name=name) if self._spawn else asyncio.get_running_loop().create_task(body(), name=name)
        background.register(job_id, task, followed=follow is not None)
        return task

    def check_resumable(self, job_id: int, job: RotationJob | None) -> RotationJob:
        """Raise unless this process may run the job now (it exists, is active, and no live process runs it)."""
        return lease.check_claimable(job_id, job, self.stale_after)

    # -- audit and end -----------------------------------------------------------------------------
    async def _audit(
        self,
        s: AsyncSession,
        job: RotationJob,
        account: str,
        outcome: str,
        detail: dict[str, Any],
        principal: str | None = None,
        **arguments: Any,
    ) -> None:
        await audit.append(
            s,
            principal=principal or job.started_by,
            account=account,
            tool=AUDIT_TOOL,
            arguments={"job_id": job.id, **arguments},
            decision="background",
            outcome=outcome,
            detail=detail,
            approval_id=job.approval_id,
        )

    async def _end(self, job: RotationJob, status: str, error: str | None) -> None:
        job.status, job.error = status, error
        extra: dict[str, Any] = {"owner": None}
        if status not in JOB_ACTIVE:
            extra.update(active_slot=None, finished_at=utcnow())
        async with self.storage.write() as s:
            await lease.save(s, job, **extra)
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
            # An event without an account is shown to every account: no counts (they add up other accounts'
            # credentials); each account reads its own part of the job with system_vault_get_rotation_job.
            payload = {"job_id": job.id, "status": status, "to_version": job.to_version, "error": error}
            await events.emit(s, account_id=None, kind=f"vault.rotation_{status}", severity=severity, payload=payload)
        job.owner = None

    async def _reload_progress(self, job: RotationJob) -> None:
        """Take the job's progress from its row: what the last committed batch recorded. A batch whose
        unit of work failed (or was interrupted) moved the counters in memory only."""
        async with self.storage.read() as s:
            row = (await s.execute(select(*_PROGRESS).where(RotationJob.id == job.id))).one()
        for col, value in zip(_PROGRESS, row, strict=True):
            setattr(job, col.key, value)

    async def _release(self, job: RotationJob) -> None:
        """Give the lease back at a batch boundary (this process drains): the job goes back to pending with
        no owner, so the next takeover tick of any replica resumes it from its cursor at once."""
        try:
            await self._reload_progress(job)
            job.status, job.error = "pending", None
            async with self.storage.write() as s:
                await lease.save(s, job, owner=None)
                await self._audit(s, job, "-", "released", {"owner": lease.instance_id(), "reason": "shutdown",
                                                            "cursor_account_id": job.cursor_account_id,
                                                            "cursor_row_id": job.cursor_row_id})
            job.owner = None
        except LostOwnership:
            pass
        except Exception:  # the database may be what failed; the lease then expires on its own
            log.exception("could not release rotation job %s", job.id)

    async def _pause(self, job: RotationJob, error: str) -> None:
        try:
            await self._reload_progress(job)
            await self._end(job, "paused", error)
        except LostOwnership:
            pass
        except Exception:  # the database may be what failed; the stale heartbeat frees the job later
            log.exception("could not record the pause of rotation job %s", job.id)

    # -- the run -----------------------------------------------------------------------------------
    async def _drive(self, job: RotationJob, progress: ProgressFn | None) -> RotationJobInfo:
        async def report(msg: str) -> None:
            if progress is not None:
                await progress(done(job), max(job.total, 1), msg)

        try:
            if job.to_version is None:
                await self._rotate_once(job)
                await report(f"rotated {job.key_name} to v{job.to_version}; {job.total} ciphertexts to rewrap")
            if job.reencrypt_existing:
                async with self.storage.write() as s:
                    await ensure_planner_stats(s)
                await self.loop.run(job, report)
            status = "completed_with_failures" if job.failed else "completed"
            await self._point("before-end")
            await self._end(job, status, None)
            await report(f"{status}: {job.rewrapped} rewrapped, {job.failed} failed, {job.skipped} skipped")
        except LostOwnership:
            log.warning("rotation job %s was taken over by another process; stopping", job.id)
        except Released:
            await self._release(job)
            await report("released at shutdown: another replica (or the next start) resumes it from its cursor")
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
        async with self.storage.read() as s:
            return await get_job(s, job.id)

    async def _rotate_once(self, job: RotationJob) -> None:
        """Rotate the key to the job's target — or adopt the target if the key already reached it — and
        record the version, the counts to rewrap and an audit row, in one unit of work."""
        target = job.target_version or job.from_version + 1  # jobs planned before the intent was recorded
        async with self.storage.write() as s:
            to, rotated = await self.transit.rotate_to(target, session=s)
            await self._point("after-rotate")
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
            job.account_progress = {str(a.id): progress_entry(a.name, int(counts.get(a.id, 0))) for a in accounts}
            job.total = sum(int(n) for n in counts.values())
            job.cursor_account_id = None  # the table-wide sweep comes first
            job.cursor_row_id = job.cursor_pass = 0
            await lease.save(s, job)
            detail = {
                "from_version": job.from_version,
                "target_version": target,
                "to_version": to,
                "total": job.total,
                # False: the key had already reached the target (a run that died after rotating): adopted.
                "rotated": rotated,
            }
            await self._audit(s, job, "-", "rotated" if rotated else "rotation_adopted", detail)
        await self._point("after-rotation-recorded")


async def resume_interrupted(
    storage: Any,
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
    engine = RotationEngine(storage, transit, stale_after=stale_after, batch_size=batch_size)
    statuses = JOB_ACTIVE if include_paused else tuple(s for s in JOB_ACTIVE if s != "paused")
    async with engine.storage.read() as s:
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
    "finish_background_jobs",
    "follow_background_jobs",
    "get_job",
    "instance_id",
    "job_info",
    "plan_job",
    "resume_interrupted",
    "running_here",
    "text_progress",
    "wait_for_launched",
    "trim",
]
