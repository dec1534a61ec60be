"""The GitOps service API in one place (tools and the scheduler import from here), plus the read queries."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.errors import InvalidArgument
from fleet_mcp.gitops.apply import (
    ApplyResult,
    apply_proposal,
    apply_sync_run,
    get_proposal,
    get_sync_run,
    reject_proposal,
)
from fleet_mcp.gitops.drift import DriftTick, drift_tick, suppress_drift, suppression_out, unsuppress_drift
from fleet_mcp.gitops.fetch import GitCredential
from fleet_mcp.gitops.models import GitOpsProposal, GitOpsRepository, GitOpsSyncRun
from fleet_mcp.gitops.options import CredentialResolver, GitOpsOptions
from fleet_mcp.gitops.repositories import (
    UNSET,
    delete_repository,
    get_repository,
    list_enabled_repositories,
    list_repositories,
    register_repository,
    update_repository,
)
from fleet_mcp.gitops.sync import (
    DriftReport,
    Prefetched,
    RepoSource,
    claim_sync,
    drift_report,
    fetch_source,
    prefetch,
    release_sync,
    sync_repository,
)

PROPOSAL_STATUSES = ("pending", "applied", "rejected", "failed", "stale", "superseded")
SYNC_RUN_STATUSES = ("running", "success", "partial", "failed")

__all__ = [
    "PROPOSAL_STATUSES",
    "Prefetched",
    "RepoSource",
    "SYNC_RUN_STATUSES",
    "UNSET",
    "ApplyResult",
    "CredentialResolver",
    "DriftReport",
    "DriftTick",
    "GitCredential",
    "GitOpsOptions",
    "GitOpsProposal",
    "GitOpsRepository",
    "GitOpsSyncRun",
    "apply_proposal",
    "apply_sync_run",
    "claim_sync",
    "delete_repository",
    "drift_report",
    "drift_tick",
    "fetch_source",
    "get_proposal",
    "get_repository",
    "get_sync_run",
    "list_enabled_repositories",
    "list_proposals",
    "list_repositories",
    "list_sync_runs",
    "repository_detail",
    "prefetch",
    "register_repository",
    "reject_proposal",
    "release_sync",
    "suppress_drift",
    "suppression_out",
    "sync_repository",
    "unsuppress_drift",
    "update_repository",
]

MAX_LIMIT = 500


async def list_sync_runs(
    session: AsyncSession, *, account_id: int, repository_id: int, limit: int = 20
) -> list[GitOpsSyncRun]:
    """Newest first."""
    return (await repository_detail(session, account_id=account_id, repository_id=repository_id, runs=limit))[1]


async def repository_detail(
    session: AsyncSession, *, account_id: int, repository_id: int, runs: int
) -> tuple[GitOpsRepository, list[GitOpsSyncRun]]:
    """A repository and its `runs` newest sync runs (NotFound when the account has no such repository)."""
    if not 1 <= runs <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}")
    repo = await get_repository(session, account_id=account_id, repository_id=repository_id)
    params = {"account_id": account_id, "repository_id": repository_id, "runs": runs}
    return repo, list((await session.execute(_RECENT_RUNS, params)).scalars().all())


_RECENT_RUNS = (
    select(GitOpsSyncRun)
    .where(GitOpsSyncRun.account_id == bindparam("account_id"),
           GitOpsSyncRun.repository_id == bindparam("repository_id"))
    .order_by(GitOpsSyncRun.id.desc())
    .limit(bindparam("runs"))
)


async def list_proposals(
    session: AsyncSession,
    *,
    account_id: int,
    repository_id: int | None = None,
    sync_run_id: int | None = None,
    status: str | None = None,
    limit: int = 200,
) -> list[GitOpsProposal]:
    """Proposals by id; `sync_run_id` selects every proposal standing for a change of that run."""
    if status is not None and status not in PROPOSAL_STATUSES:
        raise InvalidArgument(f"unknown proposal status {status!r}", hint=f"use one of: {', '.join(PROPOSAL_STATUSES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}")
    stmt = select(GitOpsProposal).where(GitOpsProposal.account_id == account_id)
    if repository_id is not None:
        stmt = stmt.where(GitOpsProposal.repository_id == repository_id)
    if sync_run_id is not None:
        run = await get_sync_run(session, account_id=account_id, sync_run_id=sync_run_id)
        stmt = stmt.where(GitOpsProposal.id.in_([int(i) for i in run.proposal_ids or []]))
    if status is not None:
        stmt = stmt.where(GitOpsProposal.status == status)
    stmt = stmt.order_by(GitOpsProposal.id).limit(limit)
    return list((await session.execute(stmt)).scalars().all())
