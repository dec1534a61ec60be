"""Rotation job records: planning a job, reading one, and the counts that gate a rotation's steps."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.errors import Busy, InvalidArgument, NotFound
from fleet_mcp.vault.models import JOB_ACTIVE, Credential, RotationFailure, RotationJob
from fleet_mcp.vault.schemas import AccountProgress, FailureInfo, RotationJobInfo
from fleet_mcp.vault.transit import TransitBackend


def job_info(job: RotationJob, failures: list[RotationFailure] | None = None) -> RotationJobInfo:
    accounts = [
        AccountProgress(account_id=int(k), **v)
        for k, v in sorted((job.account_progress or {}).items(), key=lambda kv: int(kv[0]))
    ]
    return RotationJobInfo(
        id=job.id,
        status=job.status,
        key_name=job.key_name,
        from_version=job.from_version,
        to_version=job.to_version,
        total=job.total,
        rewrapped=job.rewrapped,
        failed=job.failed,
        skipped=job.skipped,
        skipped_accounts=list(job.skipped_accounts or []),
        reencrypt_existing=job.reencrypt_existing,
        batch_size=job.batch_size,
        batches=job.batches,
        accounts=accounts,
        cursor_account_id=job.cursor_account_id,
        cursor_row_id=job.cursor_row_id,
        error=job.error,
        started_by=job.started_by,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        errors=[
            FailureInfo(
                credential_id=f.credential_id,
                account_id=f.account_id,
                name=f.credential_name,
                key_version=f.key_version,
                error=f.error,
            )
            for f in failures or []
        ],
    )


async def get_job(session: AsyncSession, job_id: int, *, failures_limit: int = 100) -> RotationJobInfo:
    job = await session.get(RotationJob, job_id)
    if job is None:
        raise NotFound(f"no rotation job {job_id}", job_id=job_id)
    failures = (
        (
            await session.execute(
                select(RotationFailure)
                .where(RotationFailure.job_id == job_id)
                .order_by(RotationFailure.id)
                .limit(failures_limit)
            )
        )
        .scalars()
        .all()
    )
    return job_info(job, list(failures))


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
) -> RotationJob:
    """Record a pending job in the caller's unit of work (nothing is rotated yet). Busy if one is active."""
    if not 1 <= batch_size <= 10_000:
        raise InvalidArgument("batch_size must be between 1 and 10000")
    current = await active_job(session)
    if current is not None:
        raise Busy(
            f"rotation job {current.id} is {current.status}",
            hint=f"wait for it, or resume it with system_vault_resume_rotation_job (job_id={current.id})",
            job_id=current.id,
        )
    key = await transit.read_key()
    job = RotationJob(
        key_name=key.name,
        status="pending",
        active_slot=1,
        reencrypt_existing=reencrypt_existing,
        batch_size=batch_size,
        from_version=key.latest_version,
        to_version=None,
        total=await count_below(session, key.latest_version + 1),
        started_by=started_by,
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
