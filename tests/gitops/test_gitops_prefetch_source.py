"""A sync records what the repository row says *now*: a change of branch, path_prefix or credential
between the tool's prefetch (git runs before the unit of work opens) and the sync itself must not
record the old source's content.

Real parts: a `git http-backend` HTTPS server whose auth hook fires while the prefetch's git is
running; from there the test changes the repository through the update tool (the event loop is free:
the gate is awaiting git in a worker thread), so the change lands exactly between prefetch and sync.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from fleet_mcp.vault.credentials import CredentialStore
from tests.conftest import call_as
from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo
from tests.gitops.gitops_servers import GitHTTPSServer

pytestmark = pytest.mark.anyio
TOKEN = "ghp-Prefetch-Token-1"
OTHER = "templates:\n  other: {description: only on the other source}\n"


def _ok(r) -> dict:  # noqa: ANN001
    assert not r.is_error, r.content
    return r.structured_content


@pytest.mark.parametrize("change", ["branch", "path_prefix", "credential"])
async def test_a_source_change_during_prefetch_is_not_recorded_as_the_old_content(
    client, app, fleet_repo: FleetRepo, tmp_path: Path, monkeypatch, change: str  # noqa: ANN001
) -> None:
    main_head = fleet_repo.git("rev-parse", "HEAD")
    fleet_repo.git("checkout", "-q", "-b", "other")
    other_head = fleet_repo.commit({"fleet.yaml": OTHER, "sub/fleet.yaml": OTHER}, "other source")
    fleet_repo.git("checkout", "-q", "main")
    fleet_repo.commit({"sub/fleet.yaml": OTHER}, "sub folder on main")
    main_head = fleet_repo.git("rev-parse", "HEAD")
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(fleet_repo.path), str(served / "fleet.git")], check=True)

    loop = asyncio.get_running_loop()
    changed: list[dict] = []
    repo_id: list[int] = []

    def during_fetch() -> None:
        """Runs in the HTTP server's thread while git fetches for the prefetch: change the source once."""
        if changed or not repo_id:
            return
        arguments = {"repository_id": repo_id[0], **{
            "branch": {"branch": "other"},
            "path_prefix": {"path_prefix": "sub"},
            "credential": {"credential": "second"},
        }[change]}
        done = asyncio.run_coroutine_threadsafe(
            call_as(app, app.stdio_caller, "system_gitops_update_repository", arguments), loop).result(timeout=60)
        changed.append(done.data)

    server = GitHTTPSServer(served, tmp_path, username="deploy", password=TOKEN, on_auth=during_fetch)
    monkeypatch.setenv("GIT_SSL_CAINFO", str(server.cert_file))
    with server:
        # "second" holds a token the server refuses: a sync with it must fail, whatever "first" fetched.
        for name, token in (("first", TOKEN), ("second", "revoked-Token-2")):
            async with app.sessionmaker() as s, s.begin():
                await CredentialStore(app.transit).store(
                    s, account_id=app.stdio_caller.account_id, name=name, kind="git_https", secret=SecretStr(token),
                    metadata={"username": "deploy", "host": server.netloc})
        repo = _ok(await client.call_tool("system_gitops_register_repository", {
            "name": "fleet", "repo_url": server.url("fleet.git"), "credential": "first"}))["repository"]
        repo_id.append(repo["id"])
        run = _ok(await client.call_tool("system_gitops_sync_repository", {"repository_id": repo["id"]}))["sync_run"]

    assert changed and "repository" in changed[0], changed  # the change really landed during the prefetch
    got = _ok(await client.call_tool("system_gitops_get_repository", {"repository_id": repo["id"]}))["repository"]
    assert got[change] == {"branch": "other", "path_prefix": "sub", "credential": "second"}[change]
    if change == "branch":
        assert (run["status"], run["revision"], run["diff_count"]) == ("success", other_head, 1)
    elif change == "path_prefix":  # sub/fleet.yaml (one template), not the root's seven resources
        assert (run["status"], run["revision"], run["diff_count"]) == ("success", main_head, 1)
    else:
        assert (run["status"], run["stage"]) == ("failed", "fetch") and "authentication failed" in run["error"]
    assert BASE_FLEET
