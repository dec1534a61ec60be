"""The transit interface both backends implement: a versioned key that encrypts and rewraps in batches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from fleet_mcp.errors import ExternalError, InvalidArgument

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

#: Vault's per-item error when a ciphertext's version is below min_decryption_version.
TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"


class KeyInfo(BaseModel):
    """What `read_key` reports; mirrors Vault's transit key fields."""

    name: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    min_available_version: int
    #: Versions usable for decryption (Vault's `keys` map: those >= min_decryption_version).
    versions: list[int]


@dataclass(frozen=True, slots=True)
class TransitItemError:
    """One item of a batch that the backend refused; the message is the backend's (never key material)."""

    message: str

    @property
    def too_old(self) -> bool:
        return "disallowed by policy (too old)" in self.message


class TransitUnavailable(ExternalError):
    """The transit backend could not be reached or answered with a server error (after retries)."""

    code = "transit_unavailable"


class CiphertextRejected(InvalidArgument):
    """The backend refused one ciphertext (malformed, tampered, too old, too new)."""

    code = "ciphertext_rejected"


class TransitBackend(ABC):
    """A named, versioned AES-256-GCM key. Batch calls answer per item and never raise for one bad item."""

    kind: str = "abstract"
    key_name: str

    @abstractmethod
    async def ensure_key(self, *, session: AsyncSession | None = None) -> KeyInfo:
        """Create the key at version 1 if it does not exist. A keyring in the database creates it in
        `session` (the caller's unit of work); only a process's start-up may omit it."""

    @abstractmethod
    async def read_key(self, *, session: AsyncSession | None = None) -> KeyInfo:
        """The key's versions and policy. A keyring in the database reads through `session` when given
        (seeing the caller's uncommitted changes), else without opening any write transaction."""

    @abstractmethod
    async def rotate(self, *, session: AsyncSession | None = None) -> int:
        """Add a new key version — sent once, never retried: a rotation is not idempotent. Return the new
        latest version. A keyring in the database rotates inside `session` (required there)."""

    async def rotate_to(self, target: int, *, session: AsyncSession | None = None) -> tuple[int, bool]:
        """Make the key reach version `target` with at most one rotation; return (latest, rotated).

        Reads the key first: at or past `target` already (an earlier run rotated and died before recording
        it) it is adopted without rotating. Backends whose rotate can fail with an unknown outcome override
        this to read the key again and decide instead of retrying blindly."""
        key = await self.read_key(session=session)
        if key.latest_version >= target:
            return key.latest_version, False
        self._check_behind(key, target)
        return await self.rotate(session=session), True

    def _check_behind(self, key: KeyInfo, target: int) -> None:
        if key.latest_version != target - 1:
            raise ExternalError(
                f"transit key {self.key_name!r} is at v{key.latest_version}, below the job's starting version "
                f"v{target - 1}: it was replaced or restored from an older state",
                hint="check the transit backend; the rotation job will not rotate a key it does not recognise",
                key=self.key_name,
            )

    @abstractmethod
    async def encrypt_batch(self, plaintexts: Sequence[bytes]) -> list[str]:
        """Encrypt under the latest version."""

    @abstractmethod
    async def decrypt_batch(self, ciphertexts: Sequence[str]) -> list[bytes | TransitItemError]: ...

    @abstractmethod
    async def rewrap_batch(self, ciphertexts: Sequence[str]) -> list[str | TransitItemError]:
        """Re-encrypt under the latest version without revealing the plaintext to the caller.

        Not idempotent byte-wise: a ciphertext already at the latest version comes back as new bytes at
        the same version. Decide "done" by version number."""

    @abstractmethod
    async def set_min_versions(
        self,
        *,
        min_decryption: int | None = None,
        min_encryption: int | None = None,
        session: AsyncSession | None = None,
    ) -> KeyInfo:
        """Change the key's policy. A backend whose keyring lives in the database applies the change inside
        `session` when one is given (the caller's unit of work); an external Vault ignores it."""

    @abstractmethod
    async def trim(self, min_available_version: int, *, session: AsyncSession | None = None) -> KeyInfo:
        """Delete key versions below `min_available_version` for good (old backups become unreadable)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""

    # -- single-item conveniences ------------------------------------------------------------------
    async def encrypt(self, plaintext: bytes) -> str:
        return (await self.encrypt_batch([plaintext]))[0]

    async def decrypt(self, ciphertext: str) -> bytes:
        result = (await self.decrypt_batch([ciphertext]))[0]
        if isinstance(result, TransitItemError):
            raise CiphertextRejected(f"transit refused to decrypt: {result.message}", key=self.key_name)
        return result

    async def rewrap(self, ciphertext: str) -> str:
        result = (await self.rewrap_batch([ciphertext]))[0]
        if isinstance(result, TransitItemError):
            raise CiphertextRejected(f"transit refused to rewrap: {result.message}", key=self.key_name)
        return result
