"""Account lookups the federation services share (by id, by name, names of many, the federation domain)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.db.models import Account
from fleet_mcp.errors import InvalidArgument, NotFound


async def by_id(session: AsyncSession, account_id: int) -> Account:
    acct = await session.get(Account, account_id)
    if acct is None:
        raise NotFound(f"account {account_id} does not exist", account_id=account_id)
    return acct


async def by_name(session: AsyncSession, name: str) -> Account:
    acct = (await session.execute(select(Account).where(Account.name == name))).scalar_one_or_none()
    if acct is None:
        raise NotFound(
            f"account {name!r} does not exist", hint="check the account name with its operators", account=name
        )
    return acct


async def names(session: AsyncSession, ids: Iterable[int]) -> dict[int, str]:
    wanted = set(ids)
    if not wanted:
        return {}
    rows = (await session.execute(select(Account.id, Account.name).where(Account.id.in_(wanted)))).all()
    return {i: n for i, n in rows}


def federation_domain(acct: Account) -> str:
    if not acct.federation_domain:
        raise InvalidArgument(
            f"account {acct.name!r} has no federation domain",
            hint="set the account's federation_domain before federating",
            account=acct.name,
        )
    return acct.federation_domain


def domains_nest(a: str, b: str) -> bool:
    """Equal or nested domains cannot be told apart by DNS name constraints."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)
