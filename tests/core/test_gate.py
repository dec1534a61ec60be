"""The gate's decision matrix: permission, deny, elicitation accept/decline, queue, fail-closed."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client
from mcp_types import ElicitResult
from sqlalchemy import func, select

from fleet_mcp.db.models import AuditEntry, Template
from fleet_mcp.server import build_server
from tests.conftest import call_as, make_caller

pytestmark = pytest.mark.anyio
MATRIX = Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "gate-matrix.yaml"


@pytest.fixture
def settings(settings):  # noqa: ANN001
    return settings.model_copy(update={"policy": MATRIX})


async def _count(app, model) -> int:  # noqa: ANN001
    async with app.sessionmaker() as s:
        return (await s.execute(select(func.count()).select_from(model))).scalar_one()


async def _seed(client) -> None:  # noqa: ANN001
    r = await client.call_tool("system_put_template", {"name": "web", "spec": {}})
    assert not r.is_error, r.content


def _answer(action: str, approve: bool = True):
    async def cb(_ctx, params):  # noqa: ANN001
        _answer.asked.append(params.message)
        return ElicitResult(action=action, content={"approve": approve} if action == "accept" else None)

    return cb


_answer.asked = []


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_elicit_accept_runs_once(app, mode: str) -> None:  # noqa: ANN001
    server, _ = build_server(app)
    _answer.asked.clear()
    async with Client(server, elicitation_callback=_answer("accept"), mode=mode) as c:
        await _seed(c)
        r = await c.call_tool("system_delete_template", {"name": "web"})
    assert not r.is_error, r.content
    assert r.structured_content == {"deleted": True, "kind": "template", "name": "web"}
    assert len(_answer.asked) == 1 and "system_delete_template" in _answer.asked[0]
    assert await _count(app, Template) == 0
    async with app.sessionmaker() as s:
        row = (await s.execute(select(AuditEntry).where(AuditEntry.tool == "system_delete_template"))).scalar_one()
    assert row.decision == "approved_by_elicitation" and row.outcome == "ok"


@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_elicit_decline_runs_nothing(app, action: str) -> None:  # noqa: ANN001
    server, _ = build_server(app)
    async with Client(server, elicitation_callback=_answer(action)) as c:
        await _seed(c)
        r = await c.call_tool("system_delete_template", {"name": "web"})
    assert r.is_error and r.structured_content["status"] == "declined"
    assert await _count(app, Template) == 1


async def test_accept_with_approve_false_is_a_decline(app) -> None:  # noqa: ANN001
    server, _ = build_server(app)
    async with Client(server, elicitation_callback=_answer("accept", approve=False)) as c:
        await _seed(c)
        r = await c.call_tool("system_delete_template", {"name": "web"})
    assert r.is_error and r.structured_content["status"] == "declined"
    assert await _count(app, Template) == 1


async def test_no_elicitation_capability_queues(client, app) -> None:  # noqa: ANN001
    await _seed(client)
    r = await client.call_tool("system_delete_template", {"name": "web"})
    assert r.is_error
    sc = r.structured_content
    assert sc["status"] == "approval_required" and sc["approval_id"].startswith("apr_")
    assert sc["rule"] == "delete-template-elicit-or-queue"
    assert await _count(app, Template) == 1


async def test_elicit_only_without_capability_is_denied(client, app) -> None:  # noqa: ANN001
    r = await client.call_tool("system_put_module", {"name": "nginx", "spec": {"variety": "role"}})
    assert not r.is_error
    r = await client.call_tool("system_delete_module", {"name": "nginx"})
    assert r.is_error and r.structured_content["status"] == "denied"
    assert r.structured_content["rule"] == "delete-module-elicit-only"


async def test_deny_rule_and_audit_row(client, app) -> None:  # noqa: ANN001
    r = await client.call_tool("system_unassign_module_from_template", {"template": "a", "module": "b"})
    assert r.is_error and r.structured_content == {"status": "denied", "rule": "deny-unassign",
                                                   "reason": r.structured_content["reason"]}
    async with app.sessionmaker() as s:
        row = (await s.execute(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1))).scalar_one()
    assert row.tool == "system_unassign_module_from_template" and row.outcome == "denied"


async def test_missing_permission_names_it(app) -> None:  # noqa: ANN001
    viewer = await make_caller(app, "acme", "vic", ("viewer",))
    out = await call_as(app, viewer, "system_put_template", {"name": "web", "spec": {}})
    assert not out.ok and out.data["status"] == "denied" and out.data["permission"] == "system.fleet.write"
    assert "system.fleet.write" in out.message
    assert await _count(app, Template) == 0


async def test_invalid_arguments_are_clear_and_write_nothing(client, app) -> None:  # noqa: ANN001
    r = await client.call_tool("system_put_template", {"name": "web", "spec": {"instance_type": 5}})
    assert r.is_error and "spec.instance_type" in r.content[0].text
    r = await client.call_tool("system_put_template", {"name": "web", "spec": {}, "surprise": 1})
    assert r.is_error and "surprise" in r.content[0].text
    r = await client.call_tool("system_put_template", {"name": "../etc", "spec": {}})
    assert r.is_error and "invalid template name" in r.content[0].text
    assert await _count(app, Template) == 0
    assert "Traceback" not in r.content[0].text


async def test_unknown_tool_in_policy_catalog_is_denied(app) -> None:  # noqa: ANN001
    d = app.policy.current.decide("system_does_not_exist", {})
    assert d.decision == "deny"


async def test_elicited_approval_is_single_use(app) -> None:  # noqa: ANN001
    """On 2026-07-28 the answer rides request_state; resending it must not run the operation again."""
    from mcp_types import InputRequiredResult

    server, _ = build_server(app)
    async with Client(server, elicitation_callback=_answer("accept")) as c:
        await _seed(c)
        first = await c.session.call_tool("system_delete_template", {"name": "web"}, allow_input_required=True)
        assert isinstance(first, InputRequiredResult)
        responses = {k: ElicitResult(action="accept", content={"approve": True}) for k in first.input_requests}
        r1 = await c.session.call_tool("system_delete_template", {"name": "web"}, input_responses=responses,
                                       request_state=first.request_state)
        assert not r1.is_error, r1.content
        await _seed(c)
        r2 = await c.session.call_tool("system_delete_template", {"name": "web"}, input_responses=responses,
                                       request_state=first.request_state)
        assert r2.is_error and "single-use" in r2.content[0].text
    assert await _count(app, Template) == 1


async def test_identical_later_calls_are_asked_again_not_refused_as_replays(app) -> None:  # noqa: ANN001
    """Single use binds to one sealed answer, not to the question's text: the same call made again later
    (with a fresh question and a fresh answer) runs; resending an old answer is still refused (above)."""
    server, _ = build_server(app)
    _answer.asked.clear()
    async with Client(server, elicitation_callback=_answer("accept")) as c:
        for _ in range(3):
            await _seed(c)
            r = await c.call_tool("system_delete_template", {"name": "web"})
            assert not r.is_error, r.content
            assert await _count(app, Template) == 0
    assert len(_answer.asked) == 3


async def test_the_same_question_from_another_account_is_not_a_replay(app) -> None:  # noqa: ANN001
    from fleet_mcp.approvals import elicited_id
    from fleet_mcp.server import elicitation_key

    alice = await make_caller(app, "acme", "alice", ("admin",))
    gary = await make_caller(app, "globex", "gary", ("admin",))
    # One sealed answer instance seen by two callers gives two different single-use keys.
    assert elicited_id(elicitation_key("sealed-1", alice)) != elicited_id(elicitation_key("sealed-1", gary))
    assert elicitation_key("sealed-1", alice) != elicitation_key("sealed-2", alice)
