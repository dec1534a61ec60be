"""Issue 11: a queued or in-client approval of a call with a `prepare` step (sync, drift report) never waits
on a lock its own unit of work holds; nothing commits outside the call's unit of work."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fleet_mcp.db.uow import ReentrantUnitOfWork
from fleet_mcp.policy.watcher import PolicyHolder
from fleet_mcp.registry import catalog
from tests.conftest import call_as, make_caller
from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo

pytestmark = pytest.mark.anyio

POLICIES = Path(__file__).resolve().parents[2] / "src" / "fleet_mcp" / "policies"
#: Every call is a hang guard, not a timing assertion: before the fix these calls never returned.
HANG = 120.0

GATED = """
version: 1
default: deny
rules:
  - name: reads-that-fetch
    match: {tools: [system_gitops_sync_repository, system_gitops_get_drift_report]}
    decision: require_approval
    approval: {mode: MODE, approvers: [approver, admin], separation_of_duties: SOD}
  - name: decide
    match: {tools: [system_approvals_decide]}
    decision: auto_approve
  - name: rest
    match: {tools: ["*"]}
    decision: auto_approve
"""


def _use_policy(app: Any, path: Path) -> None:
    app.policy = PolicyHolder(path, catalog())


async def _setup(app: Any, tmp_path: Path) -> tuple[Any, Any, int]:
    olga = await make_caller(app, "acme", "olga", ("operator",))
    ben = await make_caller(app, "acme", "ben", ("approver",))
    repo = FleetRepo(tmp_path / "fleet-src")
    repo.commit({"fleet.yaml": BASE_FLEET}, "initial fleet")
    out = await call_as(app, olga, "system_gitops_register_repository", {"name": "fleet", "repo_url": repo.url})
    assert out.ok, out.message
    return olga, ben, out.data["repository"]["id"]


async def _approve_from_queue(app: Any, requester: Any, approver: Any, tool: str, args: dict[str, Any]) -> Any:
    queued = await asyncio.wait_for(call_as(app, requester, tool, args), HANG)
    if queued.ok or queued.data.get("status") != "approval_required":
        return queued  # the policy let it run (or denied it) without a queue
    decided = await asyncio.wait_for(
        call_as(app, approver, "system_approvals_decide",
                {"approval_id": queued.data["approval_id"], "decision": "approve", "reason": "looks right"}), HANG)
    assert decided.ok, decided.message
    assert decided.data["executed"], decided.data
    assert decided.data["approval"]["status"] == "executed", decided.data
    return decided


@pytest.mark.parametrize("policy", ["default.yaml", "strict.yaml", "read-only.yaml"])
async def test_shipped_policies_approve_sync_and_drift_without_deadlock(app, tmp_path, policy) -> None:  # noqa: ANN001
    olga, ben, repo_id = await _setup(app, tmp_path)
    _use_policy(app, POLICIES / policy)
    for tool in ("system_gitops_sync_repository", "system_gitops_get_drift_report"):
        out = await _approve_from_queue(app, olga, ben, tool, {"repository_id": repo_id})
        assert out.data.get("status") != "error", out.message
        # And the in-client path: the same call answered "accept" by the human at the client.
        elicited = await asyncio.wait_for(
            call_as(app, olga, tool, {"repository_id": repo_id}, can_elicit=True, elicited="accept"), HANG)
        assert elicited.data.get("status") != "error", elicited.message
    # The process's writers are not stalled behind a leaked lock: a plain write still goes through.
    put = await asyncio.wait_for(call_as(app, olga, "system_put_template", {"name": "t9", "spec": {}}), HANG)
    assert put.ok or put.data.get("status") in ("approval_required", "denied"), put.message


@pytest.mark.parametrize("mode", ["queue", "elicit_or_queue"])
async def test_gated_sync_and_drift_run_once_approved(app, tmp_path, mode) -> None:  # noqa: ANN001
    olga, ben, repo_id = await _setup(app, tmp_path)
    policy = tmp_path / "gated.yaml"
    policy.write_text(GATED.replace("MODE", mode).replace("SOD", "true" if mode == "queue" else "false"))
    _use_policy(app, policy)
    if mode == "queue":
        synced = await _approve_from_queue(app, olga, ben, "system_gitops_sync_repository", {"repository_id": repo_id})
        assert synced.data["result"]["sync_run"]["status"] == "success", synced.data
        drift = await _approve_from_queue(app, olga, ben, "system_gitops_get_drift_report", {"repository_id": repo_id})
        assert drift.data["result"]["diff_count"] == synced.data["result"]["sync_run"]["diff_count"], drift.data
    else:
        synced = await asyncio.wait_for(call_as(app, olga, "system_gitops_sync_repository", {"repository_id": repo_id},
                                                can_elicit=True, elicited="accept"), HANG)
        assert synced.ok and synced.data["sync_run"]["status"] == "success", synced.message
        drift = await asyncio.wait_for(call_as(app, olga, "system_gitops_get_drift_report",
                                               {"repository_id": repo_id}, can_elicit=True, elicited="accept"), HANG)
        assert drift.ok and drift.data["diff_count"] == synced.data["sync_run"]["diff_count"], drift.message


async def test_a_second_write_transaction_inside_a_unit_of_work_fails_at_once(app) -> None:  # noqa: ANN001
    """The seam itself: a holder that opens another write transaction gets an error, never a wait."""
    from sqlalchemy import text

    async with app.unit_of_work() as uow:
        await uow.session.execute(text("SELECT 1"))
        with pytest.raises(ReentrantUnitOfWork):
            async with app.unit_of_work():
                pass
        with pytest.raises(ReentrantUnitOfWork):
            async with app.sessionmaker() as other, other.begin():
                await asyncio.wait_for(other.execute(text("SELECT 1")), HANG)


async def test_after_commit_hooks_run_only_after_commit(app) -> None:  # noqa: ANN001
    from sqlalchemy import text

    seen: list[str] = []

    async def hook() -> None:
        # Runs outside the unit of work: a new one may open (it would fail inside).
        async with app.unit_of_work() as again:
            await again.session.execute(text("SELECT 1"))
        seen.append("after")

    async with app.unit_of_work() as uow:
        uow.after_commit(hook)
        seen.append("inside")
    assert seen == ["inside", "after"]

    seen.clear()
    with pytest.raises(RuntimeError):
        async with app.unit_of_work() as uow:
            uow.after_commit(hook)
            raise RuntimeError("roll back")
    assert seen == []
