"""Accounts, principals and API tokens (stored as SHA-256 digests, shown once)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Account, ApiToken, Principal
from fleet_mcp.errors import Conflict, InvalidArgument, NotFound, Unauthenticated

TOKEN_PREFIX = "fmcp"  # noqa: S105 - a public prefix, not a secret
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class Caller:
    """Who is calling: resolved once per call by the gate."""

    name: str
    account_id: int
    account_name: str
    roles: tuple[str, ...]
    via: str = "stdio"
    token_label: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.account_name}/{self.name}"


def check_name(kind: str, name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid {kind} name {name!r}",
            hint="use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


async def get_account(session: AsyncSession, name: str) -> Account:
    acct = (await session.execute(select(Account).where(Account.name == name))).scalar_one_or_none()
    if acct is None:
        raise NotFound(f"account {name!r} does not exist", hint="create it with `fleet-mcp account create NAME`",
                       account=name)
    return acct


async def ensure_account(session: AsyncSession, name: str, federation_domain: str | None = None) -> Account:
    acct = (await session.execute(select(Account).where(Account.name == name))).scalar_one_or_none()
    if acct is None:
        check_name("account", name)
        acct = Account(name=name, federation_domain=federation_domain or f"{name}.fleet.internal")
        session.add(acct)
        await session.flush()
    return acct


async def create_account(session: AsyncSession, name: str, federation_domain: str | None = None) -> Account:
    check_name("account", name)
    if (await session.execute(select(Account.id).where(Account.name == name))).first():
        raise Conflict(f"account {name!r} already exists", account=name)
    return await ensure_account(session, name, federation_domain)


async def ensure_principal(session: AsyncSession, account: Account, name: str, roles: list[str]) -> Principal:
    p = (
        await session.execute(select(Principal).where(Principal.account_id == account.id, Principal.name == name))
    ).scalar_one_or_none()
    if p is None:
        p = Principal(account_id=account.id, name=name, roles=list(roles))
        session.add(p)
    else:
        p.roles = sorted(set(p.roles) | set(roles))
    await session.flush()
    return p


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(
    session: AsyncSession, *, account: str, label: str, roles: list[str], principal: str | None = None,
    known_roles: Iterable[str] | None = None,
) -> str:
    """Create a bearer token for a principal (created if needed); return the token (shown once).
    `known_roles` defaults to the built-in roles; pass the policy's role table to allow its roles."""
    from fleet_mcp.policy.roles import BUILTIN_ROLES

    check_name("token label", label)
    known = set(known_roles) if known_roles is not None else set(BUILTIN_ROLES)
    unknown = [r for r in roles if r not in known]
    if unknown or not roles:
        raise InvalidArgument(f"unknown role(s): {', '.join(unknown) or '(none given)'}",
                              hint=f"roles are {', '.join(sorted(known))}")
    if (await session.execute(select(ApiToken.id).where(ApiToken.label == label))).first():
        raise Conflict(f"a token labelled {label!r} already exists", hint="pick another label or revoke it first")
    acct = await get_account(session, account)
    p = await ensure_principal(session, acct, principal or label, roles)
    public = secrets.token_hex(4)
    token = f"{TOKEN_PREFIX}_{public}_{secrets.token_urlsafe(32)}"
    session.add(ApiToken(principal_id=p.id, label=label, token_prefix=f"{TOKEN_PREFIX}_{public}",
                         token_digest=token_digest(token)))
    await session.flush()
    return token


class RevokedToken(Unauthenticated):
    code = "token_revoked"


# Built once (every HTTP request runs it); columns only, no ORM objects to build.
_BY_TOKEN = (
    select(ApiToken.token_digest, ApiToken.revoked_at, ApiToken.label, Principal.name, Principal.disabled,
           Principal.roles, Account.id, Account.name)
    .join(Principal, ApiToken.principal_id == Principal.id)
    .join(Account, Principal.account_id == Account.id)
    .where(ApiToken.token_digest == bindparam("digest"))
)


async def authenticate(session: AsyncSession, token: str) -> Caller:
    """Resolve a bearer token; raises Unauthenticated (unknown) or RevokedToken (revoked/disabled)."""
    digest = token_digest(token)
    row: Any = (await session.execute(_BY_TOKEN, {"digest": digest})).first()
    if row is None or not hmac.compare_digest(row[0], digest):
        raise Unauthenticated("unknown bearer token", hint="create one with `fleet-mcp token create`")
    _, revoked_at, label, name, disabled, roles, account_id, account_name = row
    if revoked_at is not None or disabled:
        raise RevokedToken("this bearer token was revoked", hint="ask an admin for a new token")
    return Caller(name=name, account_id=account_id, account_name=account_name, roles=tuple(roles), via="http",
                  token_label=label)


@dataclass(frozen=True)
class TokenInfo:
    label: str
    prefix: str
    account: str
    principal: str
    roles: list[str]
    created_at: dt.datetime
    revoked_at: dt.datetime | None


async def list_tokens(session: AsyncSession) -> list[TokenInfo]:
    rows = (
        await session.execute(
            select(ApiToken, Principal, Account)
            .join(Principal, ApiToken.principal_id == Principal.id)
            .join(Account, Principal.account_id == Account.id)
            .order_by(ApiToken.id)
        )
    ).all()
    return [TokenInfo(t.label, t.token_prefix, a.name, p.name, list(p.roles), t.created_at, t.revoked_at)
            for t, p, a in rows]


async def revoke_token(session: AsyncSession, label: str) -> None:
    tok = (await session.execute(select(ApiToken).where(ApiToken.label == label))).scalar_one_or_none()
    if tok is None:
        raise NotFound(f"no token labelled {label!r}", hint="list them with `fleet-mcp token list`")
    if tok.revoked_at is None:
        tok.revoked_at = utcnow()
    await session.flush()
