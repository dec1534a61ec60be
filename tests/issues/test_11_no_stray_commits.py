"""Issue 11: no tool or service commits outside the unit of work. Every tool of the registry is walked
through the gate on a real scenario while a listener records each commit of the write engine; a commit
that is not the commit of an active unit of work's own transaction is a stray commit and fails the test."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from fleet_mcp.db import uow as uow_module
from fleet_mcp.db.models import AuditEntry
from fleet_mcp.policy.watcher import PolicyHolder
from fleet_mcp.registry import catalog, load_tools
from tests.conftest import call_as, make_caller
from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo

pytestmark = pytest.mark.anyio

#: Deleting a module and issuing a node certificate are queued, so the approval tools have real requests
#: to work on (one with a secret to collect); the rest runs.
POLICY = """
version: 1
default: auto_approve
rules:
  - name: queue-module-deletes
    match: {tools: [system_delete_module, system_sdwan_issue_node_certificate]}
    decision: require_approval
    approval: {mode: queue, approvers: [admin], separation_of_duties: true}
"""

_walking: contextvars.ContextVar[str | None] = contextvars.ContextVar("walking", default=None)

State = dict[str, Any]
Step = tuple[str, str, Callable[[State], dict[str, Any]]]  # (who, tool, args from state)

STEPS: list[Step] = [
    ("alice", "system_put_template", lambda s: {"name": "web", "spec": {"description": "web"}}),
    ("alice", "system_put_module", lambda s: {"name": "nginx", "spec": {"variety": "role", "priority": 1}}),
    ("alice", "system_put_module", lambda s: {"name": "spare", "spec": {"variety": "role", "priority": 2}}),
    ("alice", "system_put_provider_config", lambda s: {"name": "aws", "spec": {"provider": "aws", "region": "x"}}),
    ("alice", "system_assign_module_to_template", lambda s: {"template": "web", "module": "nginx"}),
    ("alice", "system_list_templates", lambda s: {}),
    ("alice", "system_list_modules", lambda s: {}),
    ("alice", "system_list_assignments", lambda s: {}),
    ("alice", "system_list_provider_configs", lambda s: {}),
    ("alice", "system_get_template", lambda s: {"name": "web"}),
    ("alice", "system_get_module", lambda s: {"name": "nginx"}),
    ("alice", "system_get_provider_config", lambda s: {"name": "aws"}),
    ("alice", "system_unassign_module_from_template", lambda s: {"template": "web", "module": "nginx"}),
    ("alice", "system_delete_template", lambda s: {"name": "web"}),
    ("alice", "system_delete_provider_config", lambda s: {"name": "aws"}),
    ("alice", "system_delete_module", lambda s: {"name": "spare"}),  # queued
    ("alice", "system_approvals_list", lambda s: {}),
    ("alice", "system_approvals_get", lambda s: {"approval_id": s["approval_id"]}),
    ("adam", "system_approvals_decide",
     lambda s: {"approval_id": s["approval_id"], "decision": "approve", "reason": "fine"}),
    ("alice", "system_gitops_register_repository", lambda s: {"name": "fleet", "repo_url": s["repo_url"]}),
    ("alice", "system_gitops_list_repositories", lambda s: {}),
    ("alice", "system_gitops_get_repository", lambda s: {"repository_id": s["repository_id"]}),
    ("alice", "system_gitops_update_repository", lambda s: {"repository_id": s["repository_id"], "enabled": True}),
    ("alice", "system_gitops_sync_repository", lambda s: {"repository_id": s["repository_id"]}),
    ("alice", "system_gitops_list_sync_runs", lambda s: {"repository_id": s["repository_id"]}),
    ("alice", "system_gitops_get_sync_run", lambda s: {"sync_run_id": s["sync_run_id"]}),
    ("alice", "system_gitops_list_proposals", lambda s: {"sync_run_id": s["sync_run_id"]}),
    ("alice", "system_gitops_get_proposal", lambda s: {"proposal_id": s["proposal_ids"][0]}),
    ("alice", "system_gitops_reject_proposal", lambda s: {"proposal_id": s["proposal_ids"][0], "reason": "no"}),
    ("alice", "system_gitops_apply_proposal", lambda s: {"proposal_id": s["proposal_ids"][1]}),
    ("alice", "system_gitops_sync_repository", lambda s: {"repository_id": s["repository_id"]}),
    ("alice", "system_gitops_apply_sync_run", lambda s: {"sync_run_id": s["sync_run_id"]}),
    ("alice", "system_gitops_get_drift_report", lambda s: {"repository_id": s["repository_id"]}),
    ("alice", "system_gitops_suppress_drift", lambda s: {"kind": "template", "name": "web", "reason": "testing"}),
    ("alice", "system_recent_signals", lambda s: {}),
    ("alice", "system_gitops_delete_repository", lambda s: {"repository_id": s["repository_id"]}),
    ("alice", "system_vault_store_credential", lambda s: {"name": "db", "kind": "password", "secret": "s3cret!"}),
    ("alice", "system_vault_store_credential", lambda s: {"name": "old", "kind": "password", "secret": "x"}),
    ("alice", "system_vault_list_credentials", lambda s: {}),
    ("alice", "system_vault_delete_credential", lambda s: {"name": "old"}),
    ("alice", "system_vault_get_pepper_status", lambda s: {}),
    ("alice", "system_rotate_vault_transit_pepper", lambda s: {"wait": True}),
    ("alice", "system_vault_get_rotation_job", lambda s: {"job_id": s["job_id"]}),
    ("alice", "system_vault_resume_rotation_job", lambda s: {"job_id": s["job_id"]}),
    ("alice", "system_vault_verify_credentials", lambda s: {}),
    ("alice", "system_vault_finalize_pepper_rotation", lambda s: {}),
    ("alice", "system_vault_trim_pepper_key", lambda s: {}),
    ("alice", "system_sdwan_issue_node_certificate", lambda s: {"node_name": "edge-1"}),  # queued
    ("adam", "system_approvals_decide",
     lambda s: {"approval_id": s["approval_id"], "decision": "approve", "reason": "fine"}),
    ("alice", "system_approvals_collect_result", lambda s: {"approval_id": s["approval_id"]}),
    ("alice", "system_sdwan_issue_node_certificate", lambda s: {"node_name": "edge-2"}),  # queued, then withdrawn
    ("alice", "system_approvals_cancel", lambda s: {"approval_id": s["approval_id"], "reason": "not needed"}),
    ("alice", "system_sdwan_get_trust_bundle", lambda s: {}),
    ("alice", "system_sdwan_propose_federation_peer", lambda s: {"remote_account": "globex"}),
    ("alice", "system_sdwan_regenerate_acceptance_token", lambda s: {"federation_peer_id": s["peer_id"]}),
    ("gary", "system_sdwan_accept_federation_peer",
     lambda s: {"federation_peer_id": s["peer_id"], "acceptance_token": s["token"]}),
    ("alice", "system_sdwan_verify_federation_handshake", lambda s: {"federation_peer_id": s["peer_id"]}),
    ("alice", "system_sdwan_list_federation_peers", lambda s: {}),
    ("alice", "system_sdwan_get_federation_peer", lambda s: {"federation_peer_id": s["peer_id"]}),
    ("alice", "system_sdwan_suspend_federation_peer", lambda s: {"federation_peer_id": s["peer_id"], "reason": "t"}),
    ("alice", "system_sdwan_resume_federation_peer", lambda s: {"federation_peer_id": s["peer_id"], "reason": "t"}),
    ("alice", "system_sdwan_federation_scan", lambda s: {}),
    ("alice", "system_sdwan_refresh_federation_peer", lambda s: {"federation_peer_id": s["peer_id"]}),
    ("gary", "system_sdwan_accept_remote_federation_peer", lambda s: {"peering_token": "fmcp-peering-v1.e30"}),
    ("alice", "system_sdwan_rotate_intermediate_ca", lambda s: {}),
    ("alice", "system_sdwan_revoke_federation_peer", lambda s: {"federation_peer_id": s["peer_id"], "reason": "t"}),
    ("alice", "system_audit_query", lambda s: {}),
    ("alice", "system_audit_verify", lambda s: {}),
    ("alice", "system_policy_explain", lambda s: {"tool": "system_delete_module", "arguments": {"name": "x"}}),
]


#: Steps whose refusal is the point here (a finished job cannot resume): the refusal path is walked too.
REFUSED = {"system_vault_resume_rotation_job", "system_sdwan_refresh_federation_peer",
           "system_sdwan_accept_remote_federation_peer"}


def _remember(state: State, tool: str, data: dict[str, Any]) -> None:
    if data.get("approval_id"):
        state["approval_id"] = data["approval_id"]
    if tool == "system_gitops_register_repository":
        state["repository_id"] = data["repository"]["id"]
    if tool == "system_gitops_sync_repository":
        state["sync_run_id"] = data["sync_run"]["id"]
        state.setdefault("proposal_ids", data["sync_run"]["proposal_ids"])
    if tool == "system_rotate_vault_transit_pepper":
        state["job_id"] = data["job"]["id"]
    if tool == "system_sdwan_propose_federation_peer":
        state["peer_id"] = data["federation_peer"]["id"]
    if "acceptance_token" in data:
        state["token"] = data["acceptance_token"]


def test_every_tool_is_walked() -> None:
    assert {tool for _, tool, _ in STEPS} == set(load_tools()), "add the new tool to STEPS"


async def test_no_tool_commits_outside_its_unit_of_work(app, tmp_path: Path) -> None:  # noqa: ANN001
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    app.policy = PolicyHolder(policy, catalog())
    people = {"alice": await make_caller(app, "acme", "alice", ("admin",)),
              "adam": await make_caller(app, "acme", "adam", ("admin",)),
              "gary": await make_caller(app, "globex", "gary", ("admin",))}
    repo = FleetRepo(tmp_path / "fleet-src")
    repo.commit({"fleet.yaml": BASE_FLEET}, "initial fleet")
    state: State = {"repo_url": repo.url}

    stray: list[str] = []
    began_in: dict[int, Any] = {}  # connection -> the unit of work it began in (None: none)

    def on_begin(conn: Any) -> None:
        began_in[id(conn)] = uow_module._holding.get()

    def on_commit(conn: Any) -> None:
        tool = _walking.get()
        if tool is None:
            return  # the test's own setup
        holding = uow_module._holding.get()
        if holding is None or not holding.active or began_in.get(id(conn)) is not holding:
            stray.append(tool)

    event.listen(app.engine.sync_engine, "begin", on_begin)
    event.listen(app.engine.sync_engine, "commit", on_commit)
    try:
        for who, tool, args in STEPS:
            async with app.read_sessionmaker() as read:
                before = (await read.execute(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1))
                          ).scalar() or 0
            token = _walking.set(tool)
            try:
                out = await call_as(app, people[who], tool, args(state))
                await app.drain()  # work a committed call launched is part of the call
            finally:
                _walking.reset(token)
            if tool in REFUSED:
                assert not out.ok and out.data["status"] == "error", (tool, out.data)
            else:
                assert out.ok or out.data.get("status") == "approval_required", (tool, out.message)
            _remember(state, tool, out.data)
            async with app.read_sessionmaker() as read:
                rows = (await read.execute(select(AuditEntry).where(AuditEntry.seq > before,
                                                                     AuditEntry.tool == tool))).scalars().all()
            assert rows, f"{tool} left no audit row"
    finally:
        event.remove(app.engine.sync_engine, "commit", on_commit)
        event.remove(app.engine.sync_engine, "begin", on_begin)
    assert stray == [], f"commits outside a unit of work during: {sorted(set(stray))}"
