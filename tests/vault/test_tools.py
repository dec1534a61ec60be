"""Vault tools end to end: through the gate (approval queue, second person) and the SDK's in-memory client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet_mcp.db.models import AuditEntry
from fleet_mcp.registry import load_tools
from fleet_mcp.vault.models import Credential
from tests.conftest import call_as, make_caller

pytestmark = pytest.mark.anyio

SECRET = "ghp_SuperSecretToken_123"
EXPECTED = {  # the tool contract: permission, read_only, destructive, idempotent
    "system_vault_store_credential": ("system.credentials.write", False, False, True),
    "system_vault_list_credentials": ("system.credentials.read", True, False, True),
    "system_vault_delete_credential": ("system.credentials.write", False, True, False),
    "system_vault_get_pepper_status": ("system.credentials.read", True, False, True),
    "system_rotate_vault_transit_pepper": ("system.fleet.autonomy", False, True, False),
    "system_vault_get_rotation_job": ("system.credentials.read", True, False, True),
    "system_vault_resume_rotation_job": ("system.fleet.autonomy", False, False, True),
    "system_vault_verify_credentials": ("system.credentials.read", True, False, True),
    "system_vault_finalize_pepper_rotation": ("system.fleet.autonomy", False, True, False),
    "system_vault_trim_pepper_key": ("system.fleet.autonomy", False, True, False),
}
ARGS = {
    "system_vault_store_credential": {"name", "kind", "secret", "metadata"},
    "system_vault_list_credentials": {"kind"},
    "system_vault_delete_credential": {"name"},
    "system_vault_get_pepper_status": set(),
    "system_rotate_vault_transit_pepper": {"reencrypt_existing", "batch_size", "wait"},
    "system_vault_get_rotation_job": {"job_id"},
    "system_vault_resume_rotation_job": {"job_id"},
    "system_vault_verify_credentials": {"account"},
    "system_vault_finalize_pepper_rotation": {"min_decryption_version"},
    "system_vault_trim_pepper_key": {"min_available_version"},
}


def test_vault_tools_match_the_contract() -> None:
    tools = load_tools()
    for name, (permission, ro, destructive, idempotent) in EXPECTED.items():
        spec = tools[name]
        assert (spec.permission, spec.read_only, spec.destructive, spec.idempotent) == (
            permission,
            ro,
            destructive,
            idempotent,
        ), name
        assert spec.toolset == "vault"
        assert set(spec.input_model.model_fields) == ARGS[name], name
    secret_schema = tools["system_vault_store_credential"].input_schema()["properties"]["secret"]
    assert secret_schema.get("writeOnly") is True or secret_schema.get("format") == "password"


async def test_credential_tools_never_return_or_audit_the_secret(client, app) -> None:  # noqa: ANN001
    r = await client.call_tool(
        "system_vault_store_credential",
        {"name": "github", "kind": "git_https", "secret": SECRET, "metadata": {"username": "bot"}},
    )
    assert not r.is_error, r.content
    cred = r.structured_content["credential"]
    assert (cred["name"], cred["kind"], cred["key_version"]) == ("github", "git_https", 1)
    assert "created_at" in cred
    listed = await client.call_tool("system_vault_list_credentials", {})
    assert [c["name"] for c in listed.structured_content["credentials"]] == ["github"]
    status = await client.call_tool("system_vault_get_pepper_status", {})
    s = status.structured_content
    assert (s["key_name"], s["latest_version"], s["min_decryption_version"]) == ("fleet-pepper", 1, 1)
    assert s["ciphertexts_by_version"] == {"1": 1} and s["accounts_by_version"] == {"1": 1}
    verify = await client.call_tool("system_vault_verify_credentials", {})
    assert {k: verify.structured_content[k] for k in ("checked", "ok", "failed")} == {
        "checked": 1,
        "ok": 1,
        "failed": 0,
    }
    for result in (r, listed, status, verify):
        assert SECRET not in json.dumps(result.structured_content)
        assert all(SECRET not in getattr(c, "text", "") for c in result.content)
    async with app.sessionmaker() as s:
        rows = (await s.execute(select(AuditEntry))).scalars().all()
        stored = (await s.execute(select(Credential))).scalar_one()
    assert rows and all(SECRET not in json.dumps([e.arguments, e.detail]) for e in rows)
    assert SECRET not in stored.ciphertext
    deleted = await client.call_tool("system_vault_delete_credential", {"name": "github"})
    assert deleted.is_error and deleted.structured_content["status"] == "approval_required"
    missing = await client.call_tool("system_vault_get_rotation_job", {"job_id": 999})
    assert missing.is_error and "no rotation job 999" in missing.content[0].text


async def _wait_for_job(app, caller, job_id: int) -> dict:  # noqa: ANN001
    """The job's record once its run, launched in this process after the call committed, has ended."""
    from fleet_mcp.vault.rotation import wait_for_launched

    await wait_for_launched(job_id)
    out = await call_as(app, caller, "system_vault_get_rotation_job", {"job_id": job_id})
    assert out.ok, out.message
    assert out.data["job"]["status"] not in ("pending", "running"), out.data
    return out.data["job"]


async def test_rotation_finalize_trim_through_the_approval_queue(app) -> None:  # noqa: ANN001
    adam = await make_caller(app, "acme", "adam", ("admin",))
    ben = await make_caller(app, "acme", "ben", ("approver",))
    for i in range(3):
        out = await call_as(
            app, adam, "system_vault_store_credential", {"name": f"c{i}", "kind": "api_key", "secret": f"{SECRET}{i}"}
        )
        assert out.ok, out.message

    queued = await call_as(app, adam, "system_rotate_vault_transit_pepper", {"batch_size": 2})
    assert queued.data["status"] == "approval_required"
    approval = await call_as(app, ben, "system_approvals_get", {"approval_id": queued.data["approval_id"]})
    summary = approval.data["approval"]["summary"]
    assert "from v1 to v2" in summary and "rewrap 3 ciphertexts" in summary
    self_approve = await call_as(
        app,
        adam,
        "system_approvals_decide",
        {"approval_id": queued.data["approval_id"], "decision": "approve", "reason": "mine"},
    )
    assert not self_approve.ok  # separation of duties
    decided = await call_as(
        app,
        ben,
        "system_approvals_decide",
        {"approval_id": queued.data["approval_id"], "decision": "approve", "reason": "quarterly rotation"},
    )
    assert decided.ok and decided.data["executed"], decided.message
    started = decided.data["approval"]["result"]
    assert started["job"]["status"] == "pending" and not started["waited"]
    job = await _wait_for_job(app, adam, started["job"]["id"])
    assert job["status"] == "completed"
    assert (job["from_version"], job["to_version"], job["total"], job["rewrapped"], job["failed"]) == (1, 2, 3, 3, 0)
    assert job["skipped_accounts"] == [] and [a["status"] for a in job["accounts"]] == ["done"]

    status = await call_as(app, adam, "system_vault_get_pepper_status", {})
    assert status.data["ciphertexts_by_version"] == {"2": 3} and status.data["latest_version"] == 2

    fin = await call_as(app, adam, "system_vault_finalize_pepper_rotation", {})
    assert fin.data["status"] == "approval_required"
    fin_approval = await call_as(app, ben, "system_approvals_get", {"approval_id": fin.data["approval_id"]})
    assert "no stored ciphertext is below it" in fin_approval.data["approval"]["summary"]
    done = await call_as(
        app,
        ben,
        "system_approvals_decide",
        {"approval_id": fin.data["approval_id"], "decision": "approve", "reason": "all rewrapped"},
    )
    assert done.ok, done.message
    result = done.data["approval"]["result"]
    assert (result["refused"], result["remaining_below"], result["min_decryption_version"]) == (False, 0, 2)

    trim = await call_as(app, adam, "system_vault_trim_pepper_key", {})
    assert trim.data["status"] == "approval_required"
    trim_approval = await call_as(app, ben, "system_approvals_get", {"approval_id": trim.data["approval_id"]})
    assert "IRREVERSIBLE" in trim_approval.data["approval"]["summary"]
    trimmed = await call_as(
        app,
        ben,
        "system_approvals_decide",
        {"approval_id": trim.data["approval_id"], "decision": "approve", "reason": "after backup window"},
    )
    assert trimmed.ok, trimmed.message
    assert trimmed.data["approval"]["result"]["deleted_versions"] == [1]
    verify = await call_as(app, adam, "system_vault_verify_credentials", {"account": "acme"})
    assert (verify.data["checked"], verify.data["failed"]) == (3, 0)


async def test_rotate_with_wait_streams_progress(app, tmp_path: Path) -> None:  # noqa: ANN001
    """An auto-approved call (here: a policy that lets everything through) runs the rotation in the call."""
    from fleet_mcp.policy.watcher import PolicyHolder
    from fleet_mcp.registry import catalog

    policy = tmp_path / "allow-all.yaml"
    policy.write_text("version: 1\ndefault: deny\nrules:\n  - name: all\n    match: {}\n    decision: auto_approve\n")
    app.policy = PolicyHolder(policy, catalog())
    ops = await make_caller(app, "acme", "ops", ("admin",))
    for i in range(5):
        out = await call_as(
            app, ops, "system_vault_store_credential", {"name": f"k{i}", "kind": "token", "secret": f"v{i}"}
        )
        assert out.ok, out.message
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    r = await call_as(
        app, ops, "system_rotate_vault_transit_pepper", {"wait": True, "batch_size": 2}, progress=on_progress
    )
    assert r.ok, r.message
    out = r.data
    assert out["waited"] and out["latest_version"] == 2
    assert out["job"]["status"] == "completed" and out["job"]["rewrapped"] == 5 and out["job"]["batches"] == 3
    done = [p for p, _, _ in seen]
    assert len(seen) >= 4 and done == sorted(done) and done[-1] == 5 and seen[-1][1] == 5
    assert "rotated fleet-pepper to v2" in (seen[0][2] or "")
    again = await call_as(app, ops, "system_vault_resume_rotation_job", {"job_id": out["job"]["id"]})
    assert not again.ok and "completed" in again.message
    busy_free = await call_as(app, ops, "system_rotate_vault_transit_pepper", {"reencrypt_existing": False})
    assert busy_free.ok and busy_free.data["job"]["status"] == "pending"  # runs in the background
    job = await _wait_for_job(app, ops, busy_free.data["job"]["id"])
    assert job["status"] == "completed" and job["to_version"] == 3
    fin = await call_as(app, ops, "system_vault_finalize_pepper_rotation", {})
    assert fin.data["refused"] and fin.data["remaining_below"] == 5  # rows are on v2, the key is on v3
    fin2 = await call_as(app, ops, "system_vault_finalize_pepper_rotation", {"min_decryption_version": 2})
    assert not fin2.data["refused"] and fin2.data["min_decryption_version"] == 2


async def test_server_start_resumes_interrupted_rotations(app) -> None:  # noqa: ANN001
    """The scheduler job picks up pending, paused and abandoned jobs on its first tick after start."""
    from sqlalchemy import update

    from fleet_mcp.vault import jobs as vault_jobs
    from fleet_mcp.vault.models import RotationJob
    from fleet_mcp.vault.rotation import RotationEngine

    ops = await make_caller(app, "acme", "ops", ("admin",))
    for i in range(4):
        assert (
            await call_as(
                app, ops, "system_vault_store_credential", {"name": f"r{i}", "kind": "generic", "secret": f"s{i}"}
            )
        ).ok
    job = await RotationEngine(app.sessionmaker, app.transit, batch_size=2).start(started_by="ops", run=False)
    async with app.sessionmaker() as s, s.begin():  # as if Vault had been down: paused with an error
        await s.execute(update(RotationJob).where(RotationJob.id == job.id).values(status="paused", error="x"))
    vault_jobs._first_tick_done = False
    assert await vault_jobs.resume_rotations(app) == 1  # launched in the background; its claim is audited
    await app.drain()
    done = await call_as(app, ops, "system_vault_get_rotation_job", {"job_id": job.id})
    assert done.data["job"]["status"] == "completed" and done.data["job"]["rewrapped"] == 4
    assert await vault_jobs.resume_rotations(app) == 0  # nothing left


async def test_vault_metadata_is_scoped_to_the_callers_account(app) -> None:  # noqa: ANN001
    """A viewer (or operator) of one account sees its own account's vault metadata only: pepper counts,
    verify, rotation job progress and failures, who started it. system.credentials.read_all (admin) sees all."""
    from sqlalchemy import update

    from fleet_mcp.db.models import FleetEvent
    from fleet_mcp.vault.rotation import RotationEngine

    adam = await make_caller(app, "acme", "adam", ("admin",))
    olga = await make_caller(app, "globex", "olga", ("operator",))
    vera = await make_caller(app, "globex", "vera", ("viewer",))
    for caller, names in ((adam, ["acme-db", "acme-ci", "acme-broken"]), (olga, ["globex-git"])):
        for name in names:
            out = await call_as(
                app, caller, "system_vault_store_credential", {"name": name, "kind": "token", "secret": f"{SECRET}{name}"}
            )
            assert out.ok, out.message
    async with app.sessionmaker() as s, s.begin():  # a damaged ciphertext: the rotation records a failure
        await s.execute(update(Credential).where(Credential.name == "acme-broken").values(ciphertext="vault:v1:AAAA"))
    job = await RotationEngine(app, app.transit, batch_size=2).start(started_by="acme/adam")
    assert job.status == "completed_with_failures"

    denied = await call_as(app, vera, "system_vault_verify_credentials", {"account": "acme"})
    assert not denied.ok and "system.credentials.read_all" in denied.message
    own = await call_as(app, vera, "system_vault_verify_credentials", {})
    assert (own.data["checked"], own.data["failed"]) == (1, 0)
    everyone = await call_as(app, adam, "system_vault_verify_credentials", {})
    assert (everyone.data["checked"], everyone.data["failed"]) == (4, 1)

    for viewer in (vera, olga):
        status = await call_as(app, viewer, "system_vault_get_pepper_status", {})
        assert status.ok, status.message
        assert status.data["ciphertexts_by_version"] == {"2": 1} and status.data["accounts_by_version"] == {"2": 1}
        assert status.data["total_ciphertexts"] == 1
        seen = await call_as(app, viewer, "system_vault_get_rotation_job", {"job_id": job.id})
        assert seen.ok, seen.message
        j = seen.data["job"]
        assert [a["name"] for a in j["accounts"]] == ["globex"]
        assert (j["total"], j["rewrapped"], j["failed"], j["errors"]) == (1, 1, 0, [])
        assert j["started_by"] == "(another account)"
        assert "acme" not in json.dumps(seen.data)

    full = await call_as(app, adam, "system_vault_get_rotation_job", {"job_id": job.id})
    j = full.data["job"]
    assert sorted(a["name"] for a in j["accounts"]) == ["acme", "globex"] and j["started_by"] == "acme/adam"
    assert [e["name"] for e in j["errors"]] == ["acme-broken"] and (j["total"], j["failed"]) == (4, 1)
    admin_status = await call_as(app, adam, "system_vault_get_pepper_status", {})
    assert admin_status.data["total_ciphertexts"] == 4

    # The end-of-job event goes to every account: it carries no counts or names.
    async with app.sessionmaker() as s:
        payloads = (
            await s.execute(select(FleetEvent.payload).where(FleetEvent.kind.like("vault.rotation_%")))
        ).scalars().all()
    assert payloads and all(set(p) <= {"job_id", "status", "to_version", "error"} for p in payloads)


async def test_rotation_runs_only_after_the_call_committed(app, tmp_path: Path) -> None:  # noqa: ANN001
    """The rotate call plans the job (pending, with its intent) in its own unit of work; the job's steps run
    after that commit, each committing on its own: while the job reports progress, the call's audit row and
    the planned job are already committed and visible to any other session."""
    from fleet_mcp.policy.watcher import PolicyHolder
    from fleet_mcp.registry import catalog
    from fleet_mcp.vault.models import RotationJob

    policy = tmp_path / "allow-all.yaml"
    policy.write_text("version: 1\ndefault: deny\nrules:\n  - name: all\n    match: {}\n    decision: auto_approve\n")
    app.policy = PolicyHolder(policy, catalog())
    ops = await make_caller(app, "acme", "ops", ("admin",))
    for i in range(3):
        assert (await call_as(app, ops, "system_vault_store_credential",
                              {"name": f"o{i}", "kind": "token", "secret": f"v{i}"})).ok
    seen: list[tuple[int, int | None, list[str]]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        async with app.read_sessionmaker() as s:
            job = (await s.execute(select(RotationJob))).scalar_one()
            calls = (
                await s.execute(
                    select(AuditEntry.outcome).where(
                        AuditEntry.tool == "system_rotate_vault_transit_pepper", AuditEntry.decision != "background"
                    )
                )
            ).scalars().all()
        seen.append((job.target_version, job.to_version, list(calls)))

    r = await call_as(app, ops, "system_rotate_vault_transit_pepper", {"wait": True, "batch_size": 2},
                      progress=on_progress)
    assert r.ok and r.data["waited"] and r.data["job"]["status"] == "completed", r.message
    assert seen and all(target == 2 and calls == ["ok"] for target, _, calls in seen)
    assert seen[0][1] == 2  # the first report comes after the rotation was recorded
