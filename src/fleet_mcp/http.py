"""Streamable HTTP: bearer tokens (401 unknown, 403 revoked), DNS-rebinding checks, /mcp and /healthz.

Two kinds of bearer token end in the same `principals.Caller`: fleet's static tokens (`fmcp_…`, digests in the
database) and, when an issuer is configured, OAuth access tokens from the organization's identity provider
(`fleet_mcp.oauth`: RFC 9728 metadata, audience-bound JWTs, per-tool scopes)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_mcp import __version__, principals
from fleet_mcp.app import App
from fleet_mcp.errors import ExternalError, Unauthenticated
from fleet_mcp.oauth import IdentityRefused, OAuthConfig, TokenRefused
from fleet_mcp.principals import TOKEN_PREFIX, Caller, RevokedToken

log = logging.getLogger(__name__)

# Authenticated callers by token digest, refreshed by the middleware on every request (so a revoked
# token stops at the next request); tools read the caller of their own request's header from here.
# Bounded, least recently authenticated first out: OAuth access tokens are short-lived and many.
_CALLERS: dict[str, Caller] = {}
_MAX_CALLERS = 10_000
MAX_BODY = 4 * 1024 * 1024  # the SDK's own limit; a larger body is refused downstream


def _remember(digest: str, caller: Caller) -> None:
    _CALLERS.pop(digest, None)
    _CALLERS[digest] = caller
    while len(_CALLERS) > _MAX_CALLERS:
        _CALLERS.pop(next(iter(_CALLERS)))


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization") or headers.get("Authorization")
    if not value or not value.lower().startswith("bearer "):
        return None
    return value[7:].strip() or None


def caller_from_headers(headers: Mapping[str, str]) -> Caller:
    token = _bearer(headers)
    if token is None:
        raise Unauthenticated("no bearer token on this request")
    caller = _CALLERS.get(principals.token_digest(token))
    if caller is None:
        raise Unauthenticated("bearer token not authenticated for this request")
    return caller


class BearerAuth:
    """ASGI middleware in front of /mcp: every request carries a valid, unrevoked token."""

    def __init__(self, app: ASGIApp, fleet: App, oauth: OAuthResource | None = None) -> None:
        self.app = app
        self.fleet = fleet
        self.oauth = oauth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/mcp"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = _bearer(headers)
        if self.oauth is not None and (token is None or not token.startswith(f"{TOKEN_PREFIX}_")):
            await self.oauth(self.app, scope, receive, send, token)
            return
        status, body = 401, {"error": "unauthorized", "error_description": "a bearer token is required"}
        if token is not None:
            assert self.fleet.read_sessionmaker is not None
            try:
                async with self.fleet.read_sessionmaker() as session:
                    caller = await principals.authenticate(session, token)
                _remember(principals.token_digest(token), caller)
                await self.app(scope, receive, send)
                return
            except RevokedToken:
                _CALLERS.pop(principals.token_digest(token), None)
                status, body = 403, {"error": "forbidden", "error_description": "this bearer token was revoked"}
            except Unauthenticated:
                body = {"error": "invalid_token", "error_description": "unknown bearer token"}
        await _refuse(send, status, body, f'Bearer error="{body["error"]}"')


async def _refuse(send: Send, status: int, body: dict[str, str], www_authenticate: str | None) -> None:
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


class OAuthResource:
    """The OAuth half of the bearer check: verify, check scopes, map claims, resolve the principal."""

    def __init__(self, fleet: App, config: OAuthConfig) -> None:
        from fleet_mcp.oauth.verifier import FleetTokenVerifier
        from fleet_mcp.registry import load_tools

        self.fleet = fleet
        self.config = config
        self.verifier = FleetTokenVerifier(config)
        self.read_only = {name: spec.read_only for name, spec in load_tools().items()}

    async def close(self) -> None:
        await self.verifier.close()

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, token: str | None) -> None:
        from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
        from starlette.authentication import AuthCredentials

        from fleet_mcp.oauth.identities import resolve_caller
        from fleet_mcp.oauth.mapping import map_identity
        from fleet_mcp.oauth.resource import challenge, missing_scopes
        from fleet_mcp.oauth.verifier import sdk_access_token

        cfg = self.config
        if token is None:
            # All the scopes this server uses, not only the read scope: clients register (RFC 7591) with the scope
            # of their first challenge, and many authorization servers refuse a later step-up beyond it.
            await _refuse(send, 401, {"error": "unauthorized", "error_description": "a bearer token is required"},
                          challenge(cfg, scope=" ".join(cfg.scopes_supported) or None))
            return
        try:
            verified = await self.verifier.verify(token)
        except TokenRefused as exc:
            await _refuse(send, 401, {"error": "invalid_token", "error_description": exc.message},
                          challenge(cfg, error="invalid_token", description=exc.message))
            return
        except ExternalError as exc:
            log.warning("OAuth token check unavailable: %s", exc.message)
            await _refuse(send, 503, {"error": "temporarily_unavailable",
                                      "error_description": "the identity provider's keys could not be fetched"}, None)
            return
        body: bytes | None = None
        if scope.get("method") == "POST":
            body, receive = await _buffer_body(receive)
        missing = missing_scopes(cfg, verified.scopes, body, self.read_only)
        if missing:
            needed = " ".join(s for s in cfg.scopes_supported if s in verified.scopes or s in missing)
            description = f"this request needs scope {' '.join(missing)}"
            await _refuse(send, 403, {"error": "insufficient_scope", "error_description": description},
                          challenge(cfg, error="insufficient_scope", description=description, scope=needed))
            return
        assert self.fleet.read_sessionmaker is not None and self.fleet.sessionmaker is not None
        try:
            ident = map_identity(verified, cfg, self.fleet.policy.current.role_table())
            caller = await resolve_caller(self.fleet.read_sessionmaker, self.fleet.sessionmaker, verified, ident)
        except IdentityRefused as exc:
            await _refuse(send, 403, {"error": "access_denied", "error_description": exc.message},
                          challenge(cfg, error="access_denied", description=exc.message))
            return
        _remember(principals.token_digest(token), caller)
        # The SDK binds a stateful session to (client_id, issuer, subject): it survives a token refresh and
        # refuses anyone else's token.
        scope["user"] = AuthenticatedUser(sdk_access_token(verified, token))
        scope["auth"] = AuthCredentials(sorted(verified.scopes))
        await app(scope, receive, send)


def security_settings(fleet: App, host: str, port: int) -> TransportSecuritySettings:
    s = fleet.settings
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1", "localhost", "[::1]",
             f"{host}:{port}", host}
    hosts |= {h.strip() for h in s.allowed_hosts.split(",") if h.strip()}
    origins = {f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"}
    origins |= {o.strip() for o in s.allowed_origins.split(",") if o.strip()}
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts), allowed_origins=sorted(origins)
    )


def build_http_app(
    fleet: App, *, host: str = "127.0.0.1", port: int = 8765, read_only: bool = False,
    toolsets: set[str] | None = None, stateless: bool = False, json_response: bool = False,
) -> ASGIApp:
    """The ASGI app: /mcp behind bearer auth, /healthz open. Call `await fleet.start()` first."""
    from fleet_mcp.server import build_server

    fleet.stateless_http = stateless
    server, _gate = build_server(fleet, read_only=read_only, toolsets=toolsets)

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(_request: Request) -> JSONResponse:
        from sqlalchemy import text

        assert fleet.read_sessionmaker is not None
        try:
            async with fleet.read_sessionmaker() as session:
                await session.execute(text("SELECT 1"))
            return JSONResponse({"status": "ok", "version": __version__})
        except Exception:  # noqa: BLE001
            return JSONResponse({"status": "degraded", "database": "unreachable"}, status_code=503)

    config = OAuthConfig.from_settings(fleet.settings)
    oauth = OAuthResource(fleet, config) if config is not None else None
    if config is not None:
        from fleet_mcp.oauth.resource import metadata_document

        document = metadata_document(config)

        @server.custom_route(config.metadata_path, methods=["GET"])
        async def protected_resource_metadata(_request: Request) -> JSONResponse:
            return JSONResponse(document, headers={"Cache-Control": "public, max-age=3600"})

    mcp_app = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=stateless, json_response=json_response,
        transport_security=security_settings(fleet, host, port), host=host,
    )
    return BearerAuth(mcp_app, fleet, oauth)


async def serve_http(fleet: App, *, host: str, port: int, **kwargs: Any) -> None:
    import uvicorn

    await fleet.start()
    app = build_http_app(fleet, host=host, port=port, **kwargs)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    try:
        await uvicorn.Server(config).serve()
    finally:
        if isinstance(app, BearerAuth) and app.oauth is not None:
            await app.oauth.close()
