"""A rotation approved from a shell (`fleet-mcp approvals approve ID`) runs to its end in that command:
the job no longer stays `pending` because the command exited right after the approval committed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fleet_mcp.app import App
from fleet_mcp.settings import Settings
from tests.conftest import call_as, cli_env, make_caller, run_cli

pytestmark = pytest.mark.anyio


async def test_rotation_approved_from_the_cli_runs_to_the_end_in_the_command(tmp_path: Path, fresh_db_url: str) -> None:
    data = tmp_path / "data"
    alice = cli_env(data, fresh_db_url, FLEET_MCP_ACCOUNT="acme", FLEET_MCP_PRINCIPAL="alice", FLEET_MCP_ROLES="admin")
    ben = cli_env(data, fresh_db_url, FLEET_MCP_ACCOUNT="acme", FLEET_MCP_PRINCIPAL="ben", FLEET_MCP_ROLES="approver")
    run_cli(alice, "audit", "verify")  # creates the database, the keyring and alice

    settings = Settings(data_dir=data, database_url=fresh_db_url, account="acme", principal="alice", roles="admin",
                        scheduler=False)
    app = await App(settings).start(migrate_db=False)
    try:
        caller = await make_caller(app, "acme", "alice", ("admin",))
        for i in range(5):
            out = await call_as(app, caller, "system_vault_store_credential",
                                {"name": f"c{i}", "kind": "token", "secret": f"s3cret-{i}"})
            assert out.ok, out.message
    finally:
        await app.close()

    queued = run_cli(alice, "rotate-pepper", "--batch-size", "2", check=False)
    assert queued.returncode == 1 and "needs approval" in queued.stderr
    approval_id = re.search(r"Approval request (\S+) is queued", queued.stderr).group(1)  # type: ignore[union-attr]

    approved = run_cli(ben, "approvals", "approve", approval_id, "--reason", "quarterly")
    assert json.loads(approved.stdout)["approval"]["status"] == "executed"
    assert "runs here, in this process, until it ends" in approved.stderr
    assert re.search(r"rotation job \d+ completed: 5 rewrapped, 0 failed", approved.stderr), approved.stderr

    app = await App(settings).start(migrate_db=False)
    try:
        caller = await make_caller(app, "acme", "alice", ("admin",))
        status = await call_as(app, caller, "system_vault_get_pepper_status", {})
        assert status.data["active_job"] is None and status.data["ciphertexts_by_version"] == {"2": 5}
    finally:
        await app.close()
