"""(issuer, subject, account) -> the principal that acts, created on first use in one transaction with its
audit row. Every request reads the binding (a disabled principal stops at once, like a revoked token)."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleet_mcp import audit, principals
from fleet_mcp.db.models import Account, Principal
from fleet_mcp.errors import NotFound
from fleet_mcp.oauth.mapping import MappedIdentity
from fleet_mcp.oauth.models import OAuthIdentity
from fleet_mcp.oauth.types import IdentityRefused, VerifiedToken
from fleet_mcp.principals import Caller

log = logging.getLogger(__name__)

_BOUND = (
    select(Principal.name, Principal.disabled, Account.id, Account.name)
    .join(OAuthIdentity, OAuthIdentity.principal_id == Principal.id)
    .join(Account, Account.id == OAuthIdentity.account_id)
)


class DisabledPrincipal(IdentityRefused):
    code = "principal_disabled"


async def _bound(session: AsyncSession, token: VerifiedToken, account: str) -> tuple[str, bool, int, str] | None:
    row = (await session.execute(_BOUND.where(OAuthIdentity.issuer == token.issuer,
                                              OAuthIdentity.subject == token.subject,
                                              Account.name == account))).first()
    return None if row is None else (row[0], row[1], row[2], row[3])


async def _bind(session: AsyncSession, token: VerifiedToken, ident: MappedIdentity) -> None:
    """Create the principal and its binding, audited in the same transaction; refuse a taken name."""
    try:
        acct = await principals.get_account(session, ident.account)
    except NotFound as exc:
        raise IdentityRefused(f"the token names account {ident.account!r}, which does not exist",
                              hint="create it with `fleet-mcp account create NAME` or fix the claim mapping") from exc
    taken = (await session.execute(select(Principal.id).where(Principal.account_id == acct.id,
                                                              Principal.name == ident.name))).first()
    if taken is not None:
        if await _bound(session, token, ident.account) is not None:
            return  # a concurrent first request of this same subject committed the binding a moment ago
        raise IdentityRefused(
            f"principal {ident.account}/{ident.name} already exists and belongs to someone else",
            hint="names are never taken over; map this subject to another name (FLEET_MCP_OAUTH_NAME_CLAIMS)")
    p = Principal(account_id=acct.id, name=ident.name, roles=[])
    session.add(p)
    await session.flush()
    session.add(OAuthIdentity(issuer=token.issuer, subject=token.subject, account_id=acct.id, principal_id=p.id))
    await session.flush()
    await audit.append(
        session, principal=f"{acct.name}/{ident.name}", account=acct.name, tool="oauth.principal_created",
        arguments={"issuer": token.issuer, "subject": token.subject, "client_id": token.client_id},
        decision="first_use", outcome="ok", detail={"roles_from_token": list(ident.roles)})


async def resolve_caller(
    read: async_sessionmaker[AsyncSession], write: async_sessionmaker[AsyncSession], token: VerifiedToken,
    ident: MappedIdentity,
) -> Caller:
    """The Caller for a verified, mapped token; its roles are the token's, never the stored ones."""
    async with read() as session:
        row = await _bound(session, token, ident.account)
    if row is None:
        try:
            async with write() as session, session.begin():
                if await _bound(session, token, ident.account) is None:
                    await _bind(session, token, ident)
        except IntegrityError:  # a concurrent first request bound it (or took the name): read what stands
            log.info("concurrent first use of an OAuth identity; re-reading the binding")
        async with read() as session:
            row = await _bound(session, token, ident.account)
        if row is None:
            raise IdentityRefused(f"principal {ident.account}/{ident.name} could not be bound to this identity")
    name, disabled, account_id, account_name = row
    if disabled:
        raise DisabledPrincipal(f"principal {account_name}/{name} is disabled", hint="ask an admin")
    return Caller(name=name, account_id=account_id, account_name=account_name, roles=ident.roles, via="oauth",
                  token_label=None, extra={"issuer": token.issuer, "client_id": token.client_id})
