"""Console sign-in: opaque session ids and one-time login links, stored server-side as SHA-256 digests.

A session names the fleet token it acts as (by digest) and is re-checked against the token on every
request, so revoking the token or signing out ends it at once."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace

from sqlalchemy import delete, select

from fleet_mcp import principals
from fleet_mcp.app import App
from fleet_mcp.callers import note_use
from fleet_mcp.console.models import ConsoleSession
from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import Unauthenticated
from fleet_mcp.principals import Caller

SESSION_LIFETIME = dt.timedelta(hours=8)
LINK_LIFETIME = dt.timedelta(minutes=10)
COOKIE = "fleet_console"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token(session_secret: str) -> str:
    """The CSRF token of a session: derived from its secret, so nothing more is stored and a page from
    another site (which never sees the cookie) cannot know it."""
    return hmac.new(session_secret.encode(), b"fleet-console-csrf", hashlib.sha256).hexdigest()


def csrf_ok(session_secret: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(session_secret), presented or "")


@dataclass(frozen=True)
class SignedIn:
    caller: Caller
    secret: str
    expires_at: dt.datetime

    @property
    def csrf(self) -> str:
        return csrf_token(self.secret)


class SessionStore:
    """The console's only table access: its own sessions and login links."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def _insert(self, kind: str, token_digest: str, lifetime: dt.timedelta) -> str:
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        assert self.app.sessionmaker is not None
        async with self.app.sessionmaker() as session, session.begin():
            await session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
            session.add(ConsoleSession(id=digest(secret), kind=kind, token_digest=token_digest, created_at=now,
                                       expires_at=now + lifetime))
        return secret

    async def sign_in_with_token(self, token: str) -> tuple[str, Caller]:
        """Check a pasted bearer token as the HTTP transport does; return a new session secret."""
        caller = await self._check(principals.token_digest(token))
        return await self._insert("session", principals.token_digest(token), SESSION_LIFETIME), caller

    async def create_link(self, token_digest: str) -> str:
        """A one-time login link code for the token with this digest (printed by `fleet-mcp console`)."""
        return await self._insert("link", token_digest, LINK_LIFETIME)

    async def redeem_link(self, code: str) -> tuple[str, Caller]:
        """Use a login link once: it is deleted whether or not the token still works."""
        assert self.app.sessionmaker is not None
        async with self.app.sessionmaker() as session, session.begin():
            row = (await session.execute(
                delete(ConsoleSession).where(ConsoleSession.id == digest(code), ConsoleSession.kind == "link",
                                             ConsoleSession.expires_at > utcnow())
                .returning(ConsoleSession.token_digest))).first()
        if row is None:
            raise Unauthenticated("this login link is unknown, used or expired",
                                  hint="run `fleet-mcp console` again for a new link, or paste a token")
        caller = await self._check(row[0])
        return await self._insert("session", row[0], SESSION_LIFETIME), caller

    async def _check(self, token_digest: str) -> Caller:
        assert self.app.read_sessionmaker is not None
        async with self.app.read_sessionmaker() as session:
            caller = await principals.authenticate_digest(session, token_digest)
        note_use(self.app, token_digest)
        return replace(caller, via="console")

    async def resolve(self, secret: str | None) -> SignedIn | None:
        """The signed-in principal of a cookie, or None (unknown, expired, or its token revoked)."""
        if not secret or len(secret) > 100:
            return None
        assert self.app.read_sessionmaker is not None
        async with self.app.read_sessionmaker() as session:
            row = (await session.execute(
                select(ConsoleSession.token_digest, ConsoleSession.expires_at)
                .where(ConsoleSession.id == digest(secret), ConsoleSession.kind == "session"))).first()
        if row is None or row[1] <= utcnow():
            return None
        try:
            caller = await self._check(row[0])
        except Unauthenticated:
            await self.sign_out(secret)
            return None
        return SignedIn(caller, secret, row[1])

    async def sign_out(self, secret: str) -> None:
        assert self.app.sessionmaker is not None
        async with self.app.sessionmaker() as session, session.begin():
            await session.execute(delete(ConsoleSession).where(ConsoleSession.id == digest(secret)))
