"""Console: the inbox with 1,000 pending requests and a proposal with a 1,000-field diff, server time against
bare Jinja2 rendering of the same rows."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RunContext, median

NAME = "console"
TITLE = "Operator console"
DESCRIPTION = (
    "The console's ASGI app in-process (`fleet_mcp.console.app.build_console`, shipped default policy, SQLite), "
    "one signed-in session, each request timed from the first ASGI byte to the last: session and token check, "
    "the page's tool calls through the gate (each with its audit row), permission/policy checks for buttons, "
    "template rendering. Inbox: 1,000 pending rotation requests queued through the gate; the page shows the "
    "first 50, asking the gate for that one page (`system_approvals_list` with limit/offset), so the cost does not "
    "grow with the queue. Proposal: a template whose "
    "metadata has 1,000 keys, synced from a real git repository (one create proposal with 1,000 field "
    "changes), shown whole. Floor, same run: the same rows read with raw sqlite3 from the same database file "
    "(one SELECT, JSON decoded) and rendered by a bare Jinja2 template (autoescape on), without the console's "
    "layout, session, checks, gate or audit rows. The *template alone* rows time the console's own template "
    "against the bare one on the same data."
)
TARGET = ("<=", 3.0)

BARE_INBOX = """<table>{% for a in rows %}<tr><td>{{ a.id }}</td><td>{{ a.tool }}</td><td>{{ a.requested_by }}</td>
<td>{{ a.rule }}</td><td>{{ a.summary }}</td><td>{{ a.created_at }}</td><td>{{ a.expires_at }}</td>
<td>0 / {{ a.min_approvals }}</td><td><form method="post"><input name="reason"><button>Approve</button>
<button>Reject</button></form></td></tr>{% endfor %}</table>"""
BARE_DIFF = """<table>{% for f in rows %}<tr><th>{{ f.path }}</th><td>{{ f.live }}</td><td>{{ f.desired }}</td></tr>
{% endfor %}</table>"""


async def _get(asgi: Any, path: str, cookie: str) -> tuple[int, bytes, float]:
    """One GET through the ASGI app; the time covers the whole request."""
    chunks: list[bytes] = []
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    path_only, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path_only, "raw_path": path_only.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8765"), (b"cookie", f"fleet_console={cookie}".encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8765)}
    t0 = time.perf_counter()
    await asgi(scope, receive, send)
    return status, b"".join(chunks), time.perf_counter() - t0


def _fleet_yaml(keys: int) -> str:
    meta = {f"k{i:04d}": f"value number {i} <with> \"markup\"" for i in range(keys)}
    return "templates:\n  big:\n    description: a template with many metadata keys\n    metadata: " + \
        json.dumps(meta) + "\n"


def _git_repo(path: Path, content: str) -> str:
    env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(path.parent), "PATH": "/usr/bin:/bin"}
    path.mkdir(parents=True)
    for cmd in (["init", "-q", "-b", "main"],):
        subprocess.run(["git", "-C", str(path), *cmd], check=True, env=env)
    (path / "fleet.yaml").write_text(content)
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", "big"], check=True, env=env)
    return str(path)


async def run(ctx: RunContext) -> None:
    from jinja2 import Environment

    from fleet_mcp import principals
    from fleet_mcp.app import App
    from fleet_mcp.console import views
    from fleet_mcp.console.app import Calls, Console, build_console
    from fleet_mcp.console.sessions import SessionStore
    from fleet_mcp.registry import load_tools
    from fleet_mcp.settings import Settings

    pending = 1000
    fields = 1000
    reps = ctx.reps(5, 15)
    data_dir = ctx.tmp / "data"
    app = App(Settings(data_dir=data_dir, allow_local_repos=True, scheduler=False, log_level="WARNING",
                       account="acme", principal="adam", roles="admin"))
    await app.start()
    try:
        gate = app.gate
        tools = load_tools()
        actor = principals.Actor(qualified="acme/adam", account="acme", via="benchmark")
        async with app.unit_of_work() as uow:
            await principals.create_token(uow.session, account="acme", label="ben", roles=["approver"],
                                          principal="ben", actor=actor)
            token = await principals.create_token(uow.session, account="acme", label="ben-ui", roles=["approver"],
                                                  principal="ben", actor=actor)
        assert app.stdio_caller is not None
        t0 = time.perf_counter()
        for _ in range(pending):
            out = await gate.call(tools["system_rotate_vault_transit_pepper"], app.stdio_caller, {})
            assert out.data.get("status") == "approval_required", out.message
        ctx.facts["queue_setup_s"] = round(time.perf_counter() - t0, 1)
        repo = _git_repo(ctx.tmp / "repo", _fleet_yaml(fields))
        out = await gate.call(tools["system_gitops_register_repository"], app.stdio_caller,
                              {"name": "big", "repo_url": repo})
        assert out.ok, out.message
        out = await gate.call(tools["system_gitops_sync_repository"], app.stdio_caller,
                              {"repository_id": out.data["repository"]["id"]})
        assert out.ok, out.message
        proposal_id = out.data["sync_run"]["proposal_ids"][0]

        secret, ben = await SessionStore(app).sign_in_with_token(token)
        asgi = build_console(app, gate, {"127.0.0.1:8765"})
        console = Console(app, gate)
        env = Environment(autoescape=True)

        # Inbox.
        status, body, _ = await _get(asgi, "/ui/", secret)
        assert status == 200 and body.count(b'id="row-apr_') == 50, (status, body[:300])
        server = median([(await _get(asgi, "/ui/", secret))[2] for _ in range(reps)])
        listed = (await gate.call(tools["system_approvals_list"], ben, {"status": "pending", "limit": 50})
                  ).data["approvals"]
        bare = env.from_string(BARE_INBOX)
        db = sqlite3.connect(data_dir / "fleet.db")
        db.row_factory = sqlite3.Row

        def raw_inbox() -> str:
            rows = [dict(r) for r in db.execute(
                "SELECT id, tool, requested_by, rule, summary, created_at, expires_at, min_approvals "
                "FROM approval_requests WHERE status = 'pending' ORDER BY created_at DESC, id DESC LIMIT 50")]
            assert len(rows) == len(listed) == 50
            return bare.render(rows=rows)

        floor = median([_timed(raw_inbox) for _ in range(reps)])
        render_floor = median([_timed(lambda: bare.render(rows=listed)) for _ in range(reps)])
        ctx.add("inbox.1000", f"inbox page, {pending:,} pending requests (50 shown)", server, "s", floor=floor,
                floor_label="raw sqlite3 read + bare Jinja2, same 50 rows", target=TARGET, size=pending)
        await _parts(ctx, console, ben, "inbox", views.inbox(Calls(console, ben), 1), "inbox.html", render_floor,
                     reps, lambda: views.inbox(Calls(console, ben), 1))

        # Proposal with a 1,000-field diff.
        path = f"/ui/gitops/proposals/{proposal_id}"
        status, body, _ = await _get(asgi, path, secret)
        assert status == 200 and body.count(b'class="field"') == fields + 1, (status, body.count(b'class="field"'))
        server = median([(await _get(asgi, path, secret))[2] for _ in range(reps)])
        rows = (await gate.call(tools["system_gitops_get_proposal"], ben, {"proposal_id": proposal_id})
                ).data["proposal"]["fields"]
        bare = env.from_string(BARE_DIFF)

        def raw_proposal() -> str:
            (fields_json,) = db.execute("SELECT fields FROM gitops_proposals WHERE id = ?", (proposal_id,)).fetchone()
            return bare.render(rows=json.loads(fields_json))

        floor = median([_timed(raw_proposal) for _ in range(reps)])
        render_floor = median([_timed(lambda: bare.render(rows=rows)) for _ in range(reps)])
        db.close()
        ctx.add("proposal.1000", f"proposal page, {len(rows):,}-field diff", server, "s", floor=floor,
                floor_label="raw sqlite3 read + bare Jinja2, same field rows", target=TARGET, size=len(rows))
        await _parts(ctx, console, ben, "proposal", None, "gitops_proposal.html", render_floor, reps,
                     lambda: views.proposal(Calls(console, ben), proposal_id, False))
    finally:
        await app.close()


async def _parts(ctx: RunContext, console: Any, caller: Any, page: str, first: Any, template: str, floor: float,
                 reps: int, gather: Any) -> None:
    """Where a page's time goes: its tool calls through the gate, then the console's template alone."""
    if first is not None:
        first.close()
    calls_t, data = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        data = await gather()
        calls_t.append(time.perf_counter() - t0)
    ctx.add(f"{page}.calls", f"{page} page: its tool calls through the gate (with audit rows)", median(calls_t),
            "s", note="part of the server time above")
    assert data is not None
    render = median([_timed(lambda: console.render(template, me=caller, csrf="x", path="/ui/", section=page, **data))
                     for _ in range(reps)])
    ctx.add(f"{page}.render", f"{page} page: console template alone, same data", render, "s", floor=floor,
            floor_label="bare Jinja2, same rows", target=TARGET)


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
