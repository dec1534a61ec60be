"""Result models of the vault services (what tools return): credentials, checks, rotation jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel


class CredentialInfo(BaseModel):
    """Everything about a credential except its secret."""

    id: int
    account_id: int
    name: str
    kind: str
    internal: bool
    key_version: int
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class VerifyFailure(BaseModel):
    credential_id: int
    account_id: int
    name: str
    key_version: int
    error: str


class VerifyReport(BaseModel):
    checked: int
    ok: int
    failed: int
    #: At most MAX_FAILURES_LISTED entries; `failed` counts them all.
    failures: list[VerifyFailure]


class PepperStatus(BaseModel):
    key_name: str
    backend: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    min_available_version: int
    #: key version → number of stored ciphertexts at that version
    ciphertexts_by_version: dict[str, int]
    #: account transit_key_version → number of accounts
    accounts_by_version: dict[str, int]
    total_ciphertexts: int
    below_latest: int


class AccountProgress(BaseModel):
    account_id: int
    name: str
    total: int = 0
    rewrapped: int = 0
    failed: int = 0
    skipped: int = 0
    #: pending | running | done | done_with_failures | skipped
    status: str = "pending"


class FailureInfo(BaseModel):
    credential_id: int
    account_id: int
    name: str
    key_version: int
    error: str


class RotationJobInfo(BaseModel):
    id: int
    status: str
    key_name: str
    from_version: int
    to_version: int | None
    total: int
    rewrapped: int
    failed: int
    #: Rows a concurrent writer replaced between read and write (already re-encrypted by that writer).
    skipped: int
    skipped_accounts: list[str]
    reencrypt_existing: bool
    batch_size: int
    batches: int
    accounts: list[AccountProgress]
    cursor_account_id: int | None
    cursor_row_id: int
    error: str | None
    started_by: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    errors: list[FailureInfo] = []


class FinalizeResult(BaseModel):
    min_decryption_version: int
    previous_min_decryption_version: int
    latest_version: int
    refused: bool
    remaining_below: int
    message: str


class TrimResult(BaseModel):
    min_available_version: int
    min_encryption_version: int
    min_decryption_version: int
    latest_version: int
    deleted_versions: list[int]
    warning: str
