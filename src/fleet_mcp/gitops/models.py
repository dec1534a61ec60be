"""GitOps tables: registered repositories, sync runs and the per-change proposals they open."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleet_mcp.db.base import Base, BigId, TimestampMixin, utcnow
from fleet_mcp.fleet import models as _fleet_models  # noqa: F401  (registers fleet_live_generations)


class GitOpsRepository(TimestampMixin, Base):
    __tablename__ = "gitops_repositories"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    repo_url: Mapped[str] = mapped_column(String(2048))
    branch: Mapped[str] = mapped_column(String(255), default="main")
    path_prefix: Mapped[str] = mapped_column(String(512), default="")
    #: Name of a stored credential (git_https or git_ssh); never the secret itself.
    credential: Mapped[str | None] = mapped_column(String(250))
    auto_apply: Mapped[bool] = mapped_column(default=False)
    enabled: Mapped[bool] = mapped_column(default=True)
    #: Allow a render that deletes every live resource (otherwise such a sync fails).
    allow_empty: Mapped[bool] = mapped_column(default=False)

    #: never | success | partial | failed — outcome of the last sync.
    last_status: Mapped[str] = mapped_column(String(20), default="never")
    last_synced_revision: Mapped[str | None] = mapped_column(String(64))
    last_synced_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_fetched_revision: Mapped[str | None] = mapped_column(String(64))
    last_fetched_at: Mapped[dt.datetime | None]

    #: Parsed desired state of `desired_revision` (kind → name → attributes), read by the drift sensor.
    desired_state: Mapped[dict[str, Any] | None]
    desired_revision: Mapped[str | None] = mapped_column(String(64))
    #: Drift sensor memory: what it last compared, so an unchanged tick costs one cheap query.
    drift_detected: Mapped[bool] = mapped_column(default=False)
    drift_count: Mapped[int] = mapped_column(default=0)
    drift_checked_at: Mapped[dt.datetime | None]
    drift_checked_revision: Mapped[str | None] = mapped_column(String(64))
    last_live_digest: Mapped[str | None] = mapped_column(String(64))
    #: Live generation (fleet.store) and earliest suppression expiry seen by the last full check: while
    #: neither moved (and the check is recent), a tick ends after two primary-key reads.
    last_live_generation: Mapped[int | None] = mapped_column(BigInteger)
    next_suppression_expiry: Mapped[dt.datetime | None]

    #: Sync claim: a token and when it was taken; a second sync is told Busy while it is held.
    sync_claim: Mapped[str | None] = mapped_column(String(64))
    sync_claimed_at: Mapped[dt.datetime | None]


class GitOpsSyncRun(Base):
    __tablename__ = "gitops_sync_runs"
    __table_args__ = (Index("ix_gitops_sync_runs_repository_started", "repository_id", "started_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("gitops_repositories.id", ondelete="CASCADE"))
    #: running → success | partial | failed
    status: Mapped[str] = mapped_column(String(20), default="running")
    revision: Mapped[str | None] = mapped_column(String(64))
    diff_count: Mapped[int] = mapped_column(default=0)
    diff_summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Every proposal standing for a change of this run: opened now or identical ones reused.
    proposal_ids: Mapped[list[Any]] = mapped_column(default=list)
    truncated: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    #: fetch | parse | diff | propose — where a failed run stopped.
    stage: Mapped[str | None] = mapped_column(String(20))
    triggered_by: Mapped[str | None] = mapped_column(String(250))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]


class GitOpsProposal(TimestampMixin, Base):
    __tablename__ = "gitops_proposals"
    __table_args__ = (
        Index("ix_gitops_proposals_target", "repository_id", "kind", "name", "status"),
        Index("ix_gitops_proposals_sync_run", "sync_run_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("gitops_repositories.id", ondelete="CASCADE"))
    sync_run_id: Mapped[int] = mapped_column(BigId, ForeignKey("gitops_sync_runs.id", ondelete="CASCADE"))
    revision: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(260))
    #: create | update | delete
    action: Mapped[str] = mapped_column(String(10))
    #: Canonical attributes to apply (None for a delete).
    desired: Mapped[dict[str, Any] | None]
    #: Field-level changes [{path, live, desired}] with secrets masked.
    fields: Mapped[list[Any]] = mapped_column(default=list)
    #: pending → applied | rejected | failed | stale | superseded
    status: Mapped[str] = mapped_column(String(20), default="pending")
    #: low (create) | medium (update) | high (delete)
    risk: Mapped[str] = mapped_column(String(10))
    #: Fingerprint of the live resource the change was computed against (None for a create).
    base_fingerprint: Mapped[str | None] = mapped_column(String(64))
    desired_fingerprint: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    conflict: Mapped[bool] = mapped_column(default=False)
    superseded_by: Mapped[int | None] = mapped_column(BigId)
    decided_by: Mapped[str | None] = mapped_column(String(250))
    reason: Mapped[str | None] = mapped_column(Text)
    forced: Mapped[bool] = mapped_column(default=False)
    applied_at: Mapped[dt.datetime | None]
