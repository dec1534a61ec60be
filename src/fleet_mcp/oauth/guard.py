"""The OAuth half of the HTTP bearer check (`fleet_mcp.http.BearerAuth` hands it every request whose token is
not a static fleet token): 401 / 403 / 503 with RFC 6750 + RFC 9728 challenges, or the request passed on with its
caller remembered and the SDK's session owner set."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_mcp.drain import respond_database_unreachable
from fleet_mcp.errors import ExternalError, database_unreachable
from fleet_mcp.oauth.config import OAuthConfig
from fleet_mcp.oauth.identities import resolve_caller
from fleet_mcp.oauth.mapping import map_identity
from fleet_mcp.oauth.resource import challenge, missing_scopes
from fleet_mcp.oauth.types import IdentityRefused, TokenRefused
from fleet_mcp.oauth.verifier import FleetTokenVerifier, sdk_access_token
from fleet_mcp.principals import Caller, token_digest

if TYPE_CHECKING:
    from fleet_mcp.app import App

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024  # the SDK's own limit; a larger body is refused downstream


async def refuse(send: Send, status: int, body: dict[str, str], www_authenticate: str | None) -> None:
    """A JSON refusal with its challenge (also used by the static-token path in `fleet_mcp.http`)."""
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if www_authenticate:
        headers.append((b"www-authenticate", www_authenticate.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the request body (up to MAX_BODY + 1 bytes) and a `receive` that replays it."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more and size <= MAX_BODY:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return body, replay


class OAuthGuard:
    """The OAuth half of fleet-mcp's bearer check in front of /mcp: verify the token, check the scopes the
    request needs, map the claims, resolve the principal; then hand the request on with the caller known."""

    def __init__(self, fleet: App, config: OAuthConfig, remember: Callable[[str, Caller], None]) -> None:
        from fleet_mcp.registry import load_tools

        self.fleet = fleet
        self.config = config
        self.remember = remember
        self.verifier = FleetTokenVerifier(config)
        self.read_only = {name: spec.read_only for name, spec in load_tools().items()}

    async def close(self) -> None:
        await self.verifier.close()

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, token: str | None) -> None:
        cfg = self.config
        if token is None:
            # All the scopes this server uses, not only the read scope: clients register (RFC 7591) with the scope
            # of their first challenge, and many authorization servers refuse a later step-up beyond it.
            await refuse(send, 401, {"error": "unauthorized", "error_description": "a bearer token is required"},
                          challenge(cfg, scope=" ".join(cfg.scopes_supported) or None))
            return
        try:
            verified = await self.verifier.verify(token)
        except TokenRefused as exc:
            await refuse(send, 401, {"error": "invalid_token", "error_description": exc.message},
                          challenge(cfg, error="invalid_token", description=exc.message))
            return
        except ExternalError as exc:
            log.warning("OAuth token check unavailable: %s", exc.message)
            await refuse(send, 503, {"error": "temporarily_unavailable",
                                      "error_description": "the identity provider's keys could not be fetched"}, None)
            return
        body: bytes | None = None
        if scope.get("method") == "POST":
            body, receive = await _buffer_body(receive)
        missing = missing_scopes(cfg, verified.scopes, body, self.read_only)
        if missing:
            needed = " ".join(s for s in cfg.scopes_supported if s in verified.scopes or s in missing)
            description = f"this request needs scope {' '.join(missing)}"
            await refuse(send, 403, {"error": "insufficient_scope", "error_description": description},
                          challenge(cfg, error="insufficient_scope", description=description, scope=needed))
            return
        assert self.fleet.read_sessionmaker is not None and self.fleet.sessionmaker is not None
        try:
            ident = map_identity(verified, cfg, self.fleet.policy.current.role_table())
            caller = await resolve_caller(self.fleet.read_sessionmaker, self.fleet.sessionmaker, verified, ident)
        except IdentityRefused as exc:
            await refuse(send, 403, {"error": "access_denied", "error_description": exc.message},
                          challenge(cfg, error="access_denied", description=exc.message))
            return
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            await respond_database_unreachable(send)
            return
        self.remember(token_digest(token), caller)
        # The SDK binds a stateful session to (client_id, issuer, subject): it survives a token refresh and
        # refuses anyone else's token.
        scope["user"] = AuthenticatedUser(sdk_access_token(verified, token))
        scope["auth"] = AuthCredentials(sorted(verified.scopes))
        await app(scope, receive, send)
