"""`fleet-mcp console`: the HTTP server on loopback with a one-time login link for the local principal
(like a notebook server's token link)."""

from __future__ import annotations

import secrets
import sys

from fleet_mcp import principals
from fleet_mcp.app import App
from fleet_mcp.console.sessions import SessionStore


async def login_link(app: App, base_url: str) -> str:
    """A fresh token for the configured local principal (label console-…, revocable like any token) and a
    one-time link that signs a browser in as it."""
    s = app.settings
    label = f"console-{secrets.token_hex(4)}"
    assert app.sessionmaker is not None
    async with app.sessionmaker() as session, session.begin():
        await principals.ensure_account(session, s.account)
        token = await principals.create_token(session, account=s.account, label=label, roles=s.role_list,
                                              principal=s.principal, known_roles=app.policy.current.role_table())
    code = await SessionStore(app).create_link(principals.token_digest(token))
    return f"{base_url}/ui/login/link?code={code}"


async def run_console(app: App, *, host: str, port: int) -> None:
    from fleet_mcp.http import serve_http
    from fleet_mcp.scheduler import run_scheduler

    await app.start()
    shown_host = f"[{host}]" if ":" in host else host
    link = await login_link(app, f"http://{shown_host}:{port}")
    print(f"fleet-mcp console for {app.settings.account}/{app.settings.principal} — open this link once "
          f"(valid 10 minutes; revoke its token with `fleet-mcp token revoke`):", file=sys.stderr)
    print(link, flush=True)
    async with run_scheduler(app, enabled=app.settings.scheduler):
        await serve_http(app, host=host, port=port)
