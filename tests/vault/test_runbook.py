"""docs/runbooks/vault-rotation.md, executed step by step through MCP clients: the operator (alice, admin)
and a second person (ben, approver), each connected to the server with the MCP SDK's client.

Each block is labelled with the runbook section it follows. At the end the audit log holds every step —
the rotation's claim, rotation, batches, accounts and end, finalize, the key-config change and trim —
each with its actor and the approval it ran under."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import Client
from sqlalchemy import select

from fleet_mcp.app import App
from fleet_mcp.db.models import AuditEntry
from fleet_mcp.server import build_server
from fleet_mcp.settings import Settings
from fleet_mcp.vault import rotation

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def connect(app: App) -> AsyncIterator[Any]:
    async with Client(build_server(app)[0]) as c:
        yield c


async def call(client: Any, tool: str, args: dict[str, Any] | None = None, *, error: bool = False) -> dict[str, Any]:
    r = await client.call_tool(tool, args or {})
    assert r.is_error == error, (tool, r.content)
    return r.structured_content


async def approve(ben: Any, queued: dict[str, Any], reason: str) -> dict[str, Any]:
    assert queued["status"] == "approval_required", queued
    decided = await call(ben, "system_approvals_decide",
                         {"approval_id": queued["approval_id"], "decision": "approve", "reason": reason})
    return decided["approval"]


async def test_the_rotation_runbook_end_to_end(app: App, settings: Settings) -> None:
    ben_app = App(settings.model_copy(update={"principal": "ben", "roles": "approver"}))
    await ben_app.start(migrate_db=False)
    try:
        async with connect(app) as alice, connect(ben_app) as ben:
            for i in range(7):
                await call(alice, "system_vault_store_credential",
                           {"name": f"svc-{i}", "kind": "api_key", "secret": f"s3cret-{i}"})

            # §1.1 Before you start: look; nothing active.
            status = await call(alice, "system_vault_get_pepper_status")
            assert status["active_job"] is None and status["latest_version"] == 1
            assert status["ciphertexts_by_version"] == {"1": 7}
            # §1.2 every secret decrypts today.
            assert (await call(alice, "system_vault_verify_credentials"))["failed"] == 0
            # §1.3 a backup was taken at this version: declare it.
            app.settings.pepper_backup_min_version = status["latest_version"]
            ben_app.settings.pepper_backup_min_version = status["latest_version"]

            # §2 Rotate and rewrap: queued for a second person, approved, run after the approval commits.
            queued = await call(alice, "system_rotate_vault_transit_pepper", {"batch_size": 3}, error=True)
            rotate_approval = queued["approval_id"]
            approval = await approve(ben, queued, "quarterly rotation")
            assert approval["status"] == "executed" and approval["result"]["job"]["status"] == "pending"
            job_id = approval["result"]["job"]["id"]
            finished = await rotation.wait_for_launched(job_id)  # launched once the approval committed
            assert finished is not None and finished.status == "completed"
            # §2 follow: the job's record.
            job = (await call(alice, "system_vault_get_rotation_job", {"job_id": job_id}))["job"]
            assert (job["status"], job["from_version"], job["to_version"]) == ("completed", 1, 2)
            assert (job["total"], job["rewrapped"], job["failed"], job["batches"]) == (7, 7, 0, 3)
            assert job["started_by"] == "acme/alice"

            # §3 Verify: only the new version, every account on it, every secret decrypts.
            status = await call(alice, "system_vault_get_pepper_status")
            assert status["ciphertexts_by_version"] == {"2": 7} and status["accounts_by_version"] == {"2": 1}
            verify = await call(alice, "system_vault_verify_credentials")
            assert (verify["checked"], verify["failed"]) == (7, 0)

            # §4 Finalize (approval): older versions stop decrypting.
            fin = await approve(ben, await call(alice, "system_vault_finalize_pepper_rotation", error=True),
                                "all rewrapped")
            assert fin["status"] == "executed"
            assert (fin["result"]["refused"], fin["result"]["min_decryption_version"]) == (False, 2)
            finalize_approval = fin["id"]

            # §5 Trim: refused while the declared backup needs v1 ...
            refused = await approve(ben, await call(alice, "system_vault_trim_pepper_key", error=True),
                                    "too early")
            assert refused["status"] == "failed" and "declared backup still needs key version v1" in json.dumps(
                refused["result"]
            )
            assert (await call(alice, "system_vault_get_pepper_status"))["min_available_version"] == 0
            # ... and done once that backup aged out and the declaration moved on.
            app.settings.pepper_backup_min_version = ben_app.settings.pepper_backup_min_version = 2
            trimmed = await approve(ben, await call(alice, "system_vault_trim_pepper_key", error=True),
                                    "after the backup window")
            assert trimmed["status"] == "executed" and trimmed["result"]["deleted_versions"] == [1]
            trim_approval = trimmed["id"]
            assert (await call(alice, "system_vault_verify_credentials"))["failed"] == 0

            for approval_id, decider in ((rotate_approval, "acme/ben"), (finalize_approval, "acme/ben")):
                got = (await call(alice, "system_approvals_get", {"approval_id": approval_id}))["approval"]
                assert got["decided_by"] == decider

        # Audit completeness: every step, with actor and the approval it ran under.
        async with app.sessionmaker() as s:
            rows = (await s.execute(select(AuditEntry).order_by(AuditEntry.seq))).scalars().all()
        rot = [r for r in rows if r.tool == rotation.AUDIT_TOOL]
        background = [r for r in rot if r.decision == "background"]
        assert [r.outcome for r in background][:2] == ["claimed", "rotated"]
        assert [r.outcome for r in background].count("batch_committed") == 3
        assert {"account_done", "completed"} <= {r.outcome for r in background}
        assert all((r.principal, r.approval_id) == ("acme/alice", rotate_approval) for r in background)
        executed = [r for r in rot if r.decision != "background" and r.approval_id == rotate_approval]
        assert executed and all(r.principal.endswith("alice") for r in executed)
        for tool, approval_id in (
            ("system_vault_finalize_pepper_rotation", finalize_approval),
            ("system_vault_trim_pepper_key", trim_approval),
        ):
            done = [r for r in rows if r.tool == tool and r.approval_id == approval_id and r.outcome == "ok"]
            assert done, (tool, [(r.decision, r.outcome, r.approval_id) for r in rows if r.tool == tool])
    finally:
        await ben_app.close()
