"""Vault tables: the local transit keyring, encrypted credentials, and pepper rotation jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleet_mcp.db.base import Base, BigId, utcnow

#: Kinds an operator may store through the tools.
USER_KINDS = ("generic", "git_https", "git_ssh", "api_key", "password", "token")
#: Kinds only the server itself writes (hidden from listings unless asked for).
INTERNAL_KINDS = ("ca_private_key", "approval_arguments", "internal")

JOB_ACTIVE = ("pending", "running", "paused")
JOB_DONE = ("completed", "completed_with_failures", "failed")


class TransitKeyConfig(Base):
    """Key-level settings of a local transit key (the local backend's equivalent of Vault's key policy)."""

    __tablename__ = "transit_key_configs"

    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    latest_version: Mapped[int] = mapped_column(default=1)
    min_decryption_version: Mapped[int] = mapped_column(default=1)
    min_encryption_version: Mapped[int] = mapped_column(default=0)
    #: Versions below this were trimmed (deleted for good).
    min_available_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TransitKeyVersion(Base):
    """One version of a local transit key: 32 key bytes wrapped with AES-256-GCM by the master key."""

    __tablename__ = "transit_keys"
    __table_args__ = (UniqueConstraint("key_name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key_name: Mapped[str] = mapped_column(ForeignKey("transit_key_configs.name", ondelete="CASCADE"))
    version: Mapped[int]
    #: nonce(12) + AES-256-GCM(master key, version key, aad = key name and version) + tag(16).
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Credential(Base):
    """A secret encrypted under the pepper; `key_version` says which transit key version sealed it."""

    __tablename__ = "credentials"
    __table_args__ = (
        UniqueConstraint("account_id", "name"),
        Index("ix_credentials_account_key_version", "account_id", "key_version"),
        # Keyset pagination of a rotation walks an account in id order.
        Index("ix_credentials_account_id_id", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(250))
    kind: Mapped[str] = mapped_column(String(40))
    internal: Mapped[bool] = mapped_column(default=False)
    ciphertext: Mapped[str] = mapped_column(Text)
    key_version: Mapped[int]
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: Moves when the secret or its metadata changes, not when a rotation rewraps it.
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:  # never the ciphertext
        return f"Credential(id={self.id}, account_id={self.account_id}, name={self.name!r}, v{self.key_version})"


class RotationJob(Base):
    """A pepper rotation: rotate the key, then rewrap every ciphertext below `to_version`, resumably."""

    __tablename__ = "rotation_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_name: Mapped[str] = mapped_column(String(120))
    #: pending | running | paused | completed | completed_with_failures | failed
    status: Mapped[str] = mapped_column(String(32), index=True)
    #: 1 while the job is pending/running/paused, NULL afterwards: the unique index allows one active job.
    active_slot: Mapped[int | None] = mapped_column(unique=True)
    reencrypt_existing: Mapped[bool] = mapped_column(default=True)
    batch_size: Mapped[int] = mapped_column(default=250)
    from_version: Mapped[int]
    #: The intent, recorded before anything is rotated: the key version this job rotates the key to
    #: (from_version + 1). A (re)started job whose key already reached it adopts that version instead of
    #: rotating again, so a key is rotated at most once per job whatever crashes in between.
    target_version: Mapped[int | None]
    #: Set once the key has been rotated (or the rotation adopted); rows below it are rewrapped.
    to_version: Mapped[int | None]
    total: Mapped[int] = mapped_column(default=0)
    rewrapped: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    #: Rows changed by a concurrent writer between read and write (their writer re-encrypted them).
    skipped: Mapped[int] = mapped_column(default=0)
    #: {account id: {name, total, rewrapped, failed, skipped, status}}
    account_progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    skipped_accounts: Mapped[list[Any]] = mapped_column(default=list)
    cursor_account_id: Mapped[int | None]
    cursor_row_id: Mapped[int] = mapped_column(BigId, default=0)
    cursor_pass: Mapped[int] = mapped_column(default=0)
    batches: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    started_by: Mapped[str] = mapped_column(String(250))
    #: The approval request the rotation was executed under, if any: every audit row of the job names it.
    approval_id: Mapped[str | None] = mapped_column(String(40))
    #: Which process runs the job; claims compare-and-set it, so a job runs in one place at a time.
    owner: Mapped[str | None] = mapped_column(String(80))
    heartbeat_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RotationFailure(Base):
    """A ciphertext a rotation job could not rewrap, and why (never the ciphertext itself)."""

    __tablename__ = "rotation_failures"
    __table_args__ = (UniqueConstraint("job_id", "credential_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("rotation_jobs.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[int] = mapped_column(BigId)
    account_id: Mapped[int]
    credential_name: Mapped[str] = mapped_column(String(250))
    key_version: Mapped[int]
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
