"""A rotation job's progress: per-account counters, what a batch adds to them, the messages a caller
sees while waiting, and the public view of a job (`job_info`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fleet_mcp.vault.models import RotationFailure, RotationJob
from fleet_mcp.vault.schemas import AccountProgress, FailureInfo, RotationJobInfo

#: `async progress(done, total, message)`
ProgressFn = Callable[[int, int, str], Awaitable[None]]
#: `async checkpoint(name)`: called at the job's named points (see `RotationEngine`); tests stop there.
CheckpointFn = Callable[[str], Awaitable[None]]


def progress_entry(name: str, total: int) -> dict[str, Any]:
    return {"name": name, "total": total, "rewrapped": 0, "failed": 0, "skipped": 0, "status": "pending"}


def add_batch(job: RotationJob, per: dict[int, list[int]], names: dict[int, str]) -> None:
    """Count a committed batch: `per` maps account id → [rewrapped, failed, skipped]."""
    for acct, (rewrapped, failed, skipped) in per.items():
        st = job.account_progress.setdefault(str(acct), progress_entry(names.get(acct, str(acct)), 0))
        job.rewrapped += rewrapped
        job.failed += failed
        job.skipped += skipped
        st["rewrapped"] += rewrapped
        st["failed"] += failed
        st["skipped"] += skipped
        if st["status"] == "pending":
            st["status"] = "running"
        processed = st["rewrapped"] + st["failed"] + st["skipped"]
        if processed > st["total"]:  # rows that appeared after the job counted them (late writers)
            job.total += processed - st["total"]
            st["total"] = processed
    job.batches += 1


def batch_message(job: RotationJob, accounts: list[int], names: dict[int, str]) -> str:
    if len(accounts) == 1:
        st = job.account_progress[str(accounts[0])]
        return f"account {st['name']}: {st['rewrapped'] + st['failed'] + st['skipped']}/{st['total']}"
    label = ", ".join(names.get(a, str(a)) for a in accounts)
    return f"accounts {label}: {done(job)}/{job.total}"


def done(job: RotationJob) -> int:
    return job.rewrapped + job.failed + job.skipped


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
