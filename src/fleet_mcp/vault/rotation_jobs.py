"""Rotation job records: planning a job, reading one, and the counts that gate a rotation's steps."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.errors import Busy, InvalidArgument, NotFound
from fleet_mcp.vault.models import JOB_ACTIVE, Credential, RotationFailure, RotationJob
from fleet_mcp.vault.progress import job_info
from fleet_mcp.vault.schemas import RotationJobInfo
from fleet_mcp.vault.transit import TransitBackend


async def get_job(
    session: AsyncSession, job_id: int, *, failures_limit: int = 100, account: tuple[int, str] | None = None
) -> RotationJobInfo:
    """The job; with `account` (id, name) only as it concerns that account (see `scoped_info`)."""
    job = await session.get(RotationJob, job_id)
    if job is None:
        raise NotFound(f"no rotation job {job_id}", job_id=job_id)
    stmt = select(RotationFailure).where(RotationFailure.job_id == job_id)
    if account is not None:
        stmt = stmt.where(RotationFailure.account_id == account[0])
    failures = (await session.execute(stmt.order_by(RotationFailure.id).limit(failures_limit))).scalars().all()
    info = job_info(job, list(failures))
    return info if account is None else scoped_info(info, *account)


def scoped_info(info: RotationJobInfo, account_id: int, account_name: str) -> RotationJobInfo:
    """A job as one account may see it: a rotation covers every account, but a caller without the
    cross-account permission sees only its own account's progress, counters and failures — no other
    account's name, id, counts or credential names, nor who (in another account) started it."""
    own = [a for a in info.accounts if a.account_id == account_id]
    mine = own[0] if own else None
    prefix = f"{account_name}/"
    return info.model_copy(
        update={
            "accounts": own,
            "total": mine.total if mine else 0,
            "rewrapped": mine.rewrapped if mine else 0,
            "failed": mine.failed if mine else 0,
            "skipped": mine.skipped if mine else 0,
            "skipped_accounts": [n for n in info.skipped_accounts if n == account_name],
            "cursor_account_id": info.cursor_account_id if info.cursor_account_id == account_id else None,
            "cursor_row_id": info.cursor_row_id if info.cursor_account_id == account_id else 0,
            "started_by": info.started_by if info.started_by.startswith(prefix) else "(another account)",
            "errors": [e for e in info.errors if e.account_id == account_id],
        }
    )


async def active_job(session: AsyncSession) -> RotationJob | None:
    return (
        await session.execute(
            select(RotationJob).where(RotationJob.status.in_(JOB_ACTIVE)).order_by(RotationJob.id).limit(1)
        )
    ).scalar_one_or_none()


async def count_below(session: AsyncSession, version: int, *, account_id: int | None = None) -> int:
    stmt = select(func.count()).select_from(Credential).where(Credential.key_version < version)
    if account_id is not None:
        stmt = stmt.where(Credential.account_id == account_id)
    return int((await session.execute(stmt)).scalar_one())


async def plan_job(
    session: AsyncSession,
    transit: TransitBackend,
    *,
    started_by: str,
    batch_size: int = 250,
    reencrypt_existing: bool = True,
    approval_id: str | None = None,
) -> RotationJob:
    """Record a pending job and its intent (rotate to latest + 1) in the caller's unit of work; nothing is
    rotated yet. Busy if a job is active."""
    if not 1 <= batch_size <= 10_000:
        raise InvalidArgument("batch_size must be between 1 and 10000")
    current = await active_job(session)
    if current is not None:
        raise Busy(
            f"rotation job {current.id} is {current.status}",
            hint=f"wait for it, or resume it with system_vault_resume_rotation_job (job_id={current.id})",
            job_id=current.id,
        )
    key = await transit.read_key(session=session)
    job = RotationJob(
        key_name=key.name,
        status="pending",
        active_slot=1,
        reencrypt_existing=reencrypt_existing,
        batch_size=batch_size,
        from_version=key.latest_version,
        # The intent, committed before anything is rotated: a restart adopts this version if the key
        # already has it, instead of rotating again.
        target_version=key.latest_version + 1,
        to_version=None,
        total=await count_below(session, key.latest_version + 1),
        started_by=started_by,
        approval_id=approval_id,
    )
    try:
        async with session.begin_nested():
            session.add(job)
    except IntegrityError:
        raise Busy(
            "another rotation job was started at the same moment",
            hint="check system_vault_get_pepper_status and resume that job instead",
        ) from None
    return job

__all__ = ["active_job", "count_below", "get_job", "job_info", "plan_job", "scoped_info"]
