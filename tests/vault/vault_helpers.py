"""Helpers for vault tests: seed many credentials fast, read rows back, check every secret."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Account
from fleet_mcp.vault.finalize import finalize, trim
from fleet_mcp.vault.models import Credential
from fleet_mcp.vault.schemas import FinalizeResult, TrimResult
from fleet_mcp.vault.transit import KeyInfo, TransitBackend, TransitItemError, ciphertext_version


def secret_for(account_id: int, i: int, generation: int = 0) -> bytes:
    """A deterministic, distinct secret per (account, index, generation)."""
    return hashlib.sha256(f"{account_id}:{i}:{generation}".encode()).hexdigest().encode()


async def seed(
    sm: async_sessionmaker[AsyncSession], transit: TransitBackend, account_id: int, n: int, *, prefix: str = "cred"
) -> dict[str, bytes]:
    """Insert n credentials for an account (encrypted in batches); return name → plaintext."""
    names = [f"{prefix}-{i:06d}" for i in range(n)]
    plaintexts = [secret_for(account_id, i) for i in range(n)]
    cts = await transit.encrypt_batch(plaintexts) if n else []
    now = utcnow()
    rows = [
        dict(
            account_id=account_id,
            name=name,
            kind="generic",
            internal=False,
            ciphertext=ct,
            key_version=ciphertext_version(ct),
            meta={},
            created_at=now,
            updated_at=now,
        )
        for name, ct in zip(names, cts, strict=True)
    ]
    async with sm() as s, s.begin():
        for i in range(0, len(rows), 2000):
            await s.execute(insert(Credential), rows[i : i + 2000])
    return dict(zip(names, plaintexts, strict=True))


async def rows_of(sm: async_sessionmaker[AsyncSession], account_id: int | None = None) -> list[Credential]:
    async with sm() as s:
        stmt = select(Credential).order_by(Credential.id)
        if account_id is not None:
            stmt = stmt.where(Credential.account_id == account_id)
        return list((await s.execute(stmt)).scalars())


async def plaintexts_of(
    sm: async_sessionmaker[AsyncSession], transit: TransitBackend, account_id: int
) -> dict[str, bytes | TransitItemError]:
    rows = await rows_of(sm, account_id)
    out: dict[str, bytes | TransitItemError] = {}
    for i in range(0, len(rows), 1000):
        chunk = rows[i : i + 1000]
        for r, pt in zip(chunk, await transit.decrypt_batch([r.ciphertext for r in chunk]), strict=True):
            out[r.name] = pt
    return out


async def account(sm: async_sessionmaker[AsyncSession], account_id: int) -> Account:
    async with sm() as s:
        acct = await s.get(Account, account_id)
        assert acct is not None
        return acct


async def make_account(sm: async_sessionmaker[AsyncSession], name: str) -> int:
    async with sm() as s, s.begin():
        acct = Account(name=name, federation_domain=f"{name}.fleet.test")
        s.add(acct)
        await s.flush()
        return acct.id


async def finalize_now(sm: async_sessionmaker[AsyncSession], transit: TransitBackend, **kw: int) -> FinalizeResult:
    async with sm() as s, s.begin():
        return await finalize(s, transit, **kw)


async def trim_now(sm: async_sessionmaker[AsyncSession], transit: TransitBackend, **kw: int | None) -> TrimResult:
    async with sm() as s, s.begin():
        return await trim(s, transit, **kw)


@asynccontextmanager
async def key_unit(transit: TransitBackend) -> AsyncIterator[AsyncSession | None]:
    """A unit of work for a key change: the local keyring changes only inside one; Vault ignores it."""
    sm = getattr(transit, "_sm", None)
    if sm is None:
        yield None
        return
    async with sm() as s, s.begin():
        yield s


async def rotate_key(transit: TransitBackend) -> int:
    async with key_unit(transit) as s:
        return await transit.rotate(session=s)


async def set_min(transit: TransitBackend, **kw: int) -> KeyInfo:
    async with key_unit(transit) as s:
        return await transit.set_min_versions(session=s, **kw)


async def trim_key(transit: TransitBackend, n: int) -> KeyInfo:
    async with key_unit(transit) as s:
        return await transit.trim(n, session=s)
