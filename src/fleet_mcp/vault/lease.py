"""Ownership of a rotation job: which process drives it (its lease), the heartbeat that keeps the lease,
and the guarded progress write that stops a process that lost it.

A job row names its owner (`host:pid:random`) and a heartbeat time. A process claims a job only when no
live process holds it: the owner is this very process, its pid is gone (same host), or its heartbeat is
older than `stale_after` (the lease, `FLEET_MCP_JOB_LEASE_SECONDS`). The claim is a compare-and-set: an
UPDATE guarded by the owner and heartbeat the claimer read, so of two replicas claiming the same abandoned
job one wins and the other is told it is busy. Every progress write is an UPDATE guarded by `owner = me`,
so a process whose lease was taken over writes nothing and stops at its next batch (`LostOwnership`).
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Table, Update, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import Busy, Conflict, NotFound
from fleet_mcp.vault.models import JOB_ACTIVE, RotationJob

_HOST = socket.gethostname()[:40]
_instance = f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"
_running: set[int] = set()  # jobs this process is driving right now

#: The job's columns every progress save writes (besides the JSON ones and the timestamps).
SAVED = (
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


class LostOwnership(Exception):
    """Another process claimed the job (ours looked dead to it); stop without writing."""


def instance_id() -> str:
    """`host:pid:random`: who owns a running job (on the same host, a dead pid frees the job at once)."""
    global _instance
    if not _instance.startswith(f"{_HOST}:{os.getpid()}:"):  # forked child: a new instance
        _instance = f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"
    return _instance


def running_here(job_id: int) -> bool:
    """Whether this process is driving the job right now."""
    return job_id in _running


def mark_running(job_id: int) -> None:
    if job_id in _running:
        raise Busy(f"rotation job {job_id} is already running in this process", job_id=job_id)
    _running.add(job_id)


def mark_stopped(job_id: int) -> None:
    _running.discard(job_id)


def owner_is_dead(owner: str | None) -> bool:
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


def check_claimable(job_id: int, job: RotationJob | None, stale_after: float, me: str | None = None) -> RotationJob:
    """Raise unless this process (or instance `me`) may run the job now (it exists, is active, and no live
    process runs it)."""
    me = me or instance_id()
    if job is None:
        raise NotFound(f"no rotation job {job_id}", job_id=job_id)
    if job.status not in JOB_ACTIVE:
        raise Conflict(
            f"rotation job {job_id} is {job.status}; only pending, running or paused jobs resume",
            hint="start a new rotation to retry what is left",
            job_id=job_id,
        )
    if job.status == "running" and job.owner != me and not owner_is_dead(job.owner):
        age = (utcnow() - job.heartbeat_at).total_seconds() if job.heartbeat_at else 0.0
        if age < stale_after:
            raise Busy(
                f"rotation job {job_id} is running in process {job.owner} (last heartbeat {age:.0f} s ago)",
                hint=f"wait, or resume it after {stale_after:.0f} s without a heartbeat",
                job_id=job_id,
            )
    return job


@dataclass(frozen=True)
class Claimed:
    """A claimed job (the runner's in-memory copy) and whose lease it was before (None: nobody's)."""

    job: RotationJob
    previous_owner: str | None
    #: Seconds since the previous owner's last heartbeat (None without one).
    heartbeat_age: float | None


async def claim(s: AsyncSession, job_id: int, stale_after: float, *, me: str | None = None) -> Claimed:
    """Take the job's lease in `s` (the caller's unit of work): owner = this process (or the instance
    `me`), fresh heartbeat.

    Compare-and-set: the UPDATE holds only if owner and heartbeat are still those read here, so two
    replicas that both found the job abandoned never both run it (the loser gets Busy)."""
    job = (await s.execute(select(RotationJob).where(RotationJob.id == job_id))).scalar_one_or_none()
    me = me or instance_id()
    check_claimable(job_id, job, stale_after, me)
    assert job is not None
    seen_owner, seen_heartbeat = job.owner, job.heartbeat_at
    now = utcnow()
    res = cast(CursorResult[Any], await s.execute(
        update(RotationJob)
        .where(
            RotationJob.id == job_id,
            RotationJob.owner.is_not_distinct_from(seen_owner),
            RotationJob.heartbeat_at.is_not_distinct_from(seen_heartbeat),
        )
        .values(status="running", owner=me, heartbeat_at=now, error=None, updated_at=now,
                started_at=job.started_at or now)
        .execution_options(synchronize_session=False)
    ))
    if res.rowcount != 1:
        raise Busy(f"rotation job {job_id} was just claimed by another process", job_id=job_id)
    await s.refresh(job)
    # From here on the job object is the runner's in-memory copy; it outlives this unit of work.
    s.expunge(job)
    age = (now - seen_heartbeat).total_seconds() if seen_heartbeat is not None else None
    return Claimed(job, seen_owner, age)


def is_abandoned(job: RotationJob, stale_after: float) -> bool:
    """Whether another process may take the job over now: nobody holds it, its holder is dead (same
    host), or its heartbeat is older than the lease. A job this process holds is not abandoned."""
    if job.owner == instance_id():
        return False
    if job.owner is None or owner_is_dead(job.owner) or job.heartbeat_at is None:
        return True
    return (utcnow() - job.heartbeat_at).total_seconds() >= stale_after


async def beat(s: AsyncSession, job_id: int) -> bool:
    """Refresh the heartbeat of a job this process holds; False when its lease was taken."""
    now = utcnow()
    res = cast(CursorResult[Any], await s.execute(
        update(RotationJob)
        .where(RotationJob.id == job_id, RotationJob.owner == instance_id())
        .values(heartbeat_at=now)
        .execution_options(synchronize_session=False)
    ))
    return res.rowcount == 1


@functools.cache
def _save_stmt(extra: tuple[str, ...]) -> Update:
    """The progress UPDATE for a set of extra columns, guarded by ownership; bound as `p_<column>`."""
    t = cast(Table, RotationJob.__table__)
    cols = (*SAVED, "account_progress", "skipped_accounts", "heartbeat_at", "updated_at", *extra)
    return (
        update(t)
        .where(t.c.id == bindparam("w_job_id"), t.c.owner == bindparam("w_owner"))
        .values({c: bindparam(f"p_{c}", type_=t.c[c].type) for c in cols})
    )


async def save(s: AsyncSession, job: RotationJob, **extra: Any) -> None:
    """Write the job's progress (and heartbeat) in `s` — only while this process still holds the lease."""
    now = utcnow()
    job.heartbeat_at = job.updated_at = now
    values = {c: getattr(job, c) for c in SAVED}
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
        raise LostOwnership()
