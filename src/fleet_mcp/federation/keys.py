"""Where CA private keys go: a sealer encrypts them under the transit key and hands back a reference."""

from __future__ import annotations

import secrets
from typing import Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncSession

CA_KEY_KIND = "ca_private_key"


@runtime_checkable
class KeySealer(Protocol):
    """Seals private-key bytes for an account inside the caller's unit of work; never logs them."""

    async def seal(self, session: AsyncSession, account_id: int, plaintext: bytes, *, label: str) -> str:
        """Store `plaintext` encrypted and return an opaque reference (no key material)."""
        ...

    async def unseal(self, session: AsyncSession, ref: str) -> bytes:
        """Return the plaintext behind a reference from `seal`."""
        ...


class MemoryKeySealer:
    """Test sealer: keeps plaintexts in process memory under random references (nothing reaches the DB)."""

    def __init__(self) -> None:
        self._store: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"MemoryKeySealer({len(self._store)} keys)"

    async def seal(self, session: AsyncSession, account_id: int, plaintext: bytes, *, label: str) -> str:
        ref = f"mem:{account_id}:{secrets.token_hex(8)}"
        self._store[ref] = bytes(plaintext)
        return ref

    async def unseal(self, session: AsyncSession, ref: str) -> bytes:
        try:
            return self._store[ref]
        except KeyError:
            raise LookupError(f"no sealed key under reference {ref!r}") from None
