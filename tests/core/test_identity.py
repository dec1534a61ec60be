"""Identity, roles, admin audit, keyed digests and the bounds on what callers can make the server store."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


async def test_policy_explain_lists_every_rule_considered(client) -> None:  # noqa: ANN001
    r = await client.call_tool("system_policy_explain", {"tool": "system_gitops_apply_proposal",
                                                         "arguments": {"proposal_id": 1}})
    assert not r.is_error, r.content
    considered = r.structured_content["considered"]
    assert considered, "the trace of the policy's rules is missing"
    assert {"rule", "matched", "decisive", "reasons"} <= set(considered[0])
    decisive = [c for c in considered if c["decisive"]]
    assert len(decisive) <= 1
    if decisive:
        assert decisive[0]["rule"] == r.structured_content["rule"]


# -- roles per token, audited administration (real CLI subprocesses and a real HTTP server) ----------------
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx2  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from tests.conftest import HttpServer, cli_env, run_cli  # noqa: E402


def _token(env: dict[str, str], label: str, principal: str, *roles: str, account: str = "acme") -> str:
    role_args = [a for r in roles for a in ("--role", r)]
    out = run_cli(env, "token", "create", "--account", account, "--name", label, "--principal", principal, *role_args)
    return out.stdout.strip().splitlines()[-1]


def _http(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(url + "/mcp", http_client=http))


async def _can_write(url: str, token: str, name: str) -> bool:
    async with _http(url, token) as c:
        r = await c.call_tool("system_put_template", {"name": name, "spec": {}})
    if r.is_error:
        assert r.structured_content["permission"] == "system.fleet.write", r.content
    return not r.is_error


def _principals(env: dict[str, str]) -> dict[str, str]:
    lines = run_cli(env, "principal", "list").stdout.strip().splitlines()
    return dict(line.split("\t")[:2] for line in lines)


def _audit_rows(env: dict[str, str]) -> list[dict]:
    return [json.loads(line) for line in run_cli(env, "audit", "export").stdout.splitlines()]


@pytest.fixture
def admin_env(tmp_path: Path, fresh_db_url: str):  # noqa: ANN201
    env = cli_env(tmp_path / "data", fresh_db_url, FLEET_MCP_PRINCIPAL="root")
    run_cli(env, "db", "upgrade")
    run_cli(env, "account", "create", "acme")
    server = HttpServer(env)
    yield env, server
    server.stop()


async def test_token_roles_are_exact_demotion_works_and_local_identity_never_grants(admin_env) -> None:  # noqa: ANN001
    env, server = admin_env
    admin = _token(env, "alice-admin", "alice", "admin")
    viewer = _token(env, "alice-ro", "alice", "viewer")
    # A viewer token of a principal that is (and was) admin cannot write.
    assert await _can_write(server.url, admin, "a1")
    assert not await _can_write(server.url, viewer, "a2")
    assert "alice-ro\t" in run_cli(env, "token", "list").stdout
    assert [line for line in run_cli(env, "token", "list").stdout.splitlines()
            if line.startswith("alice-ro\t")][0].split("\t")[3] == "viewer"

    # Local identity (stdio, any CLI command) never changes a principal's roles.
    run_cli(env, "principal", "set-roles", "acme/alice", "--role", "operator")
    as_alice = {**env, "FLEET_MCP_ACCOUNT": "acme", "FLEET_MCP_PRINCIPAL": "alice", "FLEET_MCP_ROLES": "admin"}
    run_cli(as_alice, "approvals", "list")
    assert _principals(env)["acme/alice"] == "operator"

    # Demotion takes effect at the admin token's next request: it keeps only roles alice still holds.
    assert not await _can_write(server.url, admin, "a3")
    async with _http(server.url, admin) as c:
        r = await c.call_tool("system_put_template", {"name": "a4", "spec": {}})
    assert "has roles (none)" in r.content[0].text

    # Raising the principal again does not give the viewer token more than it was issued with.
    run_cli(env, "principal", "set-roles", "acme/alice", "--role", "admin")
    assert not await _can_write(server.url, viewer, "a5")
    assert await _can_write(server.url, admin, "a6")
    # A new token for alice may carry operator: the principal's roles grow, recorded in the audit row.
    op = _token(env, "alice-op", "alice", "operator")
    assert await _can_write(server.url, op, "a7")
    assert _principals(env)["acme/alice"] == "admin,operator"


async def test_token_list_says_when_each_token_was_last_used(admin_env) -> None:  # noqa: ANN001
    """`last_used_at` is real: the first request with a token records it (in the background, never delaying
    the request); a token never presented says so."""
    import anyio

    env, server = admin_env
    used = _token(env, "bob-used", "bob", "admin")
    _token(env, "bob-idle", "bob", "viewer")
    assert await _can_write(server.url, used, "b1")

    def line(label: str) -> str:
        return next(ln for ln in run_cli(env, "token", "list").stdout.splitlines() if ln.startswith(label + "\t"))

    with anyio.fail_after(60):
        while "last used" not in line("bob-used"):
            await anyio.sleep(0.2)  # polling another process's committed state, bounded by the deadline
    assert line("bob-idle").endswith("never used")


async def test_every_change_of_who_may_do_what_is_in_the_audit_chain(admin_env) -> None:  # noqa: ANN001
    env, _server = admin_env
    token = _token(env, "bob-1", "bob", "operator")
    run_cli(env, "principal", "set-roles", "acme/bob", "--role", "viewer")
    run_cli(env, "token", "revoke", "bob-1")
    rows = [r for r in _audit_rows(env) if r["tool"].startswith("admin.")]
    assert [r["tool"] for r in rows] == ["admin.account_create", "admin.token_create", "admin.principal_set_roles",
                                         "admin.token_revoke"]
    for r in rows:
        assert r["principal"] == "default/root" and r["decision"] == "admin" and r["detail"]["via"] == "cli"
        assert r["account"] == "acme"
        assert token not in json.dumps(r)
    assert rows[1]["arguments"]["roles"] == ["operator"] and rows[1]["arguments"]["principal"] == "acme/bob"
    assert rows[2]["detail"]["before"] == ["operator"] and rows[2]["detail"]["after"] == ["viewer"]
    assert "audit chain ok" in run_cli(env, "audit", "verify").stdout
    # A refused change records nothing.
    before = len(_audit_rows(env))
    out = run_cli(env, "principal", "set-roles", "acme/nobody", "--role", "viewer", check=False)
    assert out.returncode != 0 and "does not exist" in out.stderr
    assert len(_audit_rows(env)) == before


async def test_token_for_unknown_account_is_refused_and_creates_nothing(admin_env) -> None:  # noqa: ANN001
    env, _server = admin_env
    out = run_cli(env, "token", "create", "--account", "acmee", "--name", "t1", "--role", "viewer", check=False)
    assert out.returncode == 1
    assert "account 'acmee' does not exist" in out.stderr and "acme" in out.stderr
    assert "account create" in out.stderr and "Traceback" not in out.stderr
    assert "acmee/" not in run_cli(env, "principal", "list").stdout
    out = run_cli(env, "token", "create", "--account", "acmee", "--name", "t1", "--role", "viewer", check=False)
    assert "does not exist" in out.stderr  # still not created as a side effect


# -- keyed digests ---------------------------------------------------------------------------------------------
async def test_a_dictionary_attack_on_stored_digests_recovers_no_secret(client, app) -> None:  # noqa: ANN001
    import hashlib

    from fleet_mcp import audit

    secret = "Summer2026!"
    r = await client.call_tool("system_vault_store_credential", {"name": "db", "kind": "password", "secret": secret})
    # whatever the policy decided (run, queue), the call left an audit row a viewer can read
    r = await client.call_tool("system_audit_query", {"tool": "system_vault_store_credential"})
    entry = r.structured_content["entries"][0]
    stored = entry["args_digest"]
    assert entry["arguments"]["secret"] == "***" and secret not in json.dumps(r.structured_content)
    assert stored.startswith("hmac-sha256:")
    guesses = ["password", "Winter2025!", "Spring2026!", secret, "Summer2026?", "hunter2"]
    for guess in guesses:
        candidate = {"name": "db", "kind": "password", "secret": guess}
        for args in (candidate, {**candidate, **{k: v for k, v in entry["arguments"].items() if k not in candidate}}):
            plain = hashlib.sha256(audit.canonical_json(args).encode()).hexdigest()
            assert plain not in stored, f"the stored digest reveals the secret {guess!r}"
            assert audit.arguments_digest(args, key=b"k" * 32) != stored
    # The server itself still binds exactly these arguments.
    full = {**entry["arguments"], "secret": secret}
    assert audit.digest_matches(full, stored)
    assert not audit.digest_matches({**full, "secret": "Summer2026?"}, stored)


def test_digest_key_file_is_private_and_stable(tmp_path: Path) -> None:
    import stat

    from fleet_mcp import audit
    from fleet_mcp.errors import InvalidArgument

    path = tmp_path / "d" / "audit.key"
    key = audit.load_or_create_digest_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert audit.load_or_create_digest_key(path) == key
    path.chmod(0o644)
    with pytest.raises(InvalidArgument, match="chmod 600"):
        audit.load_or_create_digest_key(path)


def test_legacy_digests_still_bind_their_arguments() -> None:
    import hashlib

    from fleet_mcp import audit

    args = {"name": "web", "force": True}
    legacy = hashlib.sha256(audit.canonical_json(args).encode()).hexdigest()
    assert audit.digest_matches(args, legacy) and not audit.digest_matches({**args, "force": False}, legacy)


# -- bounded audit storage -------------------------------------------------------------------------------------
class FakeClock:
    """A fake clock for the rate limiter (time is the one thing a test cannot run for real without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _audit_rows_after(app, seq: int) -> list:  # noqa: ANN001
    from sqlalchemy import select

    from fleet_mcp.db.models import AuditEntry

    async with app.sessionmaker() as s:
        return list((await s.execute(select(AuditEntry).where(AuditEntry.seq > seq).order_by(AuditEntry.seq)))
                    .scalars())


async def _last_seq(app) -> int:  # noqa: ANN001
    rows = await _audit_rows_after(app, 0)
    return rows[-1].seq if rows else 0


async def test_oversized_arguments_are_stored_as_size_and_digest(client, app) -> None:  # noqa: ANN001
    from fleet_mcp import audit

    start = await _last_seq(app)
    huge = "x" * 300_000
    r = await client.call_tool("system_put_template", {"name": "web", "spec": {}, "bogus": huge})
    assert r.is_error and r.structured_content["status"] == "invalid_arguments"
    r = await client.call_tool("system_put_template", {"name": "web", "spec": {"note": huge}})
    (invalid, *_rest) = rows = await _audit_rows_after(app, start)
    assert len(rows) == 2
    for row in rows:
        stored = len(audit.canonical_json(row.arguments)) + len(audit.canonical_json(row.detail or {}))
        assert stored < 2 * audit.MAX_STORED_BYTES, stored
        assert row.arguments["bytes"] > 300_000 and "_omitted" in row.arguments
        assert row.args_digest.startswith("hmac-sha256:")
    async with app.sessionmaker() as s:
        assert (await audit.verify(s)).ok


async def test_invalid_calls_beyond_the_budget_are_refused_and_summarised(client, app) -> None:  # noqa: ANN001
    from fleet_mcp.ratelimit import InvalidCallLimiter

    clock = FakeClock()
    app.audit_writer.limiter = InvalidCallLimiter(burst=3, per_second=0.5, clock=clock)
    start = await _last_seq(app)
    results = [await client.call_tool("system_put_template", {"name": "w", "bogus": i}) for i in range(10)]
    assert all(r.is_error for r in results)
    assert [r.structured_content["status"] for r in results[:3]] == ["invalid_arguments"] * 3
    for r in results[3:]:
        err = r.structured_content["error"]
        assert err["code"] == "rate_limited" and err["subject"]["retry_after_s"] == 2
        assert "too many invalid calls from acme/alice, retry after 2 s" in r.content[0].text
    rows = await _audit_rows_after(app, start)
    assert [row.outcome for row in rows] == ["invalid_arguments"] * 3 + ["rate_limited"]
    # A valid call is never limited.
    r = await client.call_tool("system_put_template", {"name": "ok", "spec": {}})
    assert not r.is_error, r.content
    # Once the bucket refills, the next invalid call is recorded with the count of those refused meanwhile.
    clock.now += 2
    r = await client.call_tool("system_put_template", {"name": "w", "bogus": 99})
    assert r.structured_content["status"] == "invalid_arguments"
    last = (await _audit_rows_after(app, start))[-1]
    assert last.outcome == "invalid_arguments" and last.detail["refused_invalid_calls"] == 7


async def test_denied_calls_beyond_the_budget_are_refused_and_summarised(app) -> None:  # noqa: ANN001
    """An agent looping on a call it may not make costs one audit row per call until its budget is spent,
    then one summary row; its invalid-call budget is a separate bucket, and allowed calls are never limited."""
    from fleet_mcp.ratelimit import InvalidCallLimiter
    from tests.conftest import call_as, make_caller

    clock = FakeClock()
    app.audit_writer.limiter = InvalidCallLimiter(burst=2, per_second=0.5, clock=clock)
    viewer = await make_caller(app, "acme", "vic", ("viewer",))
    start = await _last_seq(app)
    denied = [await call_as(app, viewer, "system_put_template", {"name": f"w{i}", "spec": {}}) for i in range(6)]
    assert [out.data.get("status") for out in denied[:2]] == ["denied"] * 2
    for out in denied[2:]:
        err = out.data["error"]
        assert err["code"] == "rate_limited" and err["subject"]["retry_after_s"] == 2
        assert "too many denied calls from acme/vic" in out.message and "system_policy_explain" in out.message
    out = await call_as(app, viewer, "system_put_template", {"name": "w", "bogus": 1})  # its own budget
    assert out.data["status"] == "invalid_arguments"
    out = await call_as(app, viewer, "system_list_templates", {})
    assert out.ok, out.message
    rows = await _audit_rows_after(app, start)
    assert [row.outcome for row in rows] == ["denied", "denied", "rate_limited", "invalid_arguments", "ok"]
    clock.now += 2
    out = await call_as(app, viewer, "system_put_template", {"name": "again", "spec": {}})
    assert out.data["status"] == "denied"
    last = (await _audit_rows_after(app, start))[-1]
    assert last.outcome == "denied" and last.detail["refused_denied_calls"] == 4


# -- a damaged database is refused clearly ---------------------------------------------------------------------
def _damaged(tmp_path: Path, kind: str) -> tuple[dict[str, str], Path]:
    db = tmp_path / "fleet.db"
    env = cli_env(tmp_path / "data", f"sqlite+aiosqlite:///{db}", FLEET_MCP_SCHEDULER="false")
    if kind == "empty":
        db.write_bytes(b"")
    elif kind == "garbage":
        db.write_bytes(b"this is not a database\n" * 300)
    else:  # a real database whose pages after the header were overwritten
        run_cli(env, "db", "upgrade")
        data = bytearray(db.read_bytes())
        data[4096:] = b"\xa5" * (len(data) - 4096)
        db.write_bytes(bytes(data))
    return env, db


@pytest.mark.parametrize("kind", ["empty", "garbage", "malformed"])
@pytest.mark.parametrize("command", [("audit", "verify"), ("token", "list"), ("serve",)])
def test_a_damaged_database_is_refused_in_one_paragraph(tmp_path: Path, kind: str, command: tuple[str, ...]) -> None:
    import subprocess
    import sys

    env, db = _damaged(tmp_path, kind)
    before = db.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "fleet_mcp", *command], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode not in (0, None), proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(db) in err and "nothing was changed" in err
    assert ("empty" if kind == "empty" else "not a fleet-mcp database") in err or "corrupt" in err
    assert db.read_bytes() == before


# -- HTTP sessions belong to the principal that opened them ----------------------------------------------------
def _post_rpc(url: str, token: str, body: dict, session: str | None = None) -> tuple[int, dict[str, str], str]:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2025-11-25"}
    if session:
        headers["Mcp-Session-Id"] = session
    req = urllib.request.Request(url + "/mcp", data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


async def test_an_http_session_cannot_be_used_by_another_principal(admin_env) -> None:  # noqa: ANN001
    env, server = admin_env
    run_cli(env, "account", "create", "globex")
    alice = _token(env, "alice-s", "alice", "admin")
    alice2 = _token(env, "alice-s2", "alice", "viewer")
    mallory = _token(env, "mallory-s", "mallory", "admin", account="globex")
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    status, headers, _ = _post_rpc(server.url, alice, init)
    assert status == 200
    sid = headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    status, _, body = _post_rpc(server.url, mallory, listing, session=sid)
    assert status == 404, body[:200]
    assert "session" in body
    # The principal that opened it may use it (with any of its tokens; each request gets its token's roles).
    assert _post_rpc(server.url, alice, listing, session=sid)[0] == 200
    assert _post_rpc(server.url, alice2, listing, session=sid)[0] == 200


# -- one hardened YAML reader for policy files and fleet.yaml ---------------------------------------------------
@pytest.mark.parametrize(("doc", "fleet_says", "policy_says"), [
    ("version: 1\ntemplates: &a {}\n", "anchors and aliases are not allowed", "anchors are not allowed (&a)"),
    ("version: 1\ntemplates:\n  <<: {web: {}}\n", "merge keys (<<) are not allowed", "merge keys (<<) are not allowed"),
    ("version: 1\ntemplates: {}\n---\nversion: 1\n", "more than one YAML document", "expected a single document"),
    ("version: 1\ntemplates: {}\ntemplates: {}\n", "duplicate key (line 3, first at line 2)",
     "duplicate key 'templates' (first at line 2)"),
])
def test_policy_and_fleet_files_share_one_hardened_reader(doc: str, fleet_says: str, policy_says: str) -> None:
    from fleet_mcp.gitops.fleetfile import FleetFileError, parse_fleet_file
    from fleet_mcp.policy.errors import PolicyError
    from fleet_mcp.policy.yamlsafe import read_yaml

    with pytest.raises(FleetFileError) as fleet:
        parse_fleet_file(doc)
    assert fleet_says in str(fleet.value)
    with pytest.raises(PolicyError) as policy:
        read_yaml(doc, "p.yaml")
    assert policy_says in str(policy.value)


async def test_upgrade_gives_each_existing_token_the_roles_it_had(fresh_db_url: str) -> None:
    """Migration 0002 on a database with tokens: each keeps exactly what it could do before."""
    import anyio
    from sqlalchemy import text

    from fleet_mcp.db import migrate
    from fleet_mcp.db.engine import create_engine

    await anyio.to_thread.run_sync(migrate.upgrade, fresh_db_url, "0001")
    engine = create_engine(fresh_db_url)
    try:
        async with engine.begin() as conn:
            now = "2026-01-01 00:00:00"
            await conn.execute(text("INSERT INTO accounts (id, name, transit_key_version, created_at, updated_at) "
                                    f"VALUES (1, 'acme', 1, '{now}', '{now}')"))
            for pid, name, roles in ((1, "alice", '["admin", "viewer"]'), (2, "bob", '["viewer"]')):
                await conn.execute(text(
                    "INSERT INTO principals (id, account_id, name, roles, disabled, created_at, updated_at) "
                    f"VALUES ({pid}, 1, '{name}', '{roles}', false, '{now}', '{now}')"))
                await conn.execute(text(
                    "INSERT INTO api_tokens (principal_id, label, token_prefix, token_digest, created_at, updated_at) "
                    f"VALUES ({pid}, '{name}', 'fmcp_x', '{name * 8}', '{now}', '{now}')"))
        await anyio.to_thread.run_sync(migrate.upgrade, fresh_db_url, "head")
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT label, roles FROM api_tokens ORDER BY label"))).all()
    finally:
        await engine.dispose()
    got = {label: (json.loads(roles) if isinstance(roles, str) else roles) for label, roles in rows}
    assert got == {"alice": ["admin", "viewer"], "bob": ["viewer"]}
