"""GitOps end to end through the SDK's in-memory client and the shipped default policy (the app fixture's)."""

from __future__ import annotations

import json

import pytest
from mcp import Client
from mcp_types import ElicitResult
from sqlalchemy import func, select

from fleet_mcp.db.models import Template
from fleet_mcp.gitops.models import GitOpsRepository
from fleet_mcp.jobs import gitops as jobs
from fleet_mcp.registry import load_tools
from fleet_mcp.server import build_server
from tests.conftest import call_as, make_caller
from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo

pytestmark = pytest.mark.anyio

# The tool contract (tools/*.json, docs/API.md), GitOps tools: name → (permission, read_only, destructive, idempotent)
CONTRACT = {
    "system_gitops_register_repository": ("system.gitops.write", False, False, False),
    "system_gitops_list_repositories": ("system.gitops.read", True, False, None),
    "system_gitops_get_repository": ("system.gitops.read", True, False, None),
    "system_gitops_update_repository": ("system.gitops.write", False, False, True),
    "system_gitops_delete_repository": ("system.gitops.write", False, True, False),
    "system_gitops_sync_repository": ("system.gitops.sync", False, False, False),
    "system_gitops_list_sync_runs": ("system.gitops.read", True, False, None),
    "system_gitops_get_sync_run": ("system.gitops.read", True, False, None),
    "system_gitops_get_drift_report": ("system.gitops.read", True, False, None),
    "system_gitops_list_proposals": ("system.gitops.read", True, False, None),
    "system_gitops_get_proposal": ("system.gitops.read", True, False, None),
    "system_gitops_apply_proposal": ("system.gitops.apply", False, True, False),
    "system_gitops_apply_sync_run": ("system.gitops.apply", False, True, False),
    "system_gitops_reject_proposal": ("system.gitops.apply", False, False, False),
    "system_gitops_suppress_drift": ("system.gitops.write", False, False, False),
}
ARGUMENTS = {
    "system_gitops_register_repository": {"name", "repo_url", "branch", "path_prefix", "credential", "auto_apply"},
    "system_gitops_update_repository": {"repository_id", "branch", "path_prefix", "credential", "auto_apply",
                                        "enabled"},
    "system_gitops_list_sync_runs": {"repository_id", "limit"},
    "system_gitops_list_proposals": {"repository_id", "sync_run_id", "status"},
    "system_gitops_apply_proposal": {"proposal_id", "force"},
    "system_gitops_apply_sync_run": {"sync_run_id", "force"},
    "system_gitops_reject_proposal": {"proposal_id", "reason"},
    "system_gitops_suppress_drift": {"kind", "name", "reason", "until"},
}


def test_tools_match_the_contract() -> None:
    tools = load_tools()
    for name, (permission, ro, destructive, idempotent) in CONTRACT.items():
        spec = tools[name]
        assert (spec.permission, spec.read_only, spec.destructive, spec.toolset) == (permission, ro, destructive,
                                                                                     "gitops"), name
        if idempotent is not None:
            assert spec.idempotent is idempotent, name
        assert set(spec.input_model.model_fields) >= ARGUMENTS.get(name, set()), name


def _ok(r) -> dict:  # noqa: ANN001
    assert not r.is_error, r.content
    return r.structured_content


async def _register_and_sync(client, repo: FleetRepo) -> tuple[int, dict]:  # noqa: ANN001
    repo_out = _ok(await client.call_tool("system_gitops_register_repository", {"name": "fleet",
                                                                                "repo_url": repo.url}))
    repository = repo_out["repository"]
    assert {"id", "name", "repo_url", "branch", "path_prefix", "auto_apply", "enabled", "last_status",
            "last_synced_revision", "last_synced_at", "last_error"} <= set(repository)
    run = _ok(await client.call_tool("system_gitops_sync_repository", {"repository_id": repository["id"]}))
    return repository["id"], run["sync_run"]


async def test_register_sync_queue_approve_apply(client, app, fleet_repo) -> None:  # noqa: ANN001
    hostile = await client.call_tool("system_gitops_register_repository",
                                     {"name": "evil", "repo_url": "ext::sh -c touch% /tmp/pwned"})
    assert hostile.is_error and "remote helpers" in hostile.content[0].text

    repo_id, run = await _register_and_sync(client, fleet_repo)
    assert {"id", "repository_id", "status", "revision", "diff_count", "diff_summary", "proposal_ids",
            "truncated", "error"} <= set(run)
    assert (run["status"], run["diff_count"], len(run["proposal_ids"])) == ("success", 7, 7)

    report = _ok(await client.call_tool("system_gitops_get_drift_report", {"repository_id": repo_id}))
    assert (report["drift"], report["diff_count"], report["revision"]) == (True, 7, run["revision"])
    assert report["changes"][1]["fields"][0] == {"path": "description", "live": None, "desired": "Databases"}

    proposals = _ok(await client.call_tool("system_gitops_list_proposals", {"sync_run_id": run["id"]}))
    assert proposals["count"] == 7
    first = _ok(await client.call_tool("system_gitops_get_proposal", {"proposal_id": run["proposal_ids"][0]}))
    assert {"id", "repository_id", "sync_run_id", "revision", "kind", "name", "action", "fields", "status", "risk",
            "base_fingerprint", "error"} <= set(first["proposal"])
    resource = await client.read_resource(f"fleet://proposals/{run['proposal_ids'][0]}")
    assert json.loads(resource.contents[0].text)["proposal"]["name"] == "aws-eu"
    resource = await client.read_resource(f"fleet://sync-runs/{run['id']}")
    assert json.loads(resource.contents[0].text)["sync_run"]["status"] == "success"

    # The client cannot be asked, so the shipped policy queues the apply; an approver decides.
    queued = await client.call_tool("system_gitops_apply_sync_run", {"sync_run_id": run["id"]})
    assert queued.is_error and queued.structured_content["status"] == "approval_required"
    aid = queued.structured_content["approval_id"]
    approver = await make_caller(app, "acme", "ben", ("approver",))
    shown = await call_as(app, approver, "system_approvals_get", {"approval_id": aid})
    summary = shown.data["approval"]["summary"]
    assert "Apply 7 proposal(s) of sync run" in summary and "metadata.team: null → \"web\"" in summary
    decided = await call_as(app, approver, "system_approvals_decide",
                            {"approval_id": aid, "decision": "approve", "reason": "reviewed"})
    assert decided.ok, decided.message
    assert decided.data["result"]["applied"] is True
    assert [r["status"] for r in decided.data["result"]["results"]] == ["applied"] * 7
    templates = _ok(await client.call_tool("system_list_templates", {}))["items"]
    assert {t["managed_by"] for t in templates} == {f"gitops:{repo_id}"}

    got = _ok(await client.call_tool("system_gitops_get_repository", {"repository_id": repo_id}))
    assert got["repository"]["last_status"] == "success" and got["recent_sync_runs"][0]["id"] == run["id"]


def _answer(asked: list[str]):  # noqa: ANN202
    async def cb(_ctx, params):  # noqa: ANN001
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})

    return cb


async def test_stale_refusal_then_forced_apply_by_a_second_person(app, fleet_repo) -> None:  # noqa: ANN001
    server, _ = build_server(app)
    asked: list[str] = []
    async with Client(server, elicitation_callback=_answer(asked)) as c:
        repo_id, run = await _register_and_sync(c, fleet_repo)
        applied = _ok(await c.call_tool("system_gitops_apply_sync_run", {"sync_run_id": run["id"]}))
        assert applied["applied"] and "metadata.team: null → \"web\"" in asked[-1]

        fleet_repo.commit({"fleet.yaml": BASE_FLEET.replace("priority: 10", "priority: 20")})
        run2 = _ok(await c.call_tool("system_gitops_sync_repository", {"repository_id": repo_id}))["sync_run"]
        (pid,) = run2["proposal_ids"]
        # A manual edit of the same module after the proposal was made ...
        _ok(await c.call_tool("system_put_module", {"name": "nginx", "spec": {"variety": "role", "priority": 99}}))
        # ... makes the apply a stale refusal (the approver saw the field diff first).
        stale = _ok(await c.call_tool("system_gitops_apply_proposal", {"proposal_id": pid}))
        assert "priority: 10 → 20" in asked[-1]
        assert (stale["applied"], stale["conflict"], stale["proposal"]["status"]) == (False, True, "stale")
        nginx = _ok(await c.call_tool("system_get_module", {"name": "nginx"}))["item"]
        assert nginx["spec"]["priority"] == 99

        # force=true is queued for someone else (separation of duties), never elicited.
        n_asked = len(asked)
        forced = await c.call_tool("system_gitops_apply_proposal", {"proposal_id": pid, "force": True})
        assert forced.is_error and forced.structured_content["status"] == "approval_required"
        assert len(asked) == n_asked
        aid = forced.structured_content["approval_id"]

    approver = await make_caller(app, "acme", "bea", ("approver",))
    decided = await call_as(app, approver, "system_approvals_decide",
                            {"approval_id": aid, "decision": "approve", "reason": "git wins"})
    assert decided.ok, decided.message
    result = decided.data["result"]
    assert (result["applied"], result["proposal"]["status"], result["proposal"]["forced"]) == (True, "applied", True)
    async with Client(server) as c:
        nginx = _ok(await c.call_tool("system_get_module", {"name": "nginx"}))["item"]
        assert (nginx["spec"]["priority"], nginx["managed_by"]) == (20, f"gitops:{repo_id}")


async def test_reject_suppress_update_delete(client, app, fleet_repo) -> None:  # noqa: ANN001
    repo_id, run = await _register_and_sync(client, fleet_repo)
    rejected = _ok(await client.call_tool("system_gitops_reject_proposal",
                                          {"proposal_id": run["proposal_ids"][0], "reason": "not now"}))
    assert rejected["proposal"]["status"] == "rejected"
    # Suppressing drift hides a change from review: the shipped policy asks the person at the client.
    asked: list[str] = []
    async with Client(build_server(app)[0], elicitation_callback=_answer(asked)) as asking:
        missing = await asking.call_tool("system_gitops_suppress_drift", {"kind": "template", "name": "web",
                                                                          "reason": "x"})
        assert missing.is_error and "does not exist" in missing.content[0].text
        _ok(await asking.call_tool("system_put_template", {"name": "web", "spec": {}}))
        sup = _ok(await asking.call_tool("system_gitops_suppress_drift", {
            "kind": "template", "name": "web", "reason": "hand-managed", "until": "2999-01-01T00:00:00Z"}))
    assert sup["suppression"]["suppressed"] is True and sup["suppression"]["until"].startswith("2999-01-01")
    assert len(asked) == 2 and all("system_gitops_suppress_drift" in q for q in asked), asked

    upd = _ok(await client.call_tool("system_gitops_update_repository", {"repository_id": repo_id,
                                                                         "auto_apply": True}))
    assert upd["repository"]["auto_apply"] is True
    bad = await client.call_tool("system_gitops_update_repository", {"repository_id": repo_id,
                                                                     "path_prefix": "../etc"})
    assert bad.is_error and "'..'" in bad.content[0].text

    # Deleting is destructive: queued by the shipped policy, then approved.
    queued = await client.call_tool("system_gitops_delete_repository", {"repository_id": repo_id})
    assert queued.structured_content["status"] == "approval_required"
    approver = await make_caller(app, "acme", "ben", ("approver",))
    decided = await call_as(app, approver, "system_approvals_decide",
                            {"approval_id": queued.structured_content["approval_id"], "decision": "approve",
                             "reason": "retired"})
    assert decided.ok and decided.data["result"]["deleted"] is True
    async with app.sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(GitOpsRepository))).scalar_one() == 0


async def test_drift_sensor_and_auto_apply_through_the_gate(client, app, fleet_repo) -> None:  # noqa: ANN001
    repo_id, run = await _register_and_sync(client, fleet_repo)
    ticks = await jobs.drift_sensor(app)
    assert [(t.repository_id, t.event) for t in ticks] == [(repo_id, "gitops.drift_detected")]
    signals = _ok(await client.call_tool("system_recent_signals", {"kind": "gitops.drift*"}))["events"]
    assert signals[0]["kind"] == "gitops.drift_detected" and signals[0]["payload"]["diff_count"] == 7

    # Auto-sync with auto_apply: the sync runs through the gate and the apply is queued by the policy.
    _ok(await client.call_tool("system_gitops_update_repository", {"repository_id": repo_id, "auto_apply": True}))
    fleet_repo.commit({"fleet.yaml": BASE_FLEET + "  gcp-eu: {provider: gcp, region: europe-west1}\n"})
    app.settings.auto_sync_interval = 60.0
    (outcome,) = await jobs.auto_sync(app)
    assert outcome["sync"]["sync_run"]["diff_summary"]["opened"] == 1
    assert outcome["apply"]["status"] == "approval_required"
    approver = await make_caller(app, "acme", "ben", ("approver",))
    decided = await call_as(app, approver, "system_approvals_decide",
                            {"approval_id": outcome["apply"]["approval_id"], "decision": "approve",
                             "reason": "auto-apply ok"})
    assert decided.ok and decided.data["result"]["applied"] is True
    async with app.sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(Template))).scalar_one() == 2
    # Nothing new in git: the next auto-sync opens nothing and asks for nothing.
    (again,) = await jobs.auto_sync(app)
    assert "apply" not in again

    resolved = await jobs.drift_sensor(app)
    assert resolved[0].event == "gitops.drift_resolved"


async def test_sync_over_https_with_a_stored_credential(client, app, fleet_repo, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import subprocess

    from pydantic import SecretStr

    from fleet_mcp.vault.credentials import CredentialStore
    from tests.gitops.gitops_servers import GitHTTPSServer

    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(fleet_repo.path), str(served / "fleet.git")], check=True)
    server = GitHTTPSServer(served, tmp_path, username="deploy", password="ghp-Secret-123")
    monkeypatch.setenv("GIT_SSL_CAINFO", str(server.cert_file))
    async with app.sessionmaker() as s, s.begin():
        await CredentialStore(app.transit).store(s, account_id=app.stdio_caller.account_id, name="git-deploy",
                                                 kind="git_https", secret=SecretStr("ghp-Secret-123"),
                                                 metadata={"username": "deploy", "host": server.netloc})
    with server:
        repo = _ok(await client.call_tool("system_gitops_register_repository", {
            "name": "remote", "repo_url": server.url("fleet.git"), "credential": "git-deploy"}))["repository"]
        assert repo["credential"] == "git-deploy"
        run = _ok(await client.call_tool("system_gitops_sync_repository", {"repository_id": repo["id"]}))
        assert (run["sync_run"]["status"], run["sync_run"]["diff_count"]) == ("success", 7)
        assert "deploy:ghp-Secret-123" in server.seen_auth
        # A wrong stored secret is an authentication failure recorded on the run, never echoed.
        async with app.sessionmaker() as s, s.begin():
            await CredentialStore(app.transit).store(s, account_id=app.stdio_caller.account_id, name="git-deploy",
                                                     kind="git_https", secret=SecretStr("wrong-Secret-456"),
                                                     metadata={"username": "deploy", "host": server.netloc})
        bad = _ok(await client.call_tool("system_gitops_sync_repository", {"repository_id": repo["id"]}))["sync_run"]
        assert (bad["status"], bad["stage"]) == ("failed", "fetch") and "authentication failed" in bad["error"]
        assert "wrong-Secret" not in json.dumps(bad)
    # A credential of another kind is refused with a hint.
    async with app.sessionmaker() as s, s.begin():
        await CredentialStore(app.transit).store(s, account_id=app.stdio_caller.account_id, name="api",
                                                 kind="api_key", secret=SecretStr("k"))
    odd = await client.call_tool("system_gitops_update_repository", {"repository_id": repo["id"], "credential": "api"})
    assert odd.is_error and "git needs git_https or git_ssh" in odd.content[0].text
