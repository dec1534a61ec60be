"""Core tables: accounts, principals and tokens, audit chain, fleet events, live fleet state, approvals."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleet_mcp.db.base import Base, BigId, TimestampMixin, utcnow


class Account(TimestampMixin, Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    #: Federation DNS domain of this account's nodes (e.g. "acme.fleet.internal").
    federation_domain: Mapped[str | None] = mapped_column(String(253))
    #: Transit key version every ciphertext of this account is on (moves when all rows are rewrapped).
    transit_key_version: Mapped[int] = mapped_column(default=1)
    transit_key_rotated_at: Mapped[dt.datetime | None]


class Principal(TimestampMixin, Base):
    __tablename__ = "principals"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(120))
    #: The most a token of this principal can carry (changed only by audited admin actions).
    roles: Mapped[list[Any]] = mapped_column(default=list)
    disabled: Mapped[bool] = mapped_column(default=False)


class ApiToken(TimestampMixin, Base):
    """A bearer token; only its SHA-256 digest is stored, the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(120), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(32))
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    #: The roles this token was issued with; its caller gets these, and only those its principal still
    #: holds (so lowering a principal's roles demotes every token at once, and a new role never reaches an
    #: old token).
    roles: Mapped[list[Any]] = mapped_column(default=list)
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]


class AuditEntry(Base):
    """One row of the append-only, hash-chained audit log."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    principal: Mapped[str] = mapped_column(String(250))
    account: Mapped[str] = mapped_column(String(120))
    tool: Mapped[str] = mapped_column(String(120), index=True)
    args_digest: Mapped[str] = mapped_column(String(100))
    arguments: Mapped[dict[str, Any]]
    decision: Mapped[str] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict[str, Any] | None]
    approval_id: Mapped[str | None] = mapped_column(String(40), index=True)
    duration_ms: Mapped[float] = mapped_column(default=0.0)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's tip (one row): the lock every append takes, and an anchor that reveals a deleted tail."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigId, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class FleetEvent(Base):
    __tablename__ = "fleet_events"
    __table_args__ = (Index("ix_fleet_events_account_kind", "account_id", "kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(80))
    severity: Mapped[str] = mapped_column(String(16), default="info")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LiveResourceMixin(TimestampMixin):
    """Every live resource: canonical attributes, a revision counter and a fingerprint of the attributes."""

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(250))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    revision: Mapped[int] = mapped_column(default=1)
    fingerprint: Mapped[str] = mapped_column(String(64))
    #: "manual" or "gitops:<repository id>".
    managed_by: Mapped[str] = mapped_column(String(80), default="manual")
    drift_suppressed_until: Mapped[dt.datetime | None]
    drift_suppressed_reason: Mapped[str | None] = mapped_column(Text)


class Template(LiveResourceMixin, Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("account_id", "name"),)


class Module(LiveResourceMixin, Base):
    __tablename__ = "modules"
    __table_args__ = (UniqueConstraint("account_id", "name"),)


class Assignment(LiveResourceMixin, Base):
    """name is "<template>:<module>"."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("account_id", "name"),)


class ProviderConfig(LiveResourceMixin, Base):
    __tablename__ = "provider_configs"
    __table_args__ = (UniqueConstraint("account_id", "name"),)


class ApprovalRequest(TimestampMixin, Base):
    """A queued approval: bound to tool + requester + digest of the exact arguments; executes at most once."""

    __tablename__ = "approval_requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    tool: Mapped[str] = mapped_column(String(120))
    arguments_masked: Mapped[dict[str, Any]]
    #: Sealed (transit-encrypted) exact arguments, needed to execute on the requester's behalf.
    arguments_sealed: Mapped[str] = mapped_column(Text)
    args_digest: Mapped[str] = mapped_column(String(100))
    requested_by: Mapped[str] = mapped_column(String(250))
    requester_roles: Mapped[list[Any]] = mapped_column(default=list)
    #: The bearer token the requester asked with (HTTP); the approved run is refused once it is revoked.
    requester_token: Mapped[str | None] = mapped_column(String(120))
    rule: Mapped[str] = mapped_column(String(120))
    approvers: Mapped[list[Any]] = mapped_column(default=list)
    min_approvals: Mapped[int] = mapped_column(default=1)
    separation_of_duties: Mapped[bool] = mapped_column(default=False)
    summary: Mapped[str | None] = mapped_column(Text)
    #: pending → approved → executing → executed | failed; pending → rejected | expired | cancelled
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    decisions: Mapped[list[Any]] = mapped_column(default=list)
    decided_by: Mapped[str | None] = mapped_column(String(250))
    reason: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[dt.datetime]
    executed_at: Mapped[dt.datetime | None]
    result: Mapped[dict[str, Any] | None]
