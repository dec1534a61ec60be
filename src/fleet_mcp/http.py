"""Streamable HTTP: bearer tokens (401 unknown, 403 revoked), DNS-rebinding checks, /mcp, /healthz and the
console at /ui/."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from fleet_mcp import __version__, principals
from fleet_mcp.app import App
from fleet_mcp.errors import Unauthenticated
from fleet_mcp.principals import Caller, RevokedToken

# Authenticated callers by token digest, refreshed by the middleware on every request (so a revoked
# token stops at the next request); tools read the caller of their own request's header from here.
_CALLERS: dict[str, Caller] = {}


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

    def __init__(self, app: ASGIApp, fleet: App) -> None:
        self.app = app
        self.fleet = fleet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/mcp"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = _bearer(headers)
        status, body = 401, {"error": "unauthorized", "error_description": "a bearer token is required"}
        if token is not None:
            assert self.fleet.read_sessionmaker is not None
            try:
                async with self.fleet.read_sessionmaker() as session:
                    caller = await principals.authenticate(session, token)
                _CALLERS[principals.token_digest(token)] = caller
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
                _CALLERS.pop(principals.token_digest(token), None)
                status, body = 403, {"error": "forbidden", "error_description": "this bearer token was revoked"}
            except Unauthenticated:
                body = {"error": "invalid_token", "error_description": "unknown bearer token"}
        await _respond(send, status, body)


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


async def _respond(send: Send, status: int, body: dict[str, str], *, www_authenticate: bool = True) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
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

    mcp_app = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=stateless, json_response=json_response,
        transport_security=security_settings(fleet, host, port), host=host,
    )
    from fleet_mcp.console.app import WithConsole, build_console

    hosts = set(security_settings(fleet, host, port).allowed_hosts)
    return WithConsole(BearerAuth(mcp_app, fleet), build_console(fleet, _gate, hosts))


async def serve_http(fleet: App, *, host: str, port: int, **kwargs: Any) -> None:
    import uvicorn

    await fleet.start()
    app = build_http_app(fleet, host=host, port=port, **kwargs)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
