"""Queued approvals under pressure: second person, exactly once, bound to the arguments, expiry."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select, update

from fleet_mcp.db.models import ApprovalRequest, AuditEntry, ProviderConfig
from tests.conftest import call_as, make_caller

pytestmark = pytest.mark.anyio
MATRIX = Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "gate-matrix.yaml"


@pytest.fixture
def settings(settings):  # noqa: ANN001
    return settings.model_copy(update={"policy": MATRIX})


@pytest.fixture
async def people(app):  # noqa: ANN001
    return {
        "olga": await make_caller(app, "acme", "olga", ("operator",)),
        "ben": await make_caller(app, "acme", "ben", ("approver",)),
        "bea": await make_caller(app, "acme", "bea", ("approver",)),
        "adam": await make_caller(app, "acme", "adam", ("admin",)),
        "vic": await make_caller(app, "acme", "vic", ("viewer",)),
    }


async def _provider(app, who) -> None:  # noqa: ANN001
    out = await call_as(app, who, "system_put_provider_config", {"name": "aws", "spec": {"provider": "aws"}})
    assert out.ok, out.message


async def _queue_delete(app, who) -> str:  # noqa: ANN001
    out = await call_as(app, who, "system_delete_provider_config", {"name": "aws"})
    assert not out.ok and out.data["status"] == "approval_required", out.message
    return out.data["approval_id"]


async def _count(app, model) -> int:  # noqa: ANN001
    async with app.sessionmaker() as s:
        return (await s.execute(select(func.count()).select_from(model))).scalar_one()


async def test_second_person_approves_and_it_runs_once(app, people) -> None:  # noqa: ANN001
    await _provider(app, people["olga"])
    aid = await _queue_delete(app, people["olga"])
    assert await _count(app, ProviderConfig) == 1
    out = await call_as(app, people["ben"], "system_approvals_decide",
                        {"approval_id": aid, "decision": "approve", "reason": "change ticket 42"})
    assert out.ok, out.message
    assert out.data["executed"] and out.data["approval"]["status"] == "executed"
    assert out.data["result"] == {"deleted": True, "kind": "provider_config", "name": "aws"}
    assert await _count(app, ProviderConfig) == 0
    got = await call_as(app, people["olga"], "system_approvals_get", {"approval_id": aid})
    assert got.data["approval"]["result"]["deleted"] is True
    # Deciding again never runs it again.
    again = await call_as(app, people["bea"], "system_approvals_decide",
                          {"approval_id": aid, "decision": "approve", "reason": "again"})
    assert not again.ok and "executed" in again.message
    async with app.sessionmaker() as s:
        linked = (await s.execute(select(AuditEntry).where(AuditEntry.approval_id == aid)
                                  .order_by(AuditEntry.seq))).scalars().all()
    steps = [(e.tool, e.outcome) for e in linked]
    assert ("system_delete_provider_config", "approval_required") in steps
    assert ("approval.decide", "recorded") in steps
    assert ("system_delete_provider_config", "ok") in steps
    executed = [e for e in linked if e.tool == "system_delete_provider_config" and e.outcome == "ok"][0]
    assert executed.principal == "acme/olga" and executed.decision == "approved"


async def test_requester_cannot_approve_own_request(app, people) -> None:  # noqa: ANN001
    await _provider(app, people["adam"])
    aid = await _queue_delete(app, people["adam"])
    # adam is admin (has the permission) but not in the rule's approvers; and he requested it.
    out = await call_as(app, people["adam"], "system_approvals_decide",
                        {"approval_id": aid, "decision": "approve", "reason": "self"})
    assert not out.ok and out.data["error"]["code"] == "permission_denied"
    assert await _count(app, ProviderConfig) == 1


async def test_separation_of_duties_refuses_self_approval(app) -> None:  # noqa: ANN001
    both = await make_caller(app, "acme", "pat", ("operator", "approver"))
    await _provider(app, both)
    aid = await _queue_delete(app, both)
    out = await call_as(app, both, "system_approvals_decide",
                        {"approval_id": aid, "decision": "approve", "reason": "self"})
    assert not out.ok and "separation of duties" in out.message
    assert await _count(app, ProviderConfig) == 1


async def test_viewer_cannot_decide(app, people) -> None:  # noqa: ANN001
    await _provider(app, people["olga"])
    aid = await _queue_delete(app, people["olga"])
    out = await call_as(app, people["vic"], "system_approvals_decide",
                        {"approval_id": aid, "decision": "approve", "reason": "x"})
    assert not out.ok and out.data["permission"] == "system.approvals.decide"


async def test_rejected_never_executes(app, people) -> None:  # noqa: ANN001
    await _provider(app, people["olga"])
    aid = await _queue_delete(app, people["olga"])
    out = await call_as(app, people["ben"], "system_approvals_decide",
                        {"approval_id": aid, "decision": "reject", "reason": "not today"})
    assert out.ok and out.data["approval"]["status"] == "rejected"
    out = await call_as(app, people["bea"], "system_approvals_decide",
                        {"approval_id": aid, "decision": "approve", "reason": "override?"})
    assert not out.ok
    assert await _count(app, ProviderConfig) == 1


async def test_expired_never_executes_and_is_swept(app, people) -> None:  # noqa: ANN001
    await _provider(app, people["olga"])
    aid = await _queue_delete(app, people["olga"])
    async with app.sessionmaker() as s, s.begin():
        await s.execute(update(ApprovalRequest).where(ApprovalRequest.id == aid)
                        .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    out = await call_as(app, people["ben"], "system_approvals_decide",
                        {"approval_id": aid, "decision": "approve", "reason": "late"})
    assert not out.ok and "expired" in out.message
    listed = await call_as(app, people["olga"], "system_approvals_list", {"status": "expired"})
    assert [a["id"] for a in listed.data["approvals"]] == [aid]
    assert await _count(app, ProviderConfig) == 1


async def test_two_approvers_at_the_same_moment_execute_once(app, people) -> None:  # noqa: ANN001
    await _provider(app, people["olga"])
    aid = await _queue_delete(app, people["olga"])
    results = []

    async def decide(who: str) -> None:
        results.append(await call_as(app, people[who], "system_approvals_decide",
                                     {"approval_id": aid, "decision": "approve", "reason": who}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(decide, "ben")
        tg.start_soon(decide, "bea")
    assert sorted(r.ok for r in results) == [False, True]
    async with app.sessionmaker() as s:
        runs = (await s.execute(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.approval_id == aid, AuditEntry.tool == "system_delete_provider_config",
            AuditEntry.outcome == "ok"))).scalar_one()
    assert runs == 1


async def test_min_approvals_two(app, people) -> None:  # noqa: ANN001
    for kind, name, spec in (("template", "web", {}), ("module", "nginx", {"variety": "role"})):
        assert (await call_as(app, people["olga"], f"system_put_{kind}", {"name": name, "spec": spec})).ok
    out = await call_as(app, people["olga"], "system_assign_module_to_template",
                        {"template": "web", "module": "nginx", "enabled": False})
    aid = out.data["approval_id"]
    first = await call_as(app, people["ben"], "system_approvals_decide",
                          {"approval_id": aid, "decision": "approve", "reason": "1"})
    assert first.ok and not first.data["executed"] and first.data["approval"]["status"] == "pending"
    second = await call_as(app, people["adam"], "system_approvals_decide",
                           {"approval_id": aid, "decision": "approve", "reason": "2"})
    assert second.ok and second.data["executed"], second.message
    assert second.data["result"]["assignment"]["spec"]["enabled"] is False


async def test_an_approval_never_runs_other_arguments(app, people) -> None:  # noqa: ANN001
    await _provider(app, people["olga"])
    assert (await call_as(app, people["olga"], "system_put_provider_config",
                          {"name": "gcp", "spec": {"provider": "gcp"}})).ok
    aid = await _queue_delete(app, people["olga"])
    # Tamper: point the request's digest at other arguments (what a replay with changed args would need).
    from fleet_mcp.audit import arguments_digest

    async with app.sessionmaker() as s, s.begin():
        await s.execute(update(ApprovalRequest).where(ApprovalRequest.id == aid)
                        .values(args_digest=arguments_digest({"name": "gcp"})))
    out = await call_as(app, people["ben"], "system_approvals_decide",
                        {"approval_id": aid, "decision": "approve", "reason": "ok"})
    # The decision is recorded; the run is refused and recorded as such, and nothing was deleted.
    assert out.ok and not out.data["executed"], out.data
    assert out.data["approval"]["status"] == "refused" and "digest" in out.data["approval"]["result"]["error"]
    assert out.data["result"]["status"] == "denied"
    assert await _count(app, ProviderConfig) == 2


async def test_queued_arguments_are_not_stored_in_plaintext(app, people) -> None:  # noqa: ANN001
    await _provider(app, people["olga"])
    aid = await _queue_delete(app, people["olga"])
    async with app.sessionmaker() as s:
        req = (await s.execute(select(ApprovalRequest).where(ApprovalRequest.id == aid))).scalar_one()
    assert req.arguments_masked == {"name": "aws"}
    assert "aws" not in req.arguments_sealed


async def test_listing_pages_through_every_request_and_says_how_many(app, people) -> None:  # noqa: ANN001
    """The list is paged (limit/offset, newest first) and says how many match: nothing is cut off silently
    (it used to stop at 100 with count=100), and the console's inbox pages over all of them."""
    queued = [(await call_as(app, people["olga"], "system_delete_provider_config", {"name": f"p{i:03d}"}))
              .data["approval_id"] for i in range(130)]
    out = await call_as(app, people["ben"], "system_approvals_list", {"status": "pending"})
    assert out.ok and (out.data["count"], out.data["total"], out.data["next_offset"]) == (100, 130, 100)
    seen: list[str] = []
    offset = 0
    while offset is not None:
        page = await call_as(app, people["ben"], "system_approvals_list",
                             {"status": "pending", "limit": 50, "offset": offset})
        assert page.ok and page.data["total"] == 130 and page.data["count"] == len(page.data["approvals"])
        seen += [a["id"] for a in page.data["approvals"]]
        offset = page.data["next_offset"]
    assert seen == list(reversed(queued))  # newest first, each exactly once
    bad = await call_as(app, people["ben"], "system_approvals_list", {"limit": 0})
    assert not bad.ok and bad.data["status"] == "invalid_arguments"

    from fleet_mcp.console import views
    from fleet_mcp.console.app import Calls, Console

    console = Console(app, app.gate)
    last = await views.inbox(Calls(console, people["ben"]), 3)
    assert last["pager"] == {"page": 3, "pages": 3, "total": 130}
    assert [a["id"] for a in last["approvals"]] == list(reversed(queued))[100:]
    beyond = await views.inbox(Calls(console, people["ben"]), 9)
    assert beyond["pager"]["page"] == 3 and len(beyond["approvals"]) == 30
