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

from sqlalchemy import bindparam, select, update
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
    if not _NAME_RE.fullmatch(name):
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
    from fleet_mcp.federation.accounts import check_new_domain  # validation of federation domains lives there

    return await ensure_account(session, name, await check_new_domain(session, federation_domain or f"{name}.fleet.internal"))


async def ensure_principal(session: AsyncSession, account: Account, name: str, roles: list[str]) -> Principal:
    """The principal NAME of ACCOUNT, created with ROLES when it does not exist yet. An existing principal's
    roles are never changed here (only `set_principal_roles` changes them, as an audited admin action)."""
    p = await find_principal(session, account, name)
    if p is None:
        p = Principal(account_id=account.id, name=name, roles=_dedupe(roles))
        session.add(p)
        await session.flush()
    return p


async def find_principal(session: AsyncSession, account: Account, name: str) -> Principal | None:
    return (
        await session.execute(select(Principal).where(Principal.account_id == account.id, Principal.name == name))
    ).scalar_one_or_none()


def _dedupe(roles: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(roles))


def check_roles(roles: list[str], known_roles: Iterable[str] | None = None) -> list[str]:
    """Refuse an empty list or a role the policy does not define; returns them without duplicates."""
    from fleet_mcp.policy.roles import BUILTIN_ROLES

    known = set(known_roles) if known_roles is not None else set(BUILTIN_ROLES)
    unknown = [r for r in roles if r not in known]
    if unknown or not roles:
        raise InvalidArgument(f"unknown role(s): {', '.join(unknown) or '(none given)'}",
                              hint=f"roles are {', '.join(sorted(known))}")
    return _dedupe(roles)


async def account_names(session: AsyncSession) -> list[str]:
    return list((await session.execute(select(Account.name).order_by(Account.name))).scalars())


async def get_existing_account(session: AsyncSession, name: str) -> Account:
    """Like `get_account`, but the refusal names the accounts that do exist."""
    acct = (await session.execute(select(Account).where(Account.name == name))).scalar_one_or_none()
    if acct is None:
        known = await account_names(session)
        raise NotFound(
            f"account {name!r} does not exist (known accounts: {', '.join(known) or 'none'})",
            hint=f"check the spelling, or create it first with `fleet-mcp account create {name}`", account=name)
    return acct


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Actor:
    """Who makes an administrative change (the audit row's principal) and through what ("cli")."""

    qualified: str
    account: str
    via: str = "cli"
    os_user: str | None = None


async def _audit_admin(session: AsyncSession, actor: Actor, action: str, account: str, arguments: dict[str, Any],
                       detail: dict[str, Any] | None = None) -> None:
    """The audit row of an administrative change, in the change's own transaction."""
    from fleet_mcp import audit

    extra = {"via": actor.via, **({"os_user": actor.os_user} if actor.os_user else {}), **(detail or {})}
    await audit.append(session, principal=actor.qualified, account=account, tool=f"admin.{action}",
                       arguments=arguments, decision="admin", outcome="ok", detail=extra)


async def create_account_audited(session: AsyncSession, name: str, federation_domain: str | None, *,
                                 actor: Actor) -> Account:
    acct = await create_account(session, name, federation_domain)
    await _audit_admin(session, actor, "account_create", acct.name,
                       {"name": acct.name, "federation_domain": acct.federation_domain})
    return acct


async def create_token(
    session: AsyncSession, *, account: str, label: str, roles: list[str], principal: str | None = None,
    known_roles: Iterable[str] | None = None, actor: Actor,
) -> str:
    """Create a bearer token carrying exactly ROLES for a principal of an existing account; return the token
    (shown once). A new principal is created with ROLES; an existing one's roles are raised to include
    ROLES (a token never carries a role its principal lacks). Audited in the same transaction.
    `known_roles` defaults to the built-in roles; pass the policy's role table to allow its roles."""
    check_name("token label", label)
    roles = check_roles(roles, known_roles)
    acct = await get_existing_account(session, account)
    name = principal or label
    if (await session.execute(select(ApiToken.id).where(ApiToken.label == label))).first():
        raise Conflict(f"a token labelled {label!r} already exists", hint="pick another label or revoke it first")
    p = await find_principal(session, acct, name)
    detail: dict[str, Any] = {}
    if p is None:
        check_name("principal", name)
        p = await ensure_principal(session, acct, name, roles)
        detail["principal_created"] = True
    elif missing := [r for r in roles if r not in p.roles]:
        before = list(p.roles)
        p.roles = [*before, *missing]
        detail["principal_roles"] = {"before": before, "after": list(p.roles)}
    public = secrets.token_hex(4)
    token = f"{TOKEN_PREFIX}_{public}_{secrets.token_urlsafe(32)}"
    session.add(ApiToken(principal_id=p.id, label=label, token_prefix=f"{TOKEN_PREFIX}_{public}",
                         token_digest=token_digest(token), roles=roles))
    await session.flush()
    await _audit_admin(session, actor, "token_create", acct.name,
                       {"label": label, "principal": f"{acct.name}/{name}", "roles": roles,
                        "token_prefix": f"{TOKEN_PREFIX}_{public}"}, detail)
    return token


async def set_principal_roles(session: AsyncSession, qualified: str, roles: list[str], *,
                              known_roles: Iterable[str] | None = None, actor: Actor) -> tuple[list[str], list[str]]:
    """Set the roles of ACCOUNT/NAME (raise or lower); every token of it is limited to them at its next
    request. Returns (before, after). Audited in the same transaction."""
    account, sep, name = qualified.partition("/")
    if not sep or not account or not name:
        raise InvalidArgument(f"{qualified!r} is not ACCOUNT/NAME", hint="e.g. acme/alice")
    roles = check_roles(roles, known_roles)
    acct = await get_existing_account(session, account)
    p = await find_principal(session, acct, name)
    if p is None:
        raise NotFound(f"principal {qualified!r} does not exist",
                       hint="create it with `fleet-mcp token create --account ACCOUNT --principal NAME ...`")
    before = list(p.roles)
    p.roles = roles
    await session.flush()
    await _audit_admin(session, actor, "principal_set_roles", acct.name,
                       {"principal": qualified, "roles": roles}, {"before": before, "after": roles})
    return before, roles


class RevokedToken(Unauthenticated):
    code = "token_revoked"


# Built once (every HTTP request runs it); columns only, no ORM objects to build.
_BY_TOKEN = (
    select(ApiToken.token_digest, ApiToken.revoked_at, ApiToken.label, Principal.name, Principal.disabled,
           ApiToken.roles, Principal.roles, Account.id, Account.name)
    .join(Principal, ApiToken.principal_id == Principal.id)
    .join(Account, Principal.account_id == Account.id)
    .where(ApiToken.token_digest == bindparam("digest"))
)


async def authenticate(session: AsyncSession, token: str) -> Caller:
    """Resolve a bearer token; raises Unauthenticated (unknown) or RevokedToken (revoked/disabled)."""
    return await authenticate_digest(session, token_digest(token))


async def authenticate_digest(session: AsyncSession, digest: str) -> Caller:
    """Resolve a token by its digest (a console session keeps only the digest); same errors as authenticate."""
    row: Any = (await session.execute(_BY_TOKEN, {"digest": digest})).first()
    if row is None or not hmac.compare_digest(row[0], digest):
        raise Unauthenticated("unknown bearer token", hint="create one with `fleet-mcp token create`")
    _, revoked_at, label, name, disabled, token_roles, principal_roles, account_id, account_name = row
    if revoked_at is not None or disabled:
        raise RevokedToken("this bearer token was revoked", hint="ask an admin for a new token")
    held = set(principal_roles or ())
    roles = tuple(r for r in (token_roles or ()) if r in held)
    return Caller(name=name, account_id=account_id, account_name=account_name, roles=roles, via="http",
                  token_label=label)


#: A token's last_used_at is written at most this often (seconds): a request never waits for it, and a busy
#: token costs one small write per interval, not one per request.
LAST_USED_RESOLUTION = 600.0


async def mark_used(session: AsyncSession, digest: str, now: dt.datetime | None = None) -> None:
    """Record that the token was used, unless a use within the resolution is already recorded (another
    replica may have written it)."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=LAST_USED_RESOLUTION)
    await session.execute(
        update(ApiToken)
        .where(ApiToken.token_digest == digest, (ApiToken.last_used_at.is_(None)) | (ApiToken.last_used_at < cutoff))
        .values(last_used_at=now)
    )


@dataclass(frozen=True)
class TokenInfo:
    label: str
    prefix: str
    account: str
    principal: str
    roles: list[str]
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None = None


async def list_tokens(session: AsyncSession) -> list[TokenInfo]:
    rows = (
        await session.execute(
            select(ApiToken, Principal, Account)
            .join(Principal, ApiToken.principal_id == Principal.id)
            .join(Account, Principal.account_id == Account.id)
            .order_by(ApiToken.id)
        )
    ).all()
    return [TokenInfo(t.label, t.token_prefix, a.name, p.name, [r for r in t.roles if r in p.roles], t.created_at,
                      t.revoked_at, t.last_used_at) for t, p, a in rows]


async def revoke_token(session: AsyncSession, label: str, *, actor: Actor) -> None:
    row = (await session.execute(
        select(ApiToken, Principal.name, Account.name)
        .join(Principal, ApiToken.principal_id == Principal.id)
        .join(Account, Principal.account_id == Account.id)
        .where(ApiToken.label == label))).one_or_none()
    if row is None:
        raise NotFound(f"no token labelled {label!r}", hint="list them with `fleet-mcp token list`")
    tok, principal_name, account_name = row
    if tok.revoked_at is not None:
        return  # nothing changes, nothing to record
    tok.revoked_at = utcnow()
    await session.flush()
    await _audit_admin(session, actor, "token_revoke", account_name,
                       {"label": label, "principal": f"{account_name}/{principal_name}"})
