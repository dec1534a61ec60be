"""system_approvals_cancel: the requester withdraws a pending request; it never runs afterwards."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from fleet_mcp.db.models import AuditEntry
from tests.conftest import call_as, cli_env, make_caller, run_cli

pytestmark = pytest.mark.anyio


async def _queued_delete(app, olga) -> str:  # noqa: ANN001
    out = await call_as(app, olga, "system_put_provider_config", {"name": "aws", "spec": {"provider": "aws"}})
    assert out.ok, out.message
    out = await call_as(app, olga, "system_delete_provider_config", {"name": "aws"})
    assert out.data["status"] == "approval_required", out.message
    return out.data["approval_id"]


async def test_requester_withdraws_and_nothing_runs(app) -> None:  # noqa: ANN001
    olga = await make_caller(app, "acme", "olga", ("operator",))
    ben = await make_caller(app, "acme", "ben", ("approver",))
    apr = await _queued_delete(app, olga)

    other = await call_as(app, ben, "system_approvals_cancel", {"approval_id": apr, "reason": "not mine"})
    assert not other.ok and other.data["error"]["code"] == "permission_denied", other.message
    assert "only its requester" in other.message

    out = await call_as(app, olga, "system_approvals_cancel", {"approval_id": apr, "reason": "changed my mind"})
    assert out.ok, out.message
    assert out.data["approval"]["status"] == "cancelled"
    assert out.data["approval"]["decided_by"] == "acme/olga"
    assert out.data["approval"]["decisions"][-1]["decision"] == "cancel"

    late = await call_as(app, ben, "system_approvals_decide", {"approval_id": apr, "decision": "approve",
                                                              "reason": "too late"})
    assert not late.ok and "cancelled" in late.message
    again = await call_as(app, olga, "system_approvals_cancel", {"approval_id": apr, "reason": "twice"})
    assert not again.ok and "cancelled" in again.message
    still = await call_as(app, olga, "system_get_provider_config", {"name": "aws"})
    assert still.ok, "a withdrawn request never ran"
    listed = await call_as(app, olga, "system_approvals_list", {"status": "cancelled"})
    assert [a["id"] for a in listed.data["approvals"]] == [apr]

    async with app.sessionmaker() as session:
        rows = (await session.execute(select(AuditEntry).where(AuditEntry.tool == "system_approvals_cancel")
                                      .order_by(AuditEntry.seq))).scalars().all()
    assert [(r.principal, r.outcome) for r in rows] == [("acme/ben", "error"), ("acme/olga", "ok"),
                                                        ("acme/olga", "error")]


def test_cli_cancel_verb(tmp_path) -> None:  # noqa: ANN001
    import json
    import re

    env = cli_env(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", FLEET_MCP_ACCOUNT="acme", FLEET_MCP_PRINCIPAL="adam",
                  FLEET_MCP_ROLES="admin")
    queued = run_cli(env, "rotate-pepper", check=False)
    assert queued.returncode == 1, queued.stderr
    apr = re.search(r"Approval request (apr_[0-9a-f]+) is queued", queued.stderr).group(1)
    out = run_cli(env, "approvals", "cancel", apr, "--reason", "not today")
    assert json.loads(out.stdout)["approval"]["status"] == "cancelled"
    missing = run_cli(env, "approvals", "cancel", "apr_doesnotexist", "--reason", "x", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
