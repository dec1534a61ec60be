"""GitOps tools: repositories, sync, drift report, proposals, apply/reject, drift suppression.

Thin: each validates its input, calls `fleet_mcp.gitops.service` in the call's unit of work and
shapes the result (result models in `fleet_mcp.gitops.schemas`). Apply tools carry an approval
summary that shows the field-level diff.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from pydantic import Field

from fleet_mcp.context import ToolContext
from fleet_mcp.errors import FleetError
from fleet_mcp.gitops import service
from fleet_mcp.gitops.credentials import CredentialSource, store_resolver
from fleet_mcp.gitops.models import GitOpsProposal
from fleet_mcp.gitops.options import CredentialResolver, GitOpsOptions
from fleet_mcp.gitops.schemas import (
    ApplyOutcomeOut,
    ApplyProposalOut,
    ApplySyncRunOut,
    DriftReportOut,
    ProposalItemOut,
    ProposalOut,
    ProposalsOut,
    RepositoriesOut,
    RepositoryDeletedOut,
    RepositoryDetailOut,
    RepositoryItemOut,
    RepositoryOut,
    SuppressionItemOut,
    SuppressionOut,
    SyncRunItemOut,
    SyncRunOut,
    SyncRunsOut,
)
from fleet_mcp.registry import Args, NoArgs, tool

GITOPS: dict[str, Any] = {"toolset": "gitops"}
READ = "system.gitops.read"
WRITE = "system.gitops.write"
SYNC = "system.gitops.sync"
APPLY = "system.gitops.apply"

Kind = Literal["template", "module", "assignment", "provider_config"]
ProposalStatus = Literal["pending", "applied", "rejected", "failed", "stale", "superseded"]


def _options(ctx: ToolContext) -> GitOpsOptions:
    return GitOpsOptions.from_settings(ctx.app.settings)


def _credentials(ctx: ToolContext) -> CredentialSource | None:
    """The vault credential store (metadata reads for register/update pairing checks), if configured."""
    if ctx.app.transit is None:
        return None
    from fleet_mcp.vault.credentials import CredentialStore

    return CredentialStore(ctx.app.transit)


def _resolver(ctx: ToolContext) -> CredentialResolver | None:
    """Stored credentials by name, read with the call's session (decrypted only when git needs one)."""
    store = _credentials(ctx)
    return None if store is None else store_resolver(ctx.session, store, ctx.principal.account_id)


async def _prefetch(ctx: ToolContext, args: RepositoryIdArgs) -> Any:
    """Run git before the unit of work opens: no database lock is held while the fetch runs.

    `ctx.session` is read-only here; the handler uses the result only if the repository still names
    the same source (URL, branch, path_prefix, credential) when its unit of work runs."""
    try:
        return await service.prefetch(ctx.session, account_id=ctx.principal.account_id,
                                      repository_id=args.repository_id, options=_options(ctx),
                                      resolve_credential=_resolver(ctx))
    except FleetError:
        return None  # e.g. unknown repository: the handler reports it from inside the unit of work


class RepositoryIdArgs(Args):
    repository_id: int = Field(description="Id of the registered repository.", ge=1)


class SyncRunIdArgs(Args):
    sync_run_id: int = Field(description="Id of the sync run.", ge=1)


class ProposalIdArgs(Args):
    proposal_id: int = Field(description="Id of the proposal.", ge=1)


# -- repositories --------------------------------------------------------------------------------


class RegisterArgs(Args):
    name: str = Field(description="Unique name of the repository in this account.", min_length=1, max_length=120)
    repo_url: str = Field(
        description="https://host/path, ssh://[user@]host/path or user@host:path (file:// and local paths only "
        "when FLEET_MCP_ALLOW_LOCAL_REPOS is on). Never put credentials in the URL.",
        min_length=1,
        max_length=2048,
    )
    branch: str = Field(default="main", description="Branch whose head is the desired state.", max_length=255)
    path_prefix: str = Field(
        default="", description="Folder of fleet.yaml inside the repository ('' = root).", max_length=512
    )
    credential: str | None = Field(
        default=None, description="Name of a stored git_https/git_ssh credential.", max_length=200
    )
    auto_apply: bool = Field(default=False, description="Send each sync's proposals to apply (policy decides).")
    allow_empty: bool = Field(default=False, description="Allow a fleet.yaml that would delete every resource.")


@tool(name="system_gitops_register_repository", title="Register a GitOps repository", permission=WRITE, **GITOPS)
async def register_repository(ctx: ToolContext, args: RegisterArgs) -> RepositoryItemOut:
    """Register a git repository whose fleet.yaml is the desired fleet state.

    The URL, branch and path prefix are validated (no inline credentials, option-looking values,
    remote helpers such as ext::, absolute or '..' prefixes). Nothing is fetched until a sync."""
    repo = await service.register_repository(
        ctx.session,
        account_id=ctx.principal.account_id,
        name=args.name,
        repo_url=args.repo_url,
        branch=args.branch,
        path_prefix=args.path_prefix,
        credential=args.credential,
        auto_apply=args.auto_apply,
        allow_empty=args.allow_empty,
        allow_local=ctx.app.settings.allow_local_repos,
        credentials=_credentials(ctx),
    )
    await ctx.emit("gitops.repository_registered", payload={"repository_id": repo.id, "name": repo.name})
    return RepositoryItemOut(repository=RepositoryOut.of(repo))


@tool(
    name="system_gitops_list_repositories",
    title="List GitOps repositories",
    permission=READ,
    read_only=True,
    idempotent=True,
    **GITOPS,
)
async def list_repositories(ctx: ToolContext, args: NoArgs) -> RepositoriesOut:
    """List the registered GitOps repositories with their last sync status and drift state."""
    repos = await service.list_repositories(ctx.session, account_id=ctx.principal.account_id)
    return RepositoriesOut(repositories=[RepositoryOut.of(r) for r in repos], count=len(repos))


@tool(
    name="system_gitops_get_repository",
    title="Get a GitOps repository",
    permission=READ,
    read_only=True,
    idempotent=True,
    **GITOPS,
)
async def get_repository(ctx: ToolContext, args: RepositoryIdArgs) -> RepositoryDetailOut:
    """Get one repository and its five most recent sync runs."""
    repo, runs = await service.repository_detail(
        ctx.session, account_id=ctx.principal.account_id, repository_id=args.repository_id, runs=5
    )
    return RepositoryDetailOut(repository=RepositoryOut.of(repo), recent_sync_runs=[SyncRunOut.of(r) for r in runs])


class UpdateArgs(RepositoryIdArgs):
    branch: str | None = Field(default=None, description="New branch.", max_length=255)
    path_prefix: str | None = Field(default=None, description="New folder of fleet.yaml ('' = root).", max_length=512)
    credential: str | None = Field(
        default=None, description="Stored credential name; '' or null removes it.", max_length=200
    )
    auto_apply: bool | None = Field(default=None, description="Send each sync's proposals to apply.")
    enabled: bool | None = Field(default=None, description="Disabled repositories are neither synced nor sensed.")
    allow_empty: bool | None = Field(default=None, description="Allow a render that deletes every resource.")


@tool(
    name="system_gitops_update_repository",
    title="Update a GitOps repository",
    permission=WRITE,
    idempotent=True,
    **GITOPS,
)
async def update_repository(ctx: ToolContext, args: UpdateArgs) -> RepositoryItemOut:
    """Change a repository's branch, path prefix, credential, auto_apply or enabled flag.

    A new branch or prefix forgets the fetched state and supersedes the repository's pending proposals."""
    credential: Any = args.credential if "credential" in args.model_fields_set else service.UNSET
    repo = await service.update_repository(
        ctx.session,
        account_id=ctx.principal.account_id,
        repository_id=args.repository_id,
        branch=args.branch,
        path_prefix=args.path_prefix,
        credential=credential,
        auto_apply=args.auto_apply,
        enabled=args.enabled,
        allow_empty=args.allow_empty,
        credentials=_credentials(ctx),
    )
    return RepositoryItemOut(repository=RepositoryOut.of(repo))


@tool(
    name="system_gitops_delete_repository",
    title="Delete a GitOps repository",
    permission=WRITE,
    destructive=True,
    **GITOPS,
)
async def delete_repository(ctx: ToolContext, args: RepositoryIdArgs) -> RepositoryDeletedOut:
    """Delete a repository with its sync runs and proposals. Live resources stay (they become manual)."""
    counts = await service.delete_repository(
        ctx.session, account_id=ctx.principal.account_id, repository_id=args.repository_id
    )
    await ctx.emit("gitops.repository_deleted", severity="low", payload={"repository_id": args.repository_id})
    return RepositoryDeletedOut(deleted=True, repository_id=args.repository_id, **counts)


# -- sync and drift ------------------------------------------------------------------------------


@tool(
    name="system_gitops_sync_repository", title="Sync a GitOps repository", permission=SYNC, open_world=True,
    prepare=_prefetch, **GITOPS
)
async def sync_repository(ctx: ToolContext, args: RepositoryIdArgs) -> SyncRunItemOut:
    """Fetch the repository, diff fleet.yaml against live state and open one proposal per change.

    A failed fetch/parse/diff is recorded on the returned sync run (status failed, stage, error).
    Identical pending proposals are reused; outdated ones are superseded; at most
    max_proposals_per_sync are opened (the run is then partial)."""
    run = await service.sync_repository(
        ctx.session,
        account_id=ctx.principal.account_id,
        repository_id=args.repository_id,
        options=_options(ctx),
        resolve_credential=_resolver(ctx),
        triggered_by=ctx.principal.qualified,
        prefetched=ctx.prepared,
    )
    return SyncRunItemOut(sync_run=SyncRunOut.of(run))


class SyncRunsArgs(RepositoryIdArgs):
    limit: int = Field(default=20, ge=1, le=500, description="Most recent runs to return.")


@tool(
    name="system_gitops_list_sync_runs",
    title="List sync runs",
    permission=READ,
    read_only=True,
    idempotent=True,
    **GITOPS,
)
async def list_sync_runs(ctx: ToolContext, args: SyncRunsArgs) -> SyncRunsOut:
    """List a repository's sync runs, newest first."""
    runs = await service.list_sync_runs(
        ctx.session, account_id=ctx.principal.account_id, repository_id=args.repository_id, limit=args.limit
    )
    return SyncRunsOut(sync_runs=[SyncRunOut.of(r) for r in runs], count=len(runs))


@tool(
    name="system_gitops_get_sync_run",
    title="Get a sync run",
    permission=READ,
    read_only=True,
    idempotent=True,
    **GITOPS,
)
async def get_sync_run(ctx: ToolContext, args: SyncRunIdArgs) -> SyncRunItemOut:
    """Get one sync run: status, revision, diff summary, proposal ids, error and failed stage."""
    run = await service.get_sync_run(ctx.session, account_id=ctx.principal.account_id, sync_run_id=args.sync_run_id)
    return SyncRunItemOut(sync_run=SyncRunOut.of(run))


@tool(
    name="system_gitops_get_drift_report",
    title="Drift report",
    permission=READ,
    read_only=True,
    idempotent=True,
    open_world=True,
    prepare=_prefetch,
    **GITOPS,
)
async def get_drift_report(ctx: ToolContext, args: RepositoryIdArgs) -> DriftReportOut:
    """Fetch the repository and show how live state differs from fleet.yaml, field by field. Writes nothing."""
    report = await service.drift_report(
        ctx.session,
        account_id=ctx.principal.account_id,
        repository_id=args.repository_id,
        options=_options(ctx),
        resolve_credential=_resolver(ctx),
        prefetched=ctx.prepared,
    )
    return DriftReportOut(**report.to_json())


# -- proposals -----------------------------------------------------------------------------------


class ProposalsArgs(Args):
    repository_id: int | None = Field(default=None, ge=1, description="Only this repository's proposals.")
    sync_run_id: int | None = Field(default=None, ge=1, description="Only proposals standing for this run's changes.")
    status: ProposalStatus | None = Field(default=None, description="Only proposals in this status.")
    limit: int = Field(default=200, ge=1, le=500, description="At most this many, oldest first.")


@tool(
    name="system_gitops_list_proposals",
    title="List proposals",
    permission=READ,
    read_only=True,
    idempotent=True,
    **GITOPS,
)
async def list_proposals(ctx: ToolContext, args: ProposalsArgs) -> ProposalsOut:
    """List proposals, optionally by repository, sync run and status."""
    props = await service.list_proposals(
        ctx.session,
        account_id=ctx.principal.account_id,
        repository_id=args.repository_id,
        sync_run_id=args.sync_run_id,
        status=args.status,
        limit=args.limit,
    )
    return ProposalsOut(proposals=[ProposalOut.of(p) for p in props], count=len(props))


@tool(
    name="system_gitops_get_proposal",
    title="Get a proposal",
    permission=READ,
    read_only=True,
    idempotent=True,
    **GITOPS,
)
async def get_proposal(ctx: ToolContext, args: ProposalIdArgs) -> ProposalItemOut:
    """Get one proposal with its field-level changes, status, risk and base fingerprint."""
    p = await service.get_proposal(ctx.session, account_id=ctx.principal.account_id, proposal_id=args.proposal_id)
    return ProposalItemOut(proposal=ProposalOut.of(p))


# -- apply / reject ------------------------------------------------------------------------------

_SUMMARY_FIELDS = 12
_SUMMARY_PROPOSALS = 25


def _value(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_proposal(p: GitOpsProposal) -> list[str]:
    """Human lines for an approver: the change and its field-level diff (secrets already masked)."""
    head = f"#{p.id} {p.action} {p.kind} {p.name!r} (risk {p.risk}, commit {p.revision[:12]}, now {p.status})"
    lines = [head]
    fields = p.fields or []
    for f in fields[:_SUMMARY_FIELDS]:
        lines.append(f"    {f['path']}: {_value(f['live'])} → {_value(f['desired'])}")
    if len(fields) > _SUMMARY_FIELDS:
        lines.append(f"    … and {len(fields) - _SUMMARY_FIELDS} more field(s)")
    return lines


_FORCE_NOTE = "FORCED: applies even if live state changed since the proposal (overwrites manual edits)."


class ApplyProposalArgs(ProposalIdArgs):
    force: bool = Field(
        default=False,
        description="Apply even if live state changed since the proposal "
        "(overwrites manual edits; the policy sends this to a second approver).",
    )


async def _apply_proposal_summary(ctx: ToolContext, args: ApplyProposalArgs) -> str:
    p = await service.get_proposal(ctx.session, account_id=ctx.principal.account_id, proposal_id=args.proposal_id)
    lines = [f"Apply GitOps proposal of repository {p.repository_id}:", *describe_proposal(p)]
    if args.force:
        lines.append(_FORCE_NOTE)
    return "\n".join(lines)


@tool(
    name="system_gitops_apply_proposal",
    title="Apply a proposal",
    permission=APPLY,
    destructive=True,
    summary=_apply_proposal_summary,
    **GITOPS,
)
async def apply_proposal(ctx: ToolContext, args: ApplyProposalArgs) -> ApplyProposalOut:
    """Apply one pending proposal in one transaction.

    Refused as stale (conflict: true, nothing changes) when the live resource no longer matches the
    proposal's base fingerprint, unless force=true. A failure rolls back and marks it failed."""
    result = await service.apply_proposal(
        ctx.session,
        account_id=ctx.principal.account_id,
        proposal_id=args.proposal_id,
        force=args.force,
        applied_by=ctx.principal.qualified,
    )
    (p,) = result.proposals
    return ApplyProposalOut(
        applied=result.applied,
        conflict=result.conflict,
        error=result.error,
        proposal=ProposalOut.of(p),
        results=[ApplyOutcomeOut(**r) for r in result.results],
    )


class ApplySyncRunArgs(SyncRunIdArgs):
    force: bool = Field(
        default=False,
        description="Apply even stale proposals (overwrites manual edits; the policy sends this to a second approver).",
    )


async def _apply_run_summary(ctx: ToolContext, args: ApplySyncRunArgs) -> str:
    account_id = ctx.principal.account_id
    run = await service.get_sync_run(ctx.session, account_id=account_id, sync_run_id=args.sync_run_id)
    props = await service.list_proposals(ctx.session, account_id=account_id, sync_run_id=run.id)
    wanted = ("pending", "stale") if args.force else ("pending",)
    todo = [p for p in props if p.status in wanted]
    lines = [
        f"Apply {len(todo)} proposal(s) of sync run {run.id} (repository {run.repository_id}, commit "
        f"{(run.revision or '?')[:12]}) all-or-nothing:"
    ]
    for p in todo[:_SUMMARY_PROPOSALS]:
        lines.extend(describe_proposal(p))
    if len(todo) > _SUMMARY_PROPOSALS:
        lines.append(f"… and {len(todo) - _SUMMARY_PROPOSALS} more proposal(s)")
    if args.force:
        lines.append(_FORCE_NOTE)
    return "\n".join(lines)


@tool(
    name="system_gitops_apply_sync_run",
    title="Apply a sync run",
    permission=APPLY,
    destructive=True,
    summary=_apply_run_summary,
    **GITOPS,
)
async def apply_sync_run(ctx: ToolContext, args: ApplySyncRunArgs) -> ApplySyncRunOut:
    """Apply every pending proposal of a sync run in dependency order, all or nothing.

    Any stale proposal refuses the whole batch (those become stale; nothing changes) unless
    force=true; any failure rolls everything back and marks the proposals failed with the reason."""
    result = await service.apply_sync_run(
        ctx.session,
        account_id=ctx.principal.account_id,
        sync_run_id=args.sync_run_id,
        force=args.force,
        applied_by=ctx.principal.qualified,
    )
    return ApplySyncRunOut(
        applied=result.applied,
        conflict=result.conflict,
        error=result.error,
        results=[ApplyOutcomeOut(**r) for r in result.results],
    )


class RejectArgs(ProposalIdArgs):
    reason: str = Field(
        description="Why the change is not wanted (kept for the audit trail).", min_length=1, max_length=2000
    )


@tool(name="system_gitops_reject_proposal", title="Reject a proposal", permission=APPLY, **GITOPS)
async def reject_proposal(ctx: ToolContext, args: RejectArgs) -> ProposalItemOut:
    """Reject a pending or stale proposal; it will never be applied."""
    p = await service.reject_proposal(
        ctx.session,
        account_id=ctx.principal.account_id,
        proposal_id=args.proposal_id,
        reason=args.reason,
        decided_by=ctx.principal.qualified,
    )
    return ProposalItemOut(proposal=ProposalOut.of(p))


class SuppressArgs(Args):
    kind: Kind = Field(description="Kind of the live resource.")
    name: str = Field(
        description="Name of the live resource (assignments: '<template>:<module>').", min_length=1, max_length=257
    )
    reason: str = Field(description="Why its drift is accepted for now.", min_length=1, max_length=2000)
    until: dt.datetime | None = Field(
        default=None, description="ISO 8601 time with offset when the suppression ends; omit for no expiry."
    )


@tool(name="system_gitops_suppress_drift", title="Suppress drift of a resource", permission=WRITE, **GITOPS)
async def suppress_drift(ctx: ToolContext, args: SuppressArgs) -> SuppressionItemOut:
    """Stop reporting and proposing changes for one live resource until `until` (or indefinitely)."""
    out = await service.suppress_drift(
        ctx.session,
        account_id=ctx.principal.account_id,
        kind=args.kind,
        name=args.name,
        reason=args.reason,
        until=args.until,
    )
    await ctx.emit(
        "gitops.drift_suppressed",
        severity="low",
        payload={"kind": args.kind, "name": args.name, "until": args.until.isoformat() if args.until else None},
    )
    return SuppressionItemOut(suppression=SuppressionOut(**out))
