"""The console's HTTP surface without a browser (the ASGI app in-process over httpx's ASGI transport):
confirmation answers, digests, replays, Host checks, session storage, and the vendored htmx file."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import func, select

from fleet_mcp.console.models import ConsoleSession
from fleet_mcp.db.models import AuditEntry
from tests.conftest import make_caller

pytestmark = pytest.mark.anyio
HOST = "127.0.0.1:8765"


@pytest.fixture
async def ui(app):  # noqa: ANN001
    from fleet_mcp import principals
    from fleet_mcp.console.app import build_console

    await make_caller(app, "acme", "olga", ("operator",))
    async with app.unit_of_work() as uow:
        token = await principals.create_token(uow.session, account="acme", label="olga-ui", roles=["operator"],
                                              principal="olga", actor=principals.Actor("acme/test", "acme"))
    asgi = build_console(app, app.gate, {HOST})
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=asgi), base_url=f"http://{HOST}") as c:
        page = await c.get("/ui/login")
        pre = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = await c.post("/ui/login", data={"csrf": pre, "token": token, "next": "/ui/"},
                         headers={"Origin": f"http://{HOST}"})
        assert r.status_code == 303, r.text
        inbox = await c.get("/ui/")
        c.csrf = re.search(r'name="csrf" value="([^"]+)"', inbox.text).group(1)
        yield c


def _hidden(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


async def _rows(app, tool: str) -> list[tuple[str, str]]:  # noqa: ANN001
    async with app.sessionmaker() as s:
        rows = (await s.execute(select(AuditEntry.decision, AuditEntry.outcome).where(AuditEntry.tool == tool)
                                .order_by(AuditEntry.seq))).all()
    return [tuple(r) for r in rows]


async def _ask_delete(app, ui) -> dict[str, str]:  # noqa: ANN001
    """A call the default policy sends to a person: the console answers with the confirmation page."""
    from tests.conftest import call_as

    olga = await make_caller(app, "acme", "olga", ("operator",))
    out = await call_as(app, olga, "system_put_provider_config", {"name": "aws", "spec": {"provider": "aws"}})
    assert out.ok, out.message
    r = await ui.post("/ui/call/system_delete_provider_config", data={"csrf": ui.csrf, "name": "aws",
                                                                      "_next": "/ui/"})
    assert r.status_code == 200 and "Approve and run" in r.text
    assert "Delete" in r.text or "delete" in r.text
    return _hidden(r.text.split('name="_confirm" value="accept"')[0].rsplit("<form", 1)[1] +
                   r.text.split('name="_confirm" value="accept"')[1].split("</form>")[0]) | {"_confirm": "accept"}


async def test_changed_arguments_after_confirmation_are_refused(app, ui) -> None:  # noqa: ANN001
    answer = await _ask_delete(app, ui)
    answer["name"] = "something-else"
    r = await ui.post("/ui/call/system_delete_provider_config", data=answer)
    assert r.status_code == 409 and "not the ones you confirmed" in r.text
    assert await _rows(app, "system_delete_provider_config") == []


async def test_accept_runs_once_and_a_replayed_answer_is_refused(app, ui) -> None:  # noqa: ANN001
    answer = await _ask_delete(app, ui)
    r = await ui.post("/ui/call/system_delete_provider_config", data=answer)
    assert r.status_code == 200 and "ran." in r.text, r.text
    again = await ui.post("/ui/call/system_delete_provider_config", data=answer)
    assert again.status_code == 403 and "single-use" in again.text
    assert await _rows(app, "system_delete_provider_config") == [("approved_by_elicitation", "ok"),
                                                                 ("require_approval", "replay_refused")]


async def test_decline_and_queue_answers(app, ui) -> None:  # noqa: ANN001
    answer = await _ask_delete(app, ui)
    r = await ui.post("/ui/call/system_delete_provider_config", data={**answer, "_confirm": "decline"})
    assert "declined" in r.text
    r = await ui.post("/ui/call/system_delete_provider_config", data={**answer, "_confirm": "queue"})
    assert "Queued for approval" in r.text
    assert await _rows(app, "system_delete_provider_config") == [("require_approval", "declined"),
                                                                 ("require_approval", "approval_required")]


async def test_unknown_host_is_refused(ui) -> None:  # noqa: ANN001
    r = await ui.get("/ui/", headers={"Host": "evil.example"})
    assert r.status_code == 421


async def test_sessions_are_stored_as_digests_and_sign_out_deletes_them(app, ui) -> None:  # noqa: ANN001
    secret = ui.cookies["fleet_console"]
    async with app.sessionmaker() as s:
        ids = (await s.execute(select(ConsoleSession.id))).scalars().all()
    assert ids == [hashlib.sha256(secret.encode()).hexdigest()]
    r = await ui.post("/ui/logout", data={"csrf": ui.csrf})
    assert r.status_code == 303
    async with app.sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(ConsoleSession))).scalar_one() == 0
    ui.cookies.set("fleet_console", secret, domain=HOST.split(":")[0], path="/ui/")
    r = await ui.get("/ui/")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    live = await ui.get("/ui/inbox/fragment", headers={"HX-Request": "true"})
    assert live.headers["hx-redirect"] == "/ui/login" and live.text == ""


async def test_unknown_token_cannot_sign_in(app, ui) -> None:  # noqa: ANN001
    page = await ui.get("/ui/login")
    pre = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = await ui.post("/ui/login", data={"csrf": pre, "token": "fmcp_nope_nope"})
    assert r.status_code == 401 and "unknown bearer token" in r.text


def test_vendored_htmx_matches_its_recorded_checksum() -> None:
    static = Path(__file__).resolve().parents[2] / "src" / "fleet_mcp" / "console" / "static"
    recorded = re.search(r"sha256 ([0-9a-f]{64})", (static / "HTMX_VERSION").read_text()).group(1)
    assert hashlib.sha256((static / "htmx.min.js").read_bytes()).hexdigest() == recorded


async def test_proposal_page_marks_stale_when_live_state_moved(app, ui, tmp_path) -> None:  # noqa: ANN001
    from tests.conftest import call_as
    from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo

    olga = await make_caller(app, "acme", "olga", ("operator",))
    repo = FleetRepo(tmp_path / "repo")
    repo.commit({"fleet.yaml": BASE_FLEET})
    reg = await call_as(app, olga, "system_gitops_register_repository", {"name": "fleet", "repo_url": repo.url})
    run = await call_as(app, olga, "system_gitops_sync_repository", {"repository_id": reg.data["repository"]["id"]})
    proposals = (await call_as(app, olga, "system_gitops_list_proposals", {})).data["proposals"]
    web = next(p for p in proposals if p["kind"] == "template" and p["name"] == "web")
    db = next(p for p in proposals if p["kind"] == "template" and p["name"] == "db")
    assert run.ok
    fresh = await ui.get(f"/ui/gitops/proposals/{web['id']}")
    assert fresh.status_code == 200 and 'id="stale-badge"' not in fresh.text
    moved = await call_as(app, olga, "system_put_template", {"name": "web", "spec": {"description": "by hand"}})
    assert moved.ok, moved.message
    stale = await ui.get(f"/ui/gitops/proposals/{web['id']}")
    assert 'id="stale-badge"' in stale.text and "live state moved" in stale.text
    untouched = await ui.get(f"/ui/gitops/proposals/{db['id']}")
    assert 'id="stale-badge"' not in untouched.text


async def test_inbox_pages_fifty_at_a_time(app, ui) -> None:  # noqa: ANN001
    from tests.conftest import call_as

    adam = await make_caller(app, "acme", "adam", ("admin",))
    for _ in range(60):
        out = await call_as(app, adam, "system_rotate_vault_transit_pepper", {})
        assert out.data["status"] == "approval_required", out.message
    first = await ui.get("/ui/")
    assert first.text.count('id="row-apr_') == 50 and "page 1 of 2" in first.text
    second = await ui.get("/ui/?page=2")
    assert second.text.count('id="row-apr_') == 10 and "page 2 of 2" in second.text
    # olga (operator) may neither approve nor withdraw someone else's request
    assert "Approve</button>" not in first.text and "Withdraw</button>" not in first.text
    fragment = await ui.get("/ui/inbox/fragment?page=2")
    assert fragment.text.startswith('<div id="inbox"') and fragment.text.count('id="row-apr_') == 10


async def test_suppress_from_the_drift_page_and_events(app, ui, tmp_path) -> None:  # noqa: ANN001
    from tests.conftest import call_as
    from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo

    olga = await make_caller(app, "acme", "olga", ("operator",))
    repo = FleetRepo(tmp_path / "repo")
    repo.commit({"fleet.yaml": BASE_FLEET})
    rid = (await call_as(app, olga, "system_gitops_register_repository",
                         {"name": "fleet", "repo_url": repo.url})).data["repository"]["id"]
    run = (await call_as(app, olga, "system_gitops_sync_repository", {"repository_id": rid})).data["sync_run"]
    applied = await call_as(app, olga, "system_gitops_apply_sync_run", {"sync_run_id": run["id"]},
                            can_elicit=True, elicited="accept")
    assert applied.ok, applied.message
    await call_as(app, olga, "system_put_template", {"name": "web", "spec": {"description": "by hand"}})
    drift = await ui.get(f"/ui/gitops/repositories/{rid}/drift")
    assert drift.status_code == 200 and "resources differ from git" in drift.text
    r = await ui.post("/ui/call/system_gitops_suppress_drift", data={
        "csrf": ui.csrf, "kind": "template", "name": "web", "reason": "hand-tuned during the incident",
        "until": "", "_next": f"/ui/gitops/repositories/{rid}/drift"})
    # Suppressing drift hides a live change from GitOps review: the shipped policy asks a person first, and
    # the console is that person's client — it shows the confirmation, and the answer runs it.
    assert r.status_code == 200 and "Approve and run" in r.text, r.text
    answer = _hidden(r.text.split('name="_confirm" value="accept"')[0].rsplit("<form", 1)[1] +
                     r.text.split('name="_confirm" value="accept"')[1].split("</form>")[0]) | {"_confirm": "accept"}
    r = await ui.post("/ui/call/system_gitops_suppress_drift", data=answer)
    assert r.status_code == 200 and "ran." in r.text, r.text
    after = await ui.get(f"/ui/gitops/repositories/{rid}/drift")
    assert "Suppressed" in after.text and "hand-tuned during the incident" in after.text
    events = await ui.get("/ui/events")
    assert "gitops.drift_suppressed" in events.text
    only = await ui.get("/ui/events?kind=gitops.drift_suppressed")
    assert only.text.count("<code>gitops.drift_suppressed</code>") == 1
