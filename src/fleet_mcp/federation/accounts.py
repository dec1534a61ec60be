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


_MAX_DOMAIN = 253


def _is_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    )


def normalize_domain(domain: str) -> str:
    """A federation domain in canonical form (lower case, no trailing dot), or InvalidArgument: DNS labels of
    letters, digits and inner hyphens, at least two of them, no wildcard, not an IP address."""
    value = domain.strip().lower().rstrip(".") if isinstance(domain, str) else ""
    labels = value.split(".")
    if not value or len(value) > _MAX_DOMAIN or not all(_is_label(label) for label in labels) or labels[-1].isdigit():
        raise InvalidArgument(
            f"{domain!r} is not a valid DNS domain for federation",
            hint="use DNS labels of letters, digits and inner hyphens (1-63 each, at most 253 in all), "
            "e.g. acme.eu-west.fleet.example",
            federation_domain=domain,
        )
    if len(labels) < 2:
        raise InvalidArgument(
            f"federation domain {value!r} must have at least two labels",
            hint="name constraints on a top-level name would cover everything under it; use e.g. acme.fleet.example",
            federation_domain=domain,
        )
    return value


async def check_new_domain(session: AsyncSession, domain: str, *, account_id: int | None = None) -> str:
    """Validate a federation domain about to be given to an account (`account_id` when it already exists):
    refuse one equal to or nested with another account's, since DNS name constraints could not keep their
    nodes apart. Returns the canonical form to store."""
    value = normalize_domain(domain)
    rows = (await session.execute(select(Account.name, Account.federation_domain, Account.id))).all()
    for name, other, other_id in rows:
        if other and other_id != account_id and domains_nest(value, other):
            raise InvalidArgument(
                f"federation domain {value!r} overlaps account {name!r}'s domain {other!r}",
                hint="DNS name constraints cannot separate equal or nested domains; give each account its own, "
                "e.g. <account>.<region>.fleet.example",
                federation_domain=value,
                account=name,
            )
    return value
