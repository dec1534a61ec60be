"""The `fleet-mcp` command line: serve, demo, db, accounts and tokens, OAuth check, policy, approvals, audit, tools."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fleet_mcp import __version__
from fleet_mcp.settings import Settings

log = logging.getLogger("fleet_mcp")


def _configure_logging(settings: Settings, stderr_only: bool = True) -> None:
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Drivers echo SQL with bound parameters (digests, ciphertexts): keep them at WARNING whatever
    # the root level is.
    for noisy in ("aiosqlite", "asyncpg", "sqlalchemy.engine", "sqlalchemy.pool", "hvac", "urllib3", "git", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class DatabaseRefused(Exception):
    """The configured database cannot be used as it is; the message is one paragraph for the operator."""


_SQLITE_HEADER = b"SQLite format 3\x00"


def _db_where(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    url = settings.effective_database_url
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001
        return "the configured database"
    if parsed.get_backend_name() == "sqlite":
        return str(parsed.database)
    return parsed.render_as_string(hide_password=True)


def _refusal(settings: Settings, problem: str) -> str:
    return (f"fleet-mcp cannot use the database {_db_where(settings)}: {problem}; nothing was changed. "
            "Restore it from a backup (then run `fleet-mcp audit verify`), or point FLEET_MCP_DATABASE_URL or "
            "FLEET_MCP_DATA_DIR elsewhere; to start over with an empty database, move this file away first.")


def _check_database_file(settings: Settings) -> None:
    """Refuse, before anything opens it, a SQLite file that is empty or not SQLite at all: SQLite would
    silently turn an empty file into a new, empty database (and an empty audit log that verifies)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(settings.effective_database_url)
    except Exception:  # noqa: BLE001 - reported when the engine is built
        return
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return
    path = Path(parsed.database)
    if not path.exists():
        return
    if not path.is_file():
        raise DatabaseRefused(_refusal(settings, "it is not a regular file"))
    with path.open("rb") as f:
        header = f.read(len(_SQLITE_HEADER))
    if not header:
        raise DatabaseRefused(_refusal(settings, "the file is empty (0 bytes), so it was truncated or replaced and "
                                       "its audit log is gone"))
    if header != _SQLITE_HEADER:
        raise DatabaseRefused(_refusal(settings, "the file is not a fleet-mcp database (it is not SQLite), or it "
                                       "is corrupt"))


def _database_error(settings: Settings, exc: BaseException) -> str | None:
    """One paragraph for a database that fails while in use (corrupt pages, unreachable server), else None."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, BaseExceptionGroup):  # from a task group (serve)
            for inner in cur.exceptions:
                if (found := _database_error(settings, inner)) is not None:
                    return found
        if isinstance(cur, DBAPIError | sqlite3.DatabaseError):
            orig = getattr(cur, "orig", None) or cur
            reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
            if isinstance(cur, DBAPIError) and cur.connection_invalidated:
                return _refusal(settings, f"the connection failed ({reason})")
            if "malformed" in reason or "not a database" in reason or "corrupt" in reason:
                return _refusal(settings, f"it is corrupt or not a fleet-mcp database (SQLite: {reason})")
            return _refusal(settings, f"the database refused a statement ({reason}); it may be corrupt or belong "
                            "to another program")
        cur = cur.__cause__ or cur.__context__
    return None


def _run(coro_fn: Callable[[], Awaitable[int | None]]) -> int:
    return asyncio.run(coro_fn()) or 0  # type: ignore[arg-type]


async def _with_app(settings: Settings, fn: Callable[[Any], Awaitable[int | None]]) -> int:
    from fleet_mcp.app import App

    _check_database_file(settings)
    app = App(settings)
    await app.start()
    try:
        code = await fn(app) or 0
        # Work a committed call launched (a rotation an approval started) runs to its end before we exit.
        await app.drain()
        return code
    finally:
        await app.close()


async def _call_tool(app: Any, name: str, arguments: dict[str, Any], progress: Any = None) -> Any:
    """Call a tool in-process through the same gate as MCP, as the configured local principal."""
    from fleet_mcp.registry import load_tools

    spec = load_tools()[name]
    assert app.stdio_caller is not None
    return await app.gate.call(spec, app.stdio_caller, arguments, progress=progress)


def _print_outcome(outcome: Any) -> int:
    if outcome.ok:
        print(json.dumps(outcome.data, indent=2, default=str))
        return 0
    print(outcome.message, file=sys.stderr)
    if outcome.data:
        print(json.dumps(outcome.data, indent=2, default=str), file=sys.stderr)
    return 1


# -- commands --------------------------------------------------------------------------------------
def cmd_serve(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp.app import App
    from fleet_mcp.registry import TOOLSETS

    toolsets = {t.strip() for t in ns.toolsets.split(",") if t.strip()} if ns.toolsets else None
    if toolsets and (unknown := toolsets - set(TOOLSETS)):
        print(f"unknown toolsets: {', '.join(sorted(unknown))}; known: {', '.join(TOOLSETS)}", file=sys.stderr)
        return 2
    if ns.transport == "http":
        from fleet_mcp.oauth.config import OAuthConfig

        OAuthConfig.from_settings(settings)  # a broken OAuth setting stops here, with its name, before anything starts
    _check_database_file(settings)
    app = App(settings)

    async def main() -> None:
        from fleet_mcp.scheduler import run_scheduler

        await app.start()
        from fleet_mcp.policy.watcher import install_sighup_reload

        remove_sighup = install_sighup_reload(app.policy)
        federation = None
        if ns.federation_listen:
            from fleet_mcp.federation import listener

            fhost, _, fport = ns.federation_listen.rpartition(":")
            federation = await listener.start(app, fhost.strip("[]") or "127.0.0.1", int(fport))
        try:
            if ns.transport == "http":
                from fleet_mcp.http import serve_http

                async with run_scheduler(app, enabled=settings.scheduler):
                    await serve_http(app, host=ns.host or settings.host, port=ns.port or settings.port,
                                     read_only=ns.read_only, toolsets=toolsets, stateless=ns.stateless)
            else:
                from fleet_mcp.server import build_server, run_stdio

                server, _ = build_server(app, read_only=ns.read_only, toolsets=toolsets)
                async with run_scheduler(app, enabled=settings.scheduler):
                    await run_stdio(server)
        finally:
            if federation is not None:
                federation.close()
            remove_sighup()
            await app.close()

    asyncio.run(main())
    return 0


def cmd_console(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp.app import App
    from fleet_mcp.console.launch import run_console

    app = App(settings)

    async def main() -> None:
        try:
            await run_console(app, host=ns.host, port=ns.port or settings.port)
        finally:
            await app.close()

    asyncio.run(main())
    return 0


def cmd_db_upgrade(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp.db import migrate

    _check_database_file(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    migrate.upgrade(settings.effective_database_url)
    print(f"database at head: {migrate.current_heads()[0]}")
    return 0


def _actor(settings: Settings) -> Any:
    """The local operator as the actor of an administrative change (its audit row's principal)."""
    import getpass

    from fleet_mcp.principals import Actor

    try:
        os_user: str | None = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        os_user = None
    return Actor(qualified=f"{settings.account}/{settings.principal}", account=settings.account, via="cli",
                 os_user=os_user)


def cmd_account_create(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp import principals

    async def go(app: Any) -> int:
        async with app.unit_of_work() as uow:
            session = uow.session
            acct = await principals.create_account_audited(session, ns.name, ns.federation_domain,
                                                           actor=_actor(settings))
        print(f"account {acct.name} created (federation domain {acct.federation_domain})")
        return 0

    return _run(lambda: _with_app(settings, go))


def cmd_token_create(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp import principals

    async def go(app: Any) -> int:
        async with app.unit_of_work() as uow:
            session = uow.session
            token = await principals.create_token(session, account=ns.account, label=ns.name, roles=ns.role,
                                                  principal=ns.principal, actor=_actor(settings),
                                                  known_roles=app.policy.current.role_table())
        print(f"token {ns.name} for {ns.account}/{ns.principal or ns.name} with roles {', '.join(ns.role)}; "
              "it is shown once, store it now:", file=sys.stderr)
        print(token)
        return 0

    return _run(lambda: _with_app(settings, go))


def cmd_token_list(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp import principals

    async def go(app: Any) -> int:
        async with app.sessionmaker() as session:
            tokens = await principals.list_tokens(session)
        for t in tokens:
            state = f"revoked {t.revoked_at.isoformat()}" if t.revoked_at else "active"
            used = f"last used {t.last_used_at.isoformat(timespec='minutes')}" if t.last_used_at else "never used"
            print(f"{t.label}\t{t.prefix}…\t{t.account}/{t.principal}\t{','.join(t.roles)}\t{state}\t{used}")
        return 0

    return _run(lambda: _with_app(settings, go))


def cmd_token_revoke(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp import principals

    async def go(app: Any) -> int:
        async with app.unit_of_work() as uow:
            session = uow.session
            await principals.revoke_token(session, ns.label, actor=_actor(settings))
        print(f"token {ns.label} revoked")
        return 0

    return _run(lambda: _with_app(settings, go))


def cmd_principal_set_roles(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp import principals

    async def go(app: Any) -> int:
        async with app.unit_of_work() as uow:
            session = uow.session
            before, after = await principals.set_principal_roles(
                session, ns.principal, ns.role, known_roles=app.policy.current.role_table(), actor=_actor(settings))
        print(f"principal {ns.principal}: roles {', '.join(before) or '(none)'} -> {', '.join(after)}; "
              "its tokens carry at most these from their next request")
        return 0

    return _run(lambda: _with_app(settings, go))


def cmd_principal_list(settings: Settings, ns: argparse.Namespace) -> int:
    from sqlalchemy import select

    from fleet_mcp.db.models import Account, Principal

    async def go(app: Any) -> int:
        async with app.sessionmaker() as session:
            rows = (await session.execute(select(Account.name, Principal.name, Principal.roles, Principal.disabled)
                                          .join(Account, Principal.account_id == Account.id)
                                          .order_by(Account.name, Principal.name))).all()
        for acct, name, roles, disabled in rows:
            print(f"{acct}/{name}\t{','.join(roles) or '-'}" + ("\tdisabled" if disabled else ""))
        return 0

    return _run(lambda: _with_app(settings, go))


def cmd_policy_check(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp.policy.loader import load_policy
    from fleet_mcp.registry import catalog

    path = Path(ns.file) if ns.file else settings.policy
    try:
        policy = load_policy(path, catalog())
    except Exception as exc:  # PolicyError carries file and line
        print(f"policy invalid: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(policy.rules)} rules, default {policy.default})")
    return 0


def cmd_policy_explain(settings: Settings, ns: argparse.Namespace) -> int:
    try:
        args = json.loads(ns.args) if ns.args else {}
    except json.JSONDecodeError as exc:
        print(f"--args is not valid JSON: {exc}", file=sys.stderr)
        return 2

    async def go(app: Any) -> int:
        return _print_outcome(await _call_tool(app, "system_policy_explain", {"tool": ns.tool, "arguments": args}))

    return _run(lambda: _with_app(settings, go))


def cmd_approvals(settings: Settings, ns: argparse.Namespace) -> int:
    async def go(app: Any) -> int:
        if ns.action == "list":
            offset: int | None = 0
            while offset is not None:  # every page
                args: dict[str, Any] = {"offset": offset, "limit": 500, **({"status": ns.status} if ns.status else {})}
                outcome = await _call_tool(app, "system_approvals_list", args)
                if not outcome.ok:
                    return _print_outcome(outcome)
                for a in outcome.data["approvals"]:
                    print(f"{a['id']}\t{a['status']}\t{a['tool']}\t{a['requested_by']}\texpires {a['expires_at']}")
                offset = outcome.data["next_offset"]
            return 0
        if ns.action == "show":
            return _print_outcome(await _call_tool(app, "system_approvals_get", {"approval_id": ns.id}))
        if ns.action == "cancel":
            reason = ns.reason or "withdrawn from the command line"
            return _print_outcome(await _call_tool(app, "system_approvals_cancel",
                                                   {"approval_id": ns.id, "reason": reason}))
        decision = "approve" if ns.action == "approve" else "reject"
        reason = ns.reason or f"{decision}d from the command line"
        from fleet_mcp.vault import rotation  # an approved rotation runs here, to its end, before we exit

        with rotation.follow_background_jobs(rotation.text_progress(sys.stderr)):
            code = _print_outcome(await _call_tool(app, "system_approvals_decide",
                                                   {"approval_id": ns.id, "decision": decision, "reason": reason}))
            await rotation.finish_background_jobs(lambda m: print(m, file=sys.stderr))
        return code

    return _run(lambda: _with_app(settings, go))


def cmd_audit_verify(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp import audit

    async def go(app: Any) -> int:
        async with app.sessionmaker() as session:
            r = await audit.verify(session)
        if r.ok:
            print(f"audit chain ok: {r.entries_checked} entries")
            return 0
        print(f"audit chain BROKEN at seq {r.first_bad_seq}: {r.problem} ({r.entries_checked} entries verified "
              "before it)", file=sys.stderr)
        return 1

    return _run(lambda: _with_app(settings, go))


def cmd_audit_export(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp import audit

    async def go(app: Any) -> int:
        async with app.sessionmaker() as session:
            async for row in audit.export(session):
                sys.stdout.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        return 0

    return _run(lambda: _with_app(settings, go))


def cmd_rotate_pepper(settings: Settings, ns: argparse.Namespace) -> int:
    async def go(app: Any) -> int:
        async def bar(done: float, total: float | None, message: str | None) -> None:
            if not ns.progress:
                return
            width = 40
            frac = (done / total) if total else 0.0
            filled = int(width * frac)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {int(done)}/{int(total or 0)} "
                             f"{message or ''}"[:120])
            sys.stderr.flush()

        args: dict[str, Any] = {"wait": True, "reencrypt_existing": not ns.no_reencrypt}
        if ns.batch_size:
            args["batch_size"] = ns.batch_size
        outcome = await _call_tool(app, "system_rotate_vault_transit_pepper", args, progress=bar)
        if ns.progress:
            sys.stderr.write("\n")
        return _print_outcome(outcome)

    return _run(lambda: _with_app(settings, go))


def cmd_tools_export(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp.contracts import check_contracts, write_contracts

    out = Path(ns.dir)
    docs = Path(ns.docs) if ns.docs else None
    if ns.check:
        problems = check_contracts(out, docs)
        if problems:
            for p in problems:
                print(p, file=sys.stderr)
            print(f"{len(problems)} contract(s) stale; run `fleet-mcp tools export`", file=sys.stderr)
            return 1
        print(f"{out}: contracts up to date")
        return 0
    n = write_contracts(out, docs)
    print(f"wrote {n} tool contracts to {out}" + (f" and {docs / 'API.md'}, {docs / 'SETTINGS.md'}" if docs else ""))
    return 0


def cmd_auth_check(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp.oauth.check import run_check
    from fleet_mcp.oauth.config import OAuthConfig

    config = OAuthConfig.from_settings(settings)
    if config is None:
        print("OAuth is off: set FLEET_MCP_OAUTH_ISSUER and FLEET_MCP_OAUTH_RESOURCE", file=sys.stderr)
        return 2
    token = sys.stdin.readline().strip() if ns.token == "-" else ns.token  # noqa: S105 - "-" means stdin

    async def go(app: Any) -> int:
        return await run_check(config, token or None, app.policy.current.role_table(), app.read_sessionmaker,
                               sys.stdout)

    return _run(lambda: _with_app(settings, go))


def cmd_demo(settings: Settings, ns: argparse.Namespace) -> int:
    from fleet_mcp.demo import run_demo

    return asyncio.run(run_demo(keep=ns.keep))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleet-mcp", description="MCP server for fleet operations that must never "
                                "happen by accident (GitOps, SD-WAN federation, Vault pepper rotation).")
    p.add_argument("--version", action="version", version=f"fleet-mcp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve MCP over stdio (default) or streamable HTTP")
    s.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    s.add_argument("--host", default=None, help="HTTP bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="HTTP port (default 8765)")
    s.add_argument("--read-only", action="store_true", help="serve only read-only tools")
    s.add_argument("--toolsets", default=None, help="comma list: fleet,gitops,federation,vault,approvals,audit")
    s.add_argument("--stateless", action="store_true", help="stateless HTTP (no elicitation; approvals queue)")
    s.add_argument("--federation-listen", default=None, metavar="HOST:PORT",
                   help="serve the federation endpoint (TLS, instance CA) for peers on other instances")
    s.set_defaults(fn=cmd_serve)

    c = sub.add_parser("console", help="serve the operator console on loopback and print a one-time login link")
    c.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=None, help="port (default 8765)")
    c.set_defaults(fn=cmd_console)

    d = sub.add_parser("demo", help="run the main job end to end on embedded defaults in a temp data dir")
    d.add_argument("--keep", action="store_true", help="keep the temp data dir")
    d.set_defaults(fn=cmd_demo)

    db = sub.add_parser("db", help="database").add_subparsers(dest="db_cmd", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(fn=cmd_db_upgrade)

    acc = sub.add_parser("account", help="accounts").add_subparsers(dest="acc_cmd", required=True)
    ac = acc.add_parser("create", help="create an account")
    ac.add_argument("name")
    ac.add_argument("--federation-domain", default=None)
    ac.set_defaults(fn=cmd_account_create)

    tok = sub.add_parser("token", help="HTTP bearer tokens").add_subparsers(dest="tok_cmd", required=True)
    tc = tok.add_parser("create", help="create a token (printed once, last line of stdout)")
    tc.add_argument("--account", required=True)
    tc.add_argument("--name", required=True, help="token label")
    tc.add_argument("--role", action="append", required=True,
                    help="role (repeatable); the token carries exactly these")
    tc.add_argument("--principal", default=None, help="principal name (default: the label)")
    tc.set_defaults(fn=cmd_token_create)
    tok.add_parser("list", help="list tokens (never the token)").set_defaults(fn=cmd_token_list)
    tr = tok.add_parser("revoke", help="revoke a token")
    tr.add_argument("label")
    tr.set_defaults(fn=cmd_token_revoke)

    au_ = sub.add_parser("auth", help="OAuth for HTTP").add_subparsers(dest="auth_cmd", required=True)
    ac_ = au_.add_parser("check", help="print the discovered metadata; validate a token ('-' reads it from stdin)")
    ac_.add_argument("token", nargs="?", default=None, help="an access token, or '-' to read one line from stdin")
    ac_.set_defaults(fn=cmd_auth_check)

    pr = sub.add_parser("principal", help="principals and their roles").add_subparsers(dest="pr_cmd",
                                                                                       required=True)
    ps = pr.add_parser("set-roles", help="set the roles of ACCOUNT/NAME (audited; limits its tokens at once)")
    ps.add_argument("principal", help="ACCOUNT/NAME")
    ps.add_argument("--role", action="append", required=True, help="role (repeatable); replaces the current roles")
    ps.set_defaults(fn=cmd_principal_set_roles)
    pr.add_parser("list", help="list principals and their roles").set_defaults(fn=cmd_principal_list)

    pol = sub.add_parser("policy", help="intervention policy").add_subparsers(dest="pol_cmd", required=True)
    pc = pol.add_parser("check", help="validate a policy file")
    pc.add_argument("file", nargs="?")
    pc.set_defaults(fn=cmd_policy_check)
    pe = pol.add_parser("explain", help="which rule decides a call")
    pe.add_argument("tool")
    pe.add_argument("--args", default="{}", help="arguments as JSON")
    pe.set_defaults(fn=cmd_policy_explain)

    ap = sub.add_parser("approvals", help="the approval queue")
    ap_sub = ap.add_subparsers(dest="action", required=True)
    al = ap_sub.add_parser("list")
    al.add_argument("--status", default=None)
    for action in ("show", "approve", "reject", "cancel"):
        a = ap_sub.add_parser(action)
        a.add_argument("id")
        if action != "show":
            a.add_argument("--reason", default=None)
    ap.set_defaults(fn=cmd_approvals, status=None)

    au = sub.add_parser("audit", help="audit log").add_subparsers(dest="au_cmd", required=True)
    au.add_parser("verify", help="verify the hash chain").set_defaults(fn=cmd_audit_verify)
    au.add_parser("export", help="export as JSON lines").set_defaults(fn=cmd_audit_export)

    rp = sub.add_parser("rotate-pepper", help="rotate the transit pepper and rewrap every secret (through the gate)")
    rp.add_argument("--progress", action="store_true", help="show a progress bar")
    rp.add_argument("--batch-size", type=int, default=None)
    rp.add_argument("--no-reencrypt", action="store_true", help="only rotate the key")
    rp.set_defaults(fn=cmd_rotate_pepper)

    tl = sub.add_parser("tools", help="tool contracts").add_subparsers(dest="tl_cmd", required=True)
    te = tl.add_parser("export", help="write tools/*.json")
    te.add_argument("--check", action="store_true", help="exit non-zero when tools/ is stale")
    te.add_argument("--dir", default="tools")
    te.add_argument("--docs", default="docs", help="where API.md goes ('' to skip)")
    te.set_defaults(fn=cmd_tools_export)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        settings = Settings()
    except Exception as exc:  # noqa: BLE001 - settings errors are the user's to fix
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    from fleet_mcp.errors import FleetError

    try:
        return int(ns.fn(settings, ns) or 0)
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DatabaseRefused as exc:
        print(str(exc), file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _database_error(settings, exc)
        if message is None:
            raise
        log.debug("database failure", exc_info=True)
        print(message, file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
