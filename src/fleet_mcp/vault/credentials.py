"""The credential store: write-only secrets encrypted under the pepper, each row recording its key version.

Services take the caller's AsyncSession and never commit. Secrets go in as SecretStr (or bytes for
internal callers) and never come back out of the public operations; only `get_plaintext` and
`unseal` return plaintext, for internal callers (git credentials, CA private keys).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.audit import is_secret_key
from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Account
from fleet_mcp.errors import Conflict, InvalidArgument, NotFound
from fleet_mcp.vault.models import INTERNAL_KINDS, USER_KINDS, Credential
from fleet_mcp.vault.schemas import CredentialInfo, PepperStatus, VerifyFailure, VerifyReport
from fleet_mcp.vault.transit import KeyInfo, TransitBackend, TransitItemError, ciphertext_version

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/:+-]{0,199}$")
MAX_SECRET_BYTES = 64 * 1024
MAX_INTERNAL_BYTES = 1024 * 1024  # sealed approval arguments, key material
MAX_METADATA_BYTES = 8 * 1024
MAX_FAILURES_LISTED = 100


def info(row: Credential) -> CredentialInfo:
    return CredentialInfo(
        id=row.id,
        account_id=row.account_id,
        name=row.name,
        kind=row.kind,
        internal=row.internal,
        key_version=row.key_version,
        metadata=dict(row.meta or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid credential name {name!r}",
            hint="use 1-200 letters, digits or . _ @ / : + -, starting with a letter or digit",
        )
    return name


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata is shown in listings, so it may not carry secrets: secret-looking keys are refused."""
    metadata = dict(metadata or {})

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                p = f"{path}.{k}" if path else str(k)
                if is_secret_key(str(k)):
                    raise InvalidArgument(
                        f"metadata key {p!r} looks like a secret; metadata is readable by anyone who lists",
                        hint="put the secret in `secret` and keep only descriptive fields in metadata",
                    )
                walk(v, p)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")

    walk(metadata, "")
    try:
        size = len(json.dumps(metadata, sort_keys=True))
    except (TypeError, ValueError):
        raise InvalidArgument("metadata must be JSON (strings, numbers, booleans, lists, objects)") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(f"metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}")
    return metadata


class CredentialStore:
    """Credential operations over one transit backend; every method takes the caller's session."""

    def __init__(self, transit: TransitBackend) -> None:
        self.transit = transit

    def __repr__(self) -> str:
        return f"CredentialStore({self.transit!r})"

    # -- write -------------------------------------------------------------------------------------
    async def store(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        name: str,
        kind: str,
        secret: SecretStr,
        metadata: dict[str, Any] | None = None,
    ) -> CredentialInfo:
        """Create or replace a user credential by name. The secret is encrypted; it is never returned."""
        if kind not in USER_KINDS:
            raise InvalidArgument(f"unknown credential kind {kind!r}", hint=f"use one of: {', '.join(USER_KINDS)}")
        data = secret.get_secret_value().encode("utf-8")
        return await self._put(session, account_id, name, kind, data, metadata, internal=False)

    async def _put(
        self,
        session: AsyncSession,
        account_id: int,
        name: str,
        kind: str,
        plaintext: bytes,
        metadata: dict[str, Any] | None,
        *,
        internal: bool,
    ) -> CredentialInfo:
        check_name(name)
        meta = check_metadata(metadata)
        if not plaintext:
            raise InvalidArgument("the secret is empty")
        limit = MAX_INTERNAL_BYTES if internal else MAX_SECRET_BYTES
        if len(plaintext) > limit:
            raise InvalidArgument(f"the secret is {len(plaintext)} bytes; the limit is {limit}")
        now = utcnow()
        for _ in range(3):
            # Lock the row first, encrypt second: a rotation that rotated before we hold the row gives us
            # the new version; one that rotates after our commit finds our row below its target. Encrypting
            # before taking the lock could commit an old-version ciphertext behind a rotation's cursor.
            row = await self._get(session, account_id, name, lock=True)
            ciphertext = await self.transit.encrypt(plaintext)
            version = ciphertext_version(ciphertext)
            assert version is not None
            if row is not None:
                if row.internal != internal:
                    raise Conflict(
                        f"credential {name!r} is {'internal' if row.internal else 'a user credential'}; "
                        "it cannot be replaced from here",
                        name=name,
                    )
                row.kind, row.ciphertext, row.key_version, row.meta, row.updated_at = (
                    kind,
                    ciphertext,
                    version,
                    meta,
                    now,
                )
                await session.flush()
                return info(row)
            row = Credential(
                account_id=account_id,
                name=name,
                kind=kind,
                internal=internal,
                ciphertext=ciphertext,
                key_version=version,
                meta=meta,
                created_at=now,
                updated_at=now,
            )
            try:
                async with session.begin_nested():
                    session.add(row)
            except IntegrityError:  # created concurrently under the same name: update it instead
                continue
            return info(row)
        raise Conflict(f"credential {name!r} is being written concurrently; retry", name=name)

    async def delete(
        self, session: AsyncSession, *, account_id: int, name: str, allow_internal: bool = False
    ) -> CredentialInfo:
        row = await self._get(session, account_id, name)
        if row is None or (row.internal and not allow_internal):
            raise NotFound(f"no credential named {name!r} in this account", name=name)
        out = info(row)
        await session.delete(row)
        await session.flush()
        return out

    # -- read --------------------------------------------------------------------------------------
    async def _get(self, session: AsyncSession, account_id: int, name: str, *, lock: bool = False) -> Credential | None:
        stmt = select(Credential).where(Credential.account_id == account_id, Credential.name == name)
        if lock:
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        return (await session.execute(stmt)).scalar_one_or_none()

    async def get(self, session: AsyncSession, *, account_id: int, name: str) -> CredentialInfo:
        row = await self._get(session, account_id, name)
        if row is None:
            raise NotFound(f"no credential named {name!r} in this account", name=name)
        return info(row)

    async def list(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        kind: str | None = None,
        include_internal: bool = False,
    ) -> list[CredentialInfo]:
        stmt = select(Credential).where(Credential.account_id == account_id).order_by(Credential.name)
        if kind is not None:
            stmt = stmt.where(Credential.kind == kind)
        if not include_internal:
            stmt = stmt.where(Credential.internal.is_(False))
        return [info(r) for r in (await session.execute(stmt)).scalars()]

    async def get_plaintext(self, session: AsyncSession, account_id: int, name: str) -> bytes:
        """The secret of a credential, for internal callers only (git fetch, CA signing). Never log it."""
        row = await self._get(session, account_id, name)
        if row is None:
            raise NotFound(f"no credential named {name!r} in this account", name=name)
        return await self.transit.decrypt(row.ciphertext)

    # -- internal secrets (CA private keys and the like) -------------------------------------------
    async def seal(self, session: AsyncSession, account_id: int, name: str, kind: str, plaintext: bytes) -> int:
        """Store internal key material (upsert by name); return the credential id to keep as a reference."""
        if kind in USER_KINDS:
            raise InvalidArgument(
                f"kind {kind!r} is a user kind; internal secrets use their own kind",
                hint=f"e.g. one of: {', '.join(INTERNAL_KINDS)}",
            )
        stored = await self._put(session, account_id, name, kind, bytes(plaintext), None, internal=True)
        return stored.id

    async def unseal(self, session: AsyncSession, credential_id: int) -> bytes:
        row = await session.get(Credential, credential_id)
        if row is None:
            raise NotFound(f"no sealed secret with id {credential_id}", credential_id=credential_id)
        return await self.transit.decrypt(row.ciphertext)

    # -- checks ------------------------------------------------------------------------------------
    async def verify(
        self, session: AsyncSession, *, account_id: int | None = None, batch_size: int = 500
    ) -> VerifyReport:
        """Decrypt every secret (of one account, or all) and count failures; plaintexts are dropped."""
        checked = ok = failed = 0
        failures: list[VerifyFailure] = []
        after = 0
        while True:
            stmt = (
                select(
                    Credential.id,
                    Credential.account_id,
                    Credential.name,
                    Credential.key_version,
                    Credential.ciphertext,
                )
                .where(Credential.id > after)
                .order_by(Credential.id)
                .limit(batch_size)
            )
            if account_id is not None:
                stmt = stmt.where(Credential.account_id == account_id)
            rows = (await session.execute(stmt)).all()
            if not rows:
                break
            results = await self.transit.decrypt_batch([r.ciphertext for r in rows])
            for r, res in zip(rows, results, strict=True):
                checked += 1
                if isinstance(res, TransitItemError):
                    failed += 1
                    if len(failures) < MAX_FAILURES_LISTED:
                        failures.append(
                            VerifyFailure(
                                credential_id=r.id,
                                account_id=r.account_id,
                                name=r.name,
                                key_version=r.key_version,
                                error=res.message,
                            )
                        )
                else:
                    ok += 1
            del results
            after = rows[-1].id
        return VerifyReport(checked=checked, ok=ok, failed=failed, failures=failures)

    async def pepper_status(self, session: AsyncSession, *, account_id: int | None = None) -> PepperStatus:
        """The key's versions and policy, with ciphertext and account counts of one account (`account_id`)
        or of every account (None: only for callers allowed to see every account)."""
        key: KeyInfo = await self.transit.read_key()
        by_stmt = select(Credential.key_version, func.count()).group_by(Credential.key_version)
        acct_stmt = select(Account.transit_key_version, func.count()).group_by(Account.transit_key_version)
        if account_id is not None:
            by_stmt = by_stmt.where(Credential.account_id == account_id)
            acct_stmt = acct_stmt.where(Account.id == account_id)
        by_version = {
            str(v): n for v, n in (await session.execute(by_stmt.order_by(Credential.key_version))).all()
        }
        accounts = {
            str(v): n for v, n in (await session.execute(acct_stmt.order_by(Account.transit_key_version))).all()
        }
        total = sum(by_version.values())
        below = sum(n for v, n in by_version.items() if int(v) < key.latest_version)
        return PepperStatus(
            key_name=key.name,
            backend=self.transit.kind,
            latest_version=key.latest_version,
            min_decryption_version=key.min_decryption_version,
            min_encryption_version=key.min_encryption_version,
            min_available_version=key.min_available_version,
            ciphertexts_by_version=by_version,
            accounts_by_version=accounts,
            total_ciphertexts=total,
            below_latest=below,
        )


class CredentialKeySealer:
    """Adapter to federation's `KeySealer` protocol: every seal is a new internal credential row (so rotation
    covers it) and the reference is `credential:<id>`."""

    def __init__(self, transit: TransitBackend, *, kind: str = "ca_private_key") -> None:
        self._store = CredentialStore(transit)
        self._kind = kind

    def __repr__(self) -> str:
        return f"CredentialKeySealer(kind={self._kind!r})"

    async def seal(self, session: AsyncSession, account_id: int, plaintext: bytes, *, label: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")[:150] or "key"
        name = f"{self._kind}/{safe}/{secrets.token_hex(6)}"
        credential_id = await self._store.seal(session, account_id, name, self._kind, plaintext)
        return f"credential:{credential_id}"

    async def unseal(self, session: AsyncSession, ref: str) -> bytes:
        prefix, _, ident = ref.partition(":")
        if prefix != "credential" or not ident.isdigit():
            raise InvalidArgument(f"not a sealed-key reference: {ref!r}")
        return await self._store.unseal(session, int(ident))


# -- module-level helpers for internal callers (approval arguments, sealed keys) ------------------------
async def seal(
    session: AsyncSession, transit: TransitBackend, account_id: int, name: str, kind: str, plaintext: bytes
) -> int:
    """Store internal secret bytes under the pepper (upsert by name); return the credential id."""
    return await CredentialStore(transit).seal(session, account_id, name, kind, plaintext)


async def unseal(session: AsyncSession, transit: TransitBackend, credential_id: int) -> bytes:
    return await CredentialStore(transit).unseal(session, credential_id)


async def discard(session: AsyncSession, credential_id: int) -> bool:
    """Delete an internal secret by id (e.g. approval arguments once executed); False if already gone."""
    row = await session.get(Credential, credential_id)
    if row is None:
        return False
    if not row.internal:
        raise Conflict(
            f"credential {credential_id} is a user credential; discard only removes internal ones",
            credential_id=credential_id,
        )
    await session.delete(row)
    await session.flush()
    return True
