"""Issue 12 (8): an approved request is checked again when it executes: if the policy was tightened to deny
it, or the requester lost the permission, it is refused and recorded as refused; nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from fleet_mcp.db.models import ProviderConfig
from fleet_mcp.policy.watcher import PolicyHolder
from fleet_mcp.registry import catalog
from tests.conftest import call_as, make_caller

pytestmark = pytest.mark.anyio
POLICIES = Path(__file__).resolve().parents[2] / "src" / "fleet_mcp" / "policies"
DENY_DELETES = """
version: 1
default: auto_approve
rules:
  - name: no-deletes-any-more
    match: {tools: [system_delete_provider_config]}
    decision: deny
"""


async def _providers(app) -> int:  # noqa: ANN001
    async with app.read_sessionmaker() as s:
        return (await s.execute(select(func.count()).select_from(ProviderConfig))).scalar_one()


async def _queued_delete(app, tmp_path: Path):  # noqa: ANN001, ANN202
    app.policy = PolicyHolder(POLICIES / "default.yaml", catalog())
    olga = await make_caller(app, "acme", "olga", ("operator",))
    ben = await make_caller(app, "acme", "ben", ("approver",))
    assert (await call_as(app, olga, "system_put_provider_config",
                          {"name": "aws", "spec": {"provider": "aws", "region": "eu-west-1"}})).ok
    queued = await call_as(app, olga, "system_delete_provider_config", {"name": "aws"})
    assert queued.data["status"] == "approval_required", queued.data
    return olga, ben, queued.data["approval_id"]


async def test_a_policy_tightened_after_the_request_refuses_it(app, tmp_path: Path) -> None:  # noqa: ANN001
    olga, ben, aid = await _queued_delete(app, tmp_path)
    tightened = tmp_path / "tight.yaml"
    tightened.write_text(DENY_DELETES)
    app.policy = PolicyHolder(tightened, catalog())
    out = await call_as(app, ben, "system_approvals_decide", {"approval_id": aid, "decision": "approve",
                                                              "reason": "ok"})
    assert out.ok and not out.data["executed"], out.data
    assert out.data["approval"]["status"] == "refused"
    assert "no-deletes-any-more" in out.data["approval"]["result"]["error"]
    assert await _providers(app) == 1
    audit = await call_as(app, ben, "system_audit_query", {"approval_id": aid})
    assert any(e["outcome"] == "refused_at_execution" for e in audit.data["entries"]), audit.data


async def test_a_requester_who_lost_the_permission_is_refused(app, tmp_path: Path) -> None:  # noqa: ANN001
    from sqlalchemy import update

    from fleet_mcp.db.models import ApprovalRequest

    olga, ben, aid = await _queued_delete(app, tmp_path)
    # The request records the roles the requester held; a request whose requester holds no role that may
    # write any more (as after a demotion) must not run.
    async with app.unit_of_work() as uow:
        await uow.session.execute(update(ApprovalRequest).where(ApprovalRequest.id == aid)
                                  .values(requester_roles=["viewer"]))
    out = await call_as(app, ben, "system_approvals_decide", {"approval_id": aid, "decision": "approve",
                                                              "reason": "ok"})
    assert out.data["approval"]["status"] == "refused", out.data
    assert out.data["result"]["permission"] == "system.fleet.write"
    assert await _providers(app) == 1


async def test_a_request_whose_token_was_revoked_does_not_run(app, tmp_path: Path) -> None:  # noqa: ANN001
    from dataclasses import replace

    from fleet_mcp import principals

    olga, ben, _ = await _queued_delete(app, tmp_path)
    admin = principals.Actor("acme/root", "acme")
    async with app.unit_of_work() as uow:
        await principals.create_token(uow.session, account="acme", label="olga-laptop", roles=["operator"],
                                      principal="olga", actor=admin,
                                      known_roles=app.policy.current.role_table())
    with_token = replace(olga, token_label="olga-laptop")
    assert (await call_as(app, olga, "system_put_provider_config",
                          {"name": "gcp", "spec": {"provider": "gcp", "region": "europe-west1"}})).ok
    queued = await call_as(app, with_token, "system_delete_provider_config", {"name": "gcp"})
    aid = queued.data["approval_id"]
    async with app.unit_of_work() as uow:
        await principals.revoke_token(uow.session, "olga-laptop", actor=admin)
    out = await call_as(app, ben, "system_approvals_decide", {"approval_id": aid, "decision": "approve",
                                                              "reason": "ok"})
    assert out.data["approval"]["status"] == "refused", out.data
    assert "revoked" in out.data["approval"]["result"]["error"]
    assert await _providers(app) == 2


async def test_audit_verify_counts_only_the_callers_account_without_read_all(app) -> None:  # noqa: ANN001
    vic = await make_caller(app, "acme", "vic", ("viewer",))
    gary = await make_caller(app, "globex", "gary", ("admin",))
    for i in range(3):
        assert (await call_as(app, gary, "system_put_template", {"name": f"g{i}", "spec": {}})).ok
    own = await call_as(app, vic, "system_audit_verify", {})
    every = await call_as(app, gary, "system_audit_verify", {})
    assert own.ok and own.data["ok"] and every.ok and every.data["ok"]
    async with app.read_sessionmaker() as read:
        from fleet_mcp import audit

        acme_rows = await audit.count_rows(read, account="acme")
    # vic's own verify call added one acme row after it counted
    assert own.data["entries_checked"] == acme_rows - 1 < every.data["entries_checked"]
