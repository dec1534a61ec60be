"""Who is calling: the caller of each request, as the transports established it. HTTP authenticates every
request in its middleware and records the caller here by token digest; tools and resources read the caller
of their own request from here; stdio has the one configured local principal."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fleet_mcp import principals
from fleet_mcp.errors import Unauthenticated
from fleet_mcp.principals import Caller

if TYPE_CHECKING:
    from fleet_mcp.app import App

# Authenticated callers by token digest, refreshed by the middleware on every request (so a revoked
# token stops at the next request). Bounded, least recently authenticated first out: OAuth access tokens
# are short-lived and many.
_CALLERS: dict[str, Caller] = {}
_MAX_CALLERS = 10_000
#: When this process last recorded each token's use (monotonic seconds), to write it at most once per
#: `principals.LAST_USED_RESOLUTION`.
_MARKED: dict[str, float] = {}
log = logging.getLogger(__name__)


def note_use(app: App, digest: str) -> None:
    """Record, in the background and at most once per resolution, that a static token was used (its
    `last_used_at`, shown by `fleet-mcp token list`). Never delays or fails the request."""
    now = time.monotonic()
    last = _MARKED.get(digest)
    if last is not None and now - last < principals.LAST_USED_RESOLUTION:
        return
    _MARKED[digest] = now
    while len(_MARKED) > _MAX_CALLERS:
        _MARKED.pop(next(iter(_MARKED)))

    async def mark() -> None:
        try:
            async with app.unit_of_work() as uow:
                await principals.mark_used(uow.session, digest)
        except Exception:  # best effort: a busy or unreachable database loses one timestamp, nothing else
            _MARKED.pop(digest, None)
            log.warning("could not record a token's last use", exc_info=True)

    app.spawn(mark(), name="token-last-used")


def remember(digest: str, caller: Caller) -> None:
    _CALLERS.pop(digest, None)
    _CALLERS[digest] = caller
    while len(_CALLERS) > _MAX_CALLERS:
        _CALLERS.pop(next(iter(_CALLERS)))


def forget(digest: str) -> None:
    """A revoked token's caller is dropped at once."""
    _CALLERS.pop(digest, None)


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization") or headers.get("Authorization")
    if not value or not value.lower().startswith("bearer "):
        return None
    return value[7:].strip() or None


def caller_from_headers(headers: Mapping[str, str]) -> Caller:
    token = bearer(headers)
    if token is None:
        raise Unauthenticated("no bearer token on this request")
    caller = _CALLERS.get(principals.token_digest(token))
    if caller is None:
        raise Unauthenticated("bearer token not authenticated for this request")
    return caller


def caller_for(app: App, headers: Mapping[str, str] | None) -> Caller:
    """The caller of one MCP request: by its HTTP headers, or the stdio principal when there are none."""
    if headers is None:
        if app.stdio_caller is None:
            raise Unauthenticated("the server has no stdio principal configured")
        return app.stdio_caller
    return caller_from_headers(headers)


def state_principal(headers: Mapping[str, str] | None) -> str | None:
    """What sealed in-client approval state is bound to over HTTP: the authenticated principal (so an OAuth
    token refreshed between the two rounds still answers), else the token's digest; stdio binds nothing."""
    if not headers:
        return None
    try:
        caller: Any = caller_from_headers(headers)
    except Unauthenticated:
        token = bearer(headers)
        return principals.token_digest(token) if token else "anonymous"
    return f"{caller.via}:{caller.qualified}"
