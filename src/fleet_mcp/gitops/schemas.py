"""Result shapes of the GitOps tools (never a credential: repositories name theirs, proposals mask secrets).

One naming scheme, as in `federation.schemas`: every result model ends in `Out`; `<Thing>Out` is one
record, `<Thing>ItemOut` wraps one record under its name, `<Things>Out` is a list with its count.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from fleet_mcp.gitops.models import GitOpsProposal, GitOpsRepository, GitOpsSyncRun


class RepositoryOut(BaseModel):
    id: int
    name: str
    repo_url: str
    branch: str
    path_prefix: str
    credential: str | None = Field(description="Name of the stored credential (never the secret).")
    auto_apply: bool
    enabled: bool
    allow_empty: bool = Field(description="Whether a render that deletes every live resource is allowed.")
    last_status: str = Field(description="never | success | partial | failed")
    last_synced_revision: str | None
    last_synced_at: dt.datetime | None
    last_error: str | None
    last_fetched_revision: str | None
    drift_detected: bool
    drift_count: int
    drift_checked_at: dt.datetime | None
    created_at: dt.datetime | None

    @classmethod
    def of(cls, r: GitOpsRepository) -> RepositoryOut:
        return cls(
            id=r.id,
            name=r.name,
            repo_url=r.repo_url,
            branch=r.branch,
            path_prefix=r.path_prefix,
            credential=r.credential,
            auto_apply=r.auto_apply,
            enabled=r.enabled,
            allow_empty=r.allow_empty,
            last_status=r.last_status,
            last_synced_revision=r.last_synced_revision,
            last_synced_at=r.last_synced_at,
            last_error=r.last_error,
            last_fetched_revision=r.last_fetched_revision,
            drift_detected=r.drift_detected,
            drift_count=r.drift_count,
            drift_checked_at=r.drift_checked_at,
            created_at=r.created_at,
        )


class SyncRunOut(BaseModel):
    id: int
    repository_id: int
    status: str = Field(description="running | success | partial | failed")
    revision: str | None = Field(description="The fetched commit.")
    diff_count: int
    diff_summary: dict[str, Any] = Field(description="Changes by kind and by action; opened/reused/superseded.")
    proposal_ids: list[int] = Field(description="One proposal per change (opened now or identical ones reused).")
    truncated: bool = Field(description="True when max_proposals_per_sync left changes unopened (status partial).")
    error: str | None
    stage: str | None = Field(description="fetch | parse | diff — where a failed run stopped.")
    triggered_by: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None

    @classmethod
    def of(cls, r: GitOpsSyncRun) -> SyncRunOut:
        return cls(
            id=r.id,
            repository_id=r.repository_id,
            status=r.status,
            revision=r.revision,
            diff_count=r.diff_count,
            diff_summary=r.diff_summary or {},
            proposal_ids=[int(i) for i in r.proposal_ids or []],
            truncated=r.truncated,
            error=r.error,
            stage=r.stage,
            triggered_by=r.triggered_by,
            started_at=r.started_at,
            finished_at=r.finished_at,
        )


class FieldChangeOut(BaseModel):
    path: str = Field(description="Dotted path of the changed leaf, e.g. config.tls.protocols.")
    live: Any = Field(description="Current live value (secrets masked as ***), null when absent.")
    desired: Any = Field(description="Value in git (secrets masked), null when absent.")


class ProposalOut(BaseModel):
    id: int
    repository_id: int
    sync_run_id: int
    revision: str
    kind: str
    name: str
    action: str = Field(description="create | update | delete")
    fields: list[FieldChangeOut]
    desired: dict[str, Any] | None = Field(description="Canonical attributes that apply writes (null for a delete).")
    status: str = Field(description="pending | applied | rejected | failed | stale | superseded")
    risk: str = Field(description="low | medium | high (delete = high)")
    base_fingerprint: str | None = Field(description="Live fingerprint the change was computed against.")
    desired_fingerprint: str | None
    error: str | None
    conflict: bool
    superseded_by: int | None
    decided_by: str | None
    reason: str | None
    forced: bool
    applied_at: dt.datetime | None
    created_at: dt.datetime | None

    @classmethod
    def of(cls, p: GitOpsProposal) -> ProposalOut:
        return cls(
            id=p.id,
            repository_id=p.repository_id,
            sync_run_id=p.sync_run_id,
            revision=p.revision,
            kind=p.kind,
            name=p.name,
            action=p.action,
            fields=[FieldChangeOut(**f) for f in p.fields or []],
            desired=p.desired,
            status=p.status,
            risk=p.risk,
            base_fingerprint=p.base_fingerprint,
            desired_fingerprint=p.desired_fingerprint,
            error=p.error,
            conflict=p.conflict,
            superseded_by=p.superseded_by,
            decided_by=p.decided_by,
            reason=p.reason,
            forced=p.forced,
            applied_at=p.applied_at,
            created_at=p.created_at,
        )


class RepositoryItemOut(BaseModel):
    repository: RepositoryOut


class RepositoriesOut(BaseModel):
    repositories: list[RepositoryOut]
    count: int


class RepositoryDetailOut(BaseModel):
    repository: RepositoryOut
    recent_sync_runs: list[SyncRunOut]


class RepositoryDeletedOut(BaseModel):
    deleted: bool
    repository_id: int
    proposals_deleted: int
    sync_runs_deleted: int
    resources_released: int = Field(description="Live resources it managed, now managed_by=manual.")


class SyncRunItemOut(BaseModel):
    sync_run: SyncRunOut


class SyncRunsOut(BaseModel):
    sync_runs: list[SyncRunOut]
    count: int


class ChangeOut(BaseModel):
    kind: str
    name: str
    action: str
    risk: str
    fields: list[FieldChangeOut]
    base_fingerprint: str | None
    desired_fingerprint: str | None


class SuppressedOut(BaseModel):
    kind: str
    name: str
    action: str
    until: str | None
    reason: str | None


class DriftReportOut(BaseModel):
    repository_id: int
    revision: str
    drift: bool
    diff_count: int
    is_total_delete: bool
    summary: dict[str, Any]
    changes: list[ChangeOut]
    suppressed: list[SuppressedOut]


class ProposalsOut(BaseModel):
    proposals: list[ProposalOut]
    count: int


class ProposalItemOut(BaseModel):
    proposal: ProposalOut


class ApplyOutcomeOut(BaseModel):
    proposal_id: int
    status: str
    error: str | None


class ApplyProposalOut(BaseModel):
    applied: bool
    conflict: bool = Field(description="True when live state changed since the proposal (it is now stale).")
    error: str | None
    proposal: ProposalOut
    results: list[ApplyOutcomeOut]


class ApplySyncRunOut(BaseModel):
    applied: bool
    conflict: bool
    error: str | None
    results: list[ApplyOutcomeOut]


class SuppressionOut(BaseModel):
    kind: str
    name: str
    suppressed: bool
    until: dt.datetime | None
    reason: str | None


class SuppressionItemOut(BaseModel):
    suppression: SuppressionOut
