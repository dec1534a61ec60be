"""Issue 12 (5, 11): secrets an approved run produces (a server-generated private key, an acceptance token)
reach the requester once and nobody else: not the approver, not the stored request, not the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from fleet_mcp.db.models import ApprovalRequest, AuditEntry
from fleet_mcp.policy.watcher import PolicyHolder
from fleet_mcp.registry import catalog
from tests.conftest import call_as, make_caller

pytestmark = pytest.mark.anyio
POLICIES = Path(__file__).resolve().parents[2] / "src" / "fleet_mcp" / "policies"


async def _everything_stored(app) -> str:  # noqa: ANN001
    """Every approval request and audit row, as text: where a leaked secret would be found."""
    async with app.read_sessionmaker() as read:
        reqs = (await read.execute(select(ApprovalRequest))).scalars().all()
        rows = (await read.execute(select(AuditEntry))).scalars().all()
    return repr([(r.result, r.arguments_masked, r.summary) for r in reqs]) + repr(
        [(r.arguments, r.detail) for r in rows])


async def _approve(app, approver, approval_id: str):  # noqa: ANN001, ANN202
    out = await call_as(app, approver, "system_approvals_decide",
                        {"approval_id": approval_id, "decision": "approve", "reason": "ok"})
    assert out.ok and out.data["executed"], out.data
    return out


async def test_queued_node_certificate_key_goes_to_the_requester_once(app) -> None:  # noqa: ANN001
    app.policy = PolicyHolder(POLICIES / "strict.yaml", catalog())
    olga = await make_caller(app, "acme", "olga", ("operator",))
    ben = await make_caller(app, "acme", "ben", ("approver",))
    vic = await make_caller(app, "acme", "vic", ("viewer",))
    queued = await call_as(app, olga, "system_sdwan_issue_node_certificate", {"node_name": "edge-1"})
    assert queued.data["status"] == "approval_required", queued.data
    aid = queued.data["approval_id"]
    decided = await _approve(app, ben, aid)
    assert "PRIVATE KEY" not in repr(decided.data)
    assert decided.data["result"]["private_key_pem"] == "***"
    assert "BEGIN CERTIFICATE" in decided.data["result"]["certificate_pem"]  # the rest of the result is there
    seen_by_viewer = await call_as(app, vic, "system_approvals_get", {"approval_id": aid})
    assert seen_by_viewer.ok and "PRIVATE KEY" not in repr(seen_by_viewer.data)
    assert "PRIVATE KEY" not in await _everything_stored(app)

    refused = await call_as(app, ben, "system_approvals_collect_result", {"approval_id": aid})
    assert not refused.ok and "only the requester" in refused.message
    collected = await call_as(app, olga, "system_approvals_collect_result", {"approval_id": aid})
    assert collected.ok, collected.message
    assert "BEGIN PRIVATE KEY" in collected.data["secrets"]["private_key_pem"]
    again = await call_as(app, olga, "system_approvals_collect_result", {"approval_id": aid})
    assert not again.ok and again.data["error"]["code"] == "not_found"
    assert "PRIVATE KEY" not in await _everything_stored(app)


async def test_queued_federation_proposal_token_goes_to_the_requester_not_the_approver(app) -> None:  # noqa: ANN001
    app.policy = PolicyHolder(POLICIES / "default.yaml", catalog())
    olga = await make_caller(app, "acme", "olga", ("operator",))
    ben = await make_caller(app, "acme", "ben", ("approver",))
    gary = await make_caller(app, "globex", "gary", ("admin",))
    queued = await call_as(app, olga, "system_sdwan_propose_federation_peer", {"remote_account": "globex"})
    assert queued.data["status"] == "approval_required", queued.data
    aid = queued.data["approval_id"]
    decided = await _approve(app, ben, aid)
    assert decided.data["result"]["acceptance_token"] == "***"
    collected = await call_as(app, olga, "system_approvals_collect_result", {"approval_id": aid})
    token = collected.data["secrets"]["acceptance_token"]
    assert token not in await _everything_stored(app)
    # The token the requester collected is the real one: the remote account accepts with it (that call is
    # itself gated; the in-client answer stands for the remote operator's consent).
    accepted = await call_as(app, gary, "system_sdwan_accept_federation_peer",
                             {"federation_peer_id": decided.data["result"]["federation_peer"]["id"],
                              "acceptance_token": token}, can_elicit=True, elicited="accept")
    assert accepted.ok, accepted.message
