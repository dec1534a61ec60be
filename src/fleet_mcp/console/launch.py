"""`fleet-mcp console`: the HTTP server on loopback with a one-time login link for the local principal
(like a notebook server's token link)."""

from __future__ import annotations

import logging
import secrets
import sys

from fleet_mcp import principals
from fleet_mcp.app import App
from fleet_mcp.console.sessions import SessionStore

log = logging.getLogger(__name__)


def _actor(app: App) -> principals.Actor:
    s = app.settings
    return principals.Actor(qualified=f"{s.account}/{s.principal}", account=s.account, via="console")


async def login_link(app: App, base_url: str) -> tuple[str, str]:
    """A fresh token for the configured local principal (label console-…, revocable like any token) and a
    one-time link that signs a browser in as it. Returns (link, the token's label)."""
    s = app.settings
    label = f"console-{secrets.token_hex(4)}"
    async with app.unit_of_work() as uow:
        await principals.ensure_account(uow.session, s.account)
        token = await principals.create_token(uow.session, account=s.account, label=label, roles=s.role_list,
                                              principal=s.principal, known_roles=app.policy.current.role_table(),
                                              actor=_actor(app))
    code = await SessionStore(app).create_link(principals.token_digest(token))
    return f"{base_url}/ui/login/link?code={code}", label


async def revoke_login_token(app: App, label: str) -> None:
    """The console's token lives as long as the console process: revoked (audited) when it stops, so tokens
    do not pile up one per start and its browser sessions end with it."""
    async with app.unit_of_work() as uow:
        await principals.revoke_token(uow.session, label, actor=_actor(app))


async def run_console(app: App, *, host: str, port: int) -> None:
    from fleet_mcp.http import serve_http
    from fleet_mcp.scheduler import run_scheduler

    await app.start()
    shown_host = f"[{host}]" if ":" in host else host
    link, label = await login_link(app, f"http://{shown_host}:{port}")
    print(f"fleet-mcp console for {app.settings.account}/{app.settings.principal} — open this link once "
          f"(valid 10 minutes; its token {label} is revoked when the console stops):", file=sys.stderr)
    print(link, flush=True)
    try:
        async with run_scheduler(app, enabled=app.settings.scheduler):
            await serve_http(app, host=host, port=port)
    finally:
        try:
            await revoke_login_token(app, label)
        except Exception:  # the database may be what stopped us; the token stays revocable by hand
            log.warning("could not revoke the console's token %s; revoke it with `fleet-mcp token revoke %s`",
                        label, label)
