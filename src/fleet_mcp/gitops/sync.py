"""Sync (fetch → parse → diff → one proposal per change) and the read-only drift report.

Git runs in a worker thread before the sync writes anything; the sync then claims the repository
row with a conditional UPDATE (a committed claim held by someone else → Busy; on PostgreSQL an
uncommitted one makes the second sync wait for the first to finish, then it reuses its proposals).
A failure at fetch, parse or diff is *recorded* on the run (status failed, stage, error) and the
run is returned, so the caller's commit keeps it; only database errors propagate.
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
from sqlalchemy import or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp import events
from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import Busy, Conflict, ExternalError, FleetError, InvalidArgument
from fleet_mcp.fleet.store import gitops_owner
from fleet_mcp.gitops.diff import RISK_BY_ACTION, Change, ChangeSet, diff
from fleet_mcp.gitops.fetch import FetchResult, fetch_fleet_file
from fleet_mcp.gitops.fleetfile import DesiredState, parse_fleet_file
from fleet_mcp.gitops.live import LiveView, load_live
from fleet_mcp.gitops.models import GitOpsProposal, GitOpsRepository, GitOpsSyncRun
from fleet_mcp.gitops.options import CredentialResolver, GitOpsOptions
from fleet_mcp.gitops.repositories import get_repository


@dataclass(frozen=True)
class RepoSource:
    """What git needs to know about a repository (a plain snapshot, safe to hand to a thread)."""

    repository_id: int
    account_id: int
    repo_url: str
    branch: str
    path_prefix: str
    credential: str | None

    @classmethod
    def of(cls, repo: GitOpsRepository) -> RepoSource:
        return cls(repo.id, repo.account_id, repo.repo_url, repo.branch, repo.path_prefix, repo.credential)


@dataclass
class DriftReport:
    """Desired (git) versus live, computed on demand; nothing is written."""

    repository_id: int
    revision: str
    changeset: ChangeSet
    desired_count: int
    live_count: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def drift(self) -> bool:
        return self.changeset.drift

    @property
    def diff_count(self) -> int:
        return self.changeset.diff_count

    def to_json(self) -> dict[str, Any]:
        cs = self.changeset.to_json()
        return {
            "repository_id": self.repository_id,
            "revision": self.revision,
            "drift": self.drift,
            "diff_count": self.diff_count,
            "is_total_delete": self.changeset.is_total_delete,
            "summary": cs["summary"],
            "changes": cs["changes"],
            "suppressed": cs["suppressed"],
        }


async def fetch_source(
    source: RepoSource, options: GitOpsOptions, resolve_credential: CredentialResolver | None = None
) -> FetchResult:
    """Resolve the credential, then fetch in a worker thread (git is slow, blocking I/O)."""
    credential = None
    if source.credential:
        if resolve_credential is None:
            raise ExternalError(
                f"repository {source.repository_id} uses credential {source.credential!r} but no credential "
                "store is available",
                hint="configure the vault credential store, or update the repository with credential=''",
            )
        credential = await resolve_credential(source.credential)
    call = functools.partial(
        fetch_fleet_file,
        source.repo_url,
        source.branch,
        source.path_prefix,
        cache_dir=options.cache_dir,
        allow_local=options.allow_local_repos,
        timeout=options.git_timeout,
        credential=credential,
    )
    return await anyio.to_thread.run_sync(call)


@dataclass(frozen=True)
class Prefetched:
    """The outcome of a fetch done before the caller's unit of work, with the source it was done for.

    A sync (or drift report) uses it only while the repository row still names that same source
    (URL, branch, path_prefix, credential); otherwise it fetches again, so a change that lands
    between the prefetch and the sync never records the old source's content."""

    source: RepoSource
    outcome: FetchResult | FleetError


async def prefetch(
    session: AsyncSession,
    *,
    account_id: int,
    repository_id: int,
    options: GitOpsOptions,
    resolve_credential: CredentialResolver | None = None,
) -> Prefetched:
    """Fetch outside any write transaction: read the source (and resolve its credential) with the
    caller's *read* session, then run git in a worker thread. Raises NotFound for an unknown
    repository; a failed credential or fetch is carried in `outcome`. Pass the result to
    `sync_repository(prefetched=)` / `drift_report(prefetched=)`."""
    repo = await get_repository(session, account_id=account_id, repository_id=repository_id)
    source = RepoSource.of(repo)
    try:
        return Prefetched(source, await fetch_source(source, options, resolve_credential))
    except FleetError as exc:
        return Prefetched(source, exc)


async def _fetch_for(
    repo: GitOpsRepository,
    options: GitOpsOptions,
    resolve_credential: CredentialResolver | None,
    prefetched: Prefetched | None,
) -> FetchResult | FleetError:
    """The prefetched outcome if it was fetched for the row's current source, else a fetch now."""
    source = RepoSource.of(repo)
    if prefetched is not None and prefetched.source == source:
        return prefetched.outcome
    try:
        return await fetch_source(source, options, resolve_credential)
    except FleetError as exc:
        return exc


def _claim_is_fresh(repo: GitOpsRepository, now: dt.datetime, options: GitOpsOptions) -> bool:
    return (
        repo.sync_claim is not None
        and repo.sync_claimed_at is not None
        and repo.sync_claimed_at > now - dt.timedelta(seconds=options.claim_ttl)
    )


def _busy(repo: GitOpsRepository) -> Busy:
    since = repo.sync_claimed_at.isoformat() if repo.sync_claimed_at else "?"
    return Busy(
        f"repository {repo.id} is being synced (since {since})",
        hint="wait for that sync to finish, then sync again or read its sync run",
        repository_id=repo.id,
    )


async def claim_sync(
    session: AsyncSession,
    *,
    account_id: int,
    repository_id: int,
    options: GitOpsOptions,
    now: dt.datetime | None = None,
    token: str | None = None,
) -> str:
    """Take the repository's sync claim (conditional UPDATE); raise Busy when someone else holds it.

    Commit after claiming to make the claim visible to other replicas (the scheduler does); pass
    the token to `sync_repository(claim_token=...)`, which releases it.
    """
    now = now or utcnow()
    new = secrets.token_hex(16)
    stale_before = now - dt.timedelta(seconds=options.claim_ttl)
    cond = or_(
        GitOpsRepository.sync_claim.is_(None),
        GitOpsRepository.sync_claimed_at < stale_before,
        *([GitOpsRepository.sync_claim == token] if token else []),
    )
    res = await session.execute(
        update(GitOpsRepository)
        .where(GitOpsRepository.id == repository_id, GitOpsRepository.account_id == account_id, cond)
        .values(sync_claim=new, sync_claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    repo = await get_repository(session, account_id=account_id, repository_id=repository_id)
    await session.refresh(repo)
    if cast(CursorResult[Any], res).rowcount != 1:
        raise _busy(repo)
    return new


async def release_sync(session: AsyncSession, *, repository_id: int, token: str) -> None:
    await session.execute(
        update(GitOpsRepository)
        .where(GitOpsRepository.id == repository_id, GitOpsRepository.sync_claim == token)
        .values(sync_claim=None, sync_claimed_at=None)
        .execution_options(synchronize_session=False)
    )


async def sync_repository(
    session: AsyncSession,
    *,
    account_id: int,
    repository_id: int,
    options: GitOpsOptions,
    resolve_credential: CredentialResolver | None = None,
    triggered_by: str | None = None,
    claim_token: str | None = None,
    prefetched: Prefetched | None = None,
    now: dt.datetime | None = None,
) -> GitOpsSyncRun:
    """Fetch, parse, diff and open proposals; returns the sync run (also when it failed).

    `prefetched` is the outcome of `prefetch` done by the caller outside its transaction (so a slow
    git server never holds a database lock); without it, or when the repository's source changed
    since (branch, path_prefix, URL or credential), the fetch happens here.
    Raises NotFound (no such repository), Conflict (disabled) or Busy (another sync holds the claim).
    """
    now = now or utcnow()
    repo = await get_repository(session, account_id=account_id, repository_id=repository_id)
    if not repo.enabled:
        raise Conflict(
            f"repository {repo.id} is disabled",
            hint="enable it with system_gitops_update_repository(enabled=true)",
            repository_id=repo.id,
        )
    if _claim_is_fresh(repo, now, options) and repo.sync_claim != claim_token:
        raise _busy(repo)

    outcome = await _fetch_for(repo, options, resolve_credential, prefetched)
    fetched = outcome if isinstance(outcome, FetchResult) else None
    fetch_error = outcome if isinstance(outcome, FleetError) else None

    token = await claim_sync(
        session,
        account_id=account_id,
        repository_id=repository_id,
        options=options,
        now=now,
        token=claim_token,
    )
    # No try/finally: on a database error the caller rolls back, which drops this claim too.
    run = await _run(session, repo, fetched, fetch_error, options, triggered_by, now)
    await release_sync(session, repository_id=repo.id, token=token)
    await session.refresh(repo)
    return run


async def _run(
    session: AsyncSession,
    repo: GitOpsRepository,
    fetched: FetchResult | None,
    fetch_error: FleetError | None,
    options: GitOpsOptions,
    triggered_by: str | None,
    now: dt.datetime,
) -> GitOpsSyncRun:
    run = GitOpsSyncRun(
        account_id=repo.account_id,
        repository_id=repo.id,
        status="running",
        revision=fetched.commit if fetched else None,
        triggered_by=triggered_by,
        started_at=now,
    )
    session.add(run)
    await session.flush()
    if fetched is None:
        assert fetch_error is not None
        return await _fail(session, repo, run, "fetch", fetch_error, now)
    repo.last_fetched_revision = fetched.commit
    repo.last_fetched_at = now
    try:
        desired = parse_fleet_file(fetched.content)
    except FleetError as exc:
        return await _fail(session, repo, run, "parse", exc, now)
    repo.desired_state = desired.to_json()
    repo.desired_revision = fetched.commit

    view = await load_live(session, account_id=repo.account_id, repository_id=repo.id, desired=desired, now=now)
    changeset = diff(desired, view.resources, view.suppressed, now)
    if changeset.is_total_delete and not repo.allow_empty:
        return await _fail(session, repo, run, "diff", _total_delete_error(changeset), now)

    counts, ids = await _propose(session, repo, run, changeset, view, fetched.commit, options, now)
    run.diff_count = changeset.diff_count
    run.diff_summary = {**changeset.summary, **counts}
    run.proposal_ids = ids
    run.truncated = counts["not_opened"] > 0
    run.status = "partial" if run.truncated else "success"
    run.error = (
        f"{counts['not_opened']} change(s) not opened: max_proposals_per_sync is "
        f"{options.max_proposals_per_sync}; apply or reject the open proposals and sync again"
        if run.truncated
        else None
    )
    run.finished_at = now
    repo.last_status = run.status
    repo.last_synced_revision = fetched.commit
    repo.last_synced_at = now
    repo.last_error = run.error
    await session.flush()
    return run


def _total_delete_error(changeset: ChangeSet) -> InvalidArgument:
    return InvalidArgument(
        f"fleet.yaml is empty: syncing it would delete all {changeset.live_count} live resources",
        hint="if intended, set allow_empty=true on the repository; otherwise check branch and path_prefix",
    )


async def _fail(
    session: AsyncSession,
    repo: GitOpsRepository,
    run: GitOpsSyncRun,
    stage: str,
    exc: FleetError,
    now: dt.datetime,
) -> GitOpsSyncRun:
    run.status = "failed"
    run.stage = stage
    run.error = str(exc)
    run.finished_at = now
    repo.last_status = "failed"
    repo.last_error = f"{stage}: {exc}"
    await session.flush()
    await events.emit(
        session,
        account_id=repo.account_id,
        kind="gitops.sync_failed",
        severity="medium",
        payload={
            "repository_id": repo.id,
            "repository": repo.name,
            "sync_run_id": run.id,
            "stage": stage,
            "code": exc.code,
        },
    )
    return run


async def _propose(
    session: AsyncSession,
    repo: GitOpsRepository,
    run: GitOpsSyncRun,
    changeset: ChangeSet,
    view: LiveView,
    revision: str,
    options: GitOpsOptions,
    now: dt.datetime,
) -> tuple[dict[str, int], list[int]]:
    """Open one proposal per change up to the cap; reuse identical pending ones; supersede outdated ones."""
    # Locked (id order, like apply): a proposal an apply is committing right now is waited for and, once
    # applied, no longer matches `pending` (PostgreSQL re-checks the filter), so it is never superseded.
    stmt = (
        select(GitOpsProposal)
        .where(GitOpsProposal.repository_id == repo.id, GitOpsProposal.status == "pending")
        .order_by(GitOpsProposal.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    pending: dict[tuple[str, str], list[GitOpsProposal]] = {}
    for p in (await session.execute(stmt)).scalars():
        pending.setdefault((p.kind, p.name), []).append(p)

    owner = gitops_owner(repo.id)
    opened = reused = superseded = not_opened = 0
    standing: list[GitOpsProposal] = []  # one per change, in dependency order
    replaced: list[tuple[GitOpsProposal, list[GitOpsProposal]]] = []

    def supersede(olds: list[GitOpsProposal], by: int | None, reason: str) -> None:
        nonlocal superseded
        for old in olds:
            old.status = "superseded"
            old.superseded_by = by
            old.reason = reason
            superseded += 1

    for change in changeset.changes:
        olds = pending.pop(change.key, [])
        same = next((p for p in olds if _identical(p, change)), None)
        if same is not None:
            olds.remove(same)
            standing.append(same)
            reused += 1
            supersede(olds, same.id, f"duplicate of proposal {same.id}")
            continue
        if opened >= options.max_proposals_per_sync:
            not_opened += 1
            supersede(olds, None, f"desired state changed at {revision[:12]}; not reopened (sync hit the cap)")
            continue
        live = view.resources.get(change.kind, {}).get(change.name)
        risk = RISK_BY_ACTION[change.action]
        if live is not None and live.managed_by.startswith("gitops:") and live.managed_by != owner:
            risk = "high"  # takes a resource over from another repository
        proposal = GitOpsProposal(
            account_id=repo.account_id,
            repository_id=repo.id,
            sync_run_id=run.id,
            revision=revision,
            kind=change.kind,
            name=change.name,
            action=change.action,
            desired=change.desired,
            fields=[f.to_json() for f in change.fields],
            status="pending",
            risk=risk,
            base_fingerprint=change.base_fingerprint,
            desired_fingerprint=change.desired_fingerprint,
        )
        session.add(proposal)
        standing.append(proposal)
        replaced.append((proposal, olds))
        opened += 1

    await session.flush()  # one flush gives every new proposal its id
    for proposal, olds in replaced:
        supersede(olds, proposal.id, f"desired state changed at {revision[:12]}")
    held = {(s.kind, s.name) for s in changeset.suppressed}
    for key, olds in pending.items():
        if key not in held:
            supersede(olds, None, f"no longer needed: live matches the desired state at {revision[:12]}")
    await session.flush()
    counts = {"opened": opened, "reused": reused, "superseded": superseded, "not_opened": not_opened}
    return counts, [p.id for p in standing]


def _identical(p: GitOpsProposal, change: Change) -> bool:
    return (
        p.action == change.action
        and p.desired_fingerprint == change.desired_fingerprint
        and p.base_fingerprint == change.base_fingerprint
    )


async def drift_report(
    session: AsyncSession,
    *,
    account_id: int,
    repository_id: int,
    options: GitOpsOptions,
    resolve_credential: CredentialResolver | None = None,
    now: dt.datetime | None = None,
    prefetched: Prefetched | None = None,
) -> DriftReport:
    """Fetch, parse and diff like a sync, but write nothing (errors are raised, not recorded).
    `prefetched` is the outcome of `prefetch` done before the caller's transaction opened (used only
    while the repository still names the source it was fetched for)."""
    now = now or utcnow()
    repo = await get_repository(session, account_id=account_id, repository_id=repository_id)
    fetched = await _fetch_for(repo, options, resolve_credential, prefetched)
    if isinstance(fetched, FleetError):
        raise fetched
    desired = parse_fleet_file(fetched.content)
    return await _report(session, repo.id, account_id, desired, fetched.commit, now)


async def _report(
    session: AsyncSession,
    repository_id: int,
    account_id: int,
    desired: DesiredState,
    revision: str,
    now: dt.datetime,
) -> DriftReport:
    view = await load_live(session, account_id=account_id, repository_id=repository_id, desired=desired, now=now)
    changeset = diff(desired, view.resources, view.suppressed, now)
    return DriftReport(
        repository_id=repository_id,
        revision=revision,
        changeset=changeset,
        desired_count=desired.count,
        live_count=changeset.live_count,
    )
