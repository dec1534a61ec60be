"""Streamable HTTP: bearer tokens (401 unknown, 403 revoked), DNS-rebinding checks, /mcp, the health checks
(/livez, /readyz, /healthz = /readyz; see `fleet_mcp.drain`), draining on SIGTERM, and the console at /ui/.

Two kinds of bearer token end in the same `principals.Caller`: fleet's static tokens (`fmcp_…`, digests in the
database) and, when an issuer is configured, OAuth access tokens from the organization's identity provider
(`fleet_mcp.oauth`: RFC 9728 metadata, audience-bound JWTs, per-tool scopes; sessions bound by the SDK to the
token's issuer, subject and client)."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from fleet_mcp import __version__, principals
from fleet_mcp.app import App
from fleet_mcp.callers import bearer as _bearer
from fleet_mcp.callers import forget, note_use
from fleet_mcp.callers import remember as _remember
from fleet_mcp.drain import (
    DRAIN_RETRY_AFTER,
    DrainingServer,
    readiness,
    respond_database_unreachable,
    respond_unavailable,
    until_drained,
)
from fleet_mcp.errors import Unauthenticated, database_unreachable
from fleet_mcp.oauth import OAuthConfig
from fleet_mcp.oauth.guard import OAuthGuard
from fleet_mcp.principals import TOKEN_PREFIX, RevokedToken

#: Which principal opened each HTTP session (by session id): a session is used by that principal only. The SDK
#: checks only that a session id exists, so another principal's valid token could otherwise ride it (and
#: receive what the server sends on it). Bounded: the oldest binding is forgotten first, and a session whose
#: binding is gone is answered 404 like an unknown one (the client opens a new session).
MAX_SESSIONS = 10_000
_SESSIONS: OrderedDict[str, tuple[int, str]] = OrderedDict()


def _bind_session(session_id: str, owner: tuple[int, str]) -> None:
    if session_id in _SESSIONS:
        return
    _SESSIONS[session_id] = owner
    while len(_SESSIONS) > MAX_SESSIONS:
        _SESSIONS.popitem(last=False)


class BearerAuth:
    """ASGI middleware in front of /mcp: every request carries a valid, unrevoked token."""

    def __init__(self, app: ASGIApp, fleet: App, oauth: OAuthGuard | None = None) -> None:
        self.app = app
        self.fleet = fleet
        self.oauth = oauth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/mcp"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.fleet.draining and scope.get("method") == "POST" and "mcp-session-id" not in headers:
            # A new session while shutting down is refused (to be opened on another replica); a tool call is
            # refused by admission control instead, as busy with retry_after and an audit row.
            receive, opening = await _peek_initialize(receive)
            if opening:
                await respond_unavailable(send, "draining", "this server is shutting down (another replica "
                                          "answers)", DRAIN_RETRY_AFTER)
                return
        if scope.get("method") == "GET":
            receive = until_drained(receive, self.fleet.drained)  # a long-lived event stream
        token = _bearer(headers)
        if self.oauth is not None and (token is None or not token.startswith(f"{TOKEN_PREFIX}_")):
            await self.oauth(self.app, scope, receive, send, token)
            return
        status, body = 401, {"error": "unauthorized", "error_description": "a bearer token is required"}
        if token is not None:
            assert self.fleet.read_sessionmaker is not None
            try:
                try:
                    async with self.fleet.read_sessionmaker() as session:
                        caller = await principals.authenticate(session, token)
                except Exception as exc:
                    if not database_unreachable(exc):
                        raise
                    await respond_database_unreachable(send)
                    return
                _remember(principals.token_digest(token), caller)
                note_use(self.fleet, principals.token_digest(token))
                owner = (caller.account_id, caller.name)
                session_id = headers.get("mcp-session-id")
                if session_id is not None and _SESSIONS.get(session_id) != owner:
                    status, body = 404, {"error": "session_not_found",
                                         "error_description": "no such session for this principal; start a new one"}
                    await _respond(send, status, body, www_authenticate=False)
                    return
                await self.app(scope, receive, _recording_sessions(send, owner, session_id, scope.get("method")))
                return
            except RevokedToken:
                forget(principals.token_digest(token))
                status, body = 403, {"error": "forbidden", "error_description": "this bearer token was revoked"}
            except Unauthenticated:
                body = {"error": "invalid_token", "error_description": "unknown bearer token"}
        await _respond(send, status, body)


async def _peek_initialize(receive: Receive) -> tuple[Receive, bool]:
    """Read a POST body (MCP messages are small) to tell whether it opens a session (`initialize`); return a
    `receive` that replays it."""
    messages: list[Any] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    opening = isinstance(parsed, dict) and parsed.get("method") == "initialize"

    async def replay() -> Any:
        return messages.pop(0) if messages else await receive()

    return replay, opening


def _recording_sessions(send: Send, owner: tuple[int, str], session_id: str | None, method: str | None) -> Send:
    """`send`, noting the session a response opens (bound to OWNER) and forgetting one a DELETE closed."""

    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            status = message.get("status", 500)
            if session_id is None and status < 400:
                for k, v in message.get("headers", []):
                    if k.lower() == b"mcp-session-id":
                        _bind_session(v.decode("latin-1"), owner)
            elif session_id is not None and method == "DELETE" and status < 300:
                _SESSIONS.pop(session_id, None)
        await send(message)

    return wrapped


async def _respond(send: Send, status: int, body: dict[str, str], *, www_authenticate: bool = True,
                   retry_after: int | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if www_authenticate:
        headers.append((b"www-authenticate", f'Bearer error="{body["error"]}"'.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


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
    """The ASGI app: /mcp behind bearer auth, health checks open. Call `await fleet.start()` first."""
    from fleet_mcp.server import build_server

    fleet.stateless_http = stateless
    server, _gate = build_server(fleet, read_only=read_only, toolsets=toolsets)

    @server.custom_route("/livez", methods=["GET"])
    async def livez(_request: Request) -> JSONResponse:
        # Answered by the event loop itself: a wedged process does not answer. Never asks the database.
        return JSONResponse({"status": "alive", "version": __version__})

    async def readyz(_request: Request) -> JSONResponse:
        code, body = await readiness(fleet)
        return JSONResponse(body, status_code=code)

    server.custom_route("/readyz", methods=["GET"])(readyz)
    server.custom_route("/healthz", methods=["GET"])(readyz)  # the older name: readiness

    config = OAuthConfig.from_settings(fleet.settings)
    oauth = OAuthGuard(fleet, config, _remember) if config is not None else None
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
    from fleet_mcp.console.app import WithConsole, build_console

    hosts = set(security_settings(fleet, host, port).allowed_hosts)
    return WithConsole(BearerAuth(mcp_app, fleet, oauth), build_console(fleet, _gate, hosts))


async def serve_http(fleet: App, *, host: str, port: int, **kwargs: Any) -> None:
    import uvicorn

    await fleet.start()
    app = build_http_app(fleet, host=host, port=port, **kwargs)
    drain_timeout = fleet.settings.drain_timeout
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=max(1, int(drain_timeout)))
    try:
        await DrainingServer(config, fleet, drain_timeout).serve()
    finally:
        from fleet_mcp.console.app import WithConsole

        bearer = app.main if isinstance(app, WithConsole) else app
        if isinstance(bearer, BearerAuth) and bearer.oauth is not None:
            await bearer.oauth.close()
