"""GitOps hardening, through the SDK client on the shipped policy (real git repositories, both databases)."""

from __future__ import annotations

import pytest

from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo

pytestmark = pytest.mark.anyio


def _ok(r) -> dict:  # noqa: ANN001
    assert not r.is_error, r.content
    return r.structured_content


def _error(r) -> str:  # noqa: ANN001
    assert r.is_error, r.structured_content
    return r.content[0].text


def _add_gitlink(repo: FleetRepo, path: str) -> str:
    """Commit a submodule entry (mode 160000, a gitlink) at `path`, pointing at the repository's own HEAD."""
    head = repo.git("rev-parse", "HEAD")
    repo.git("update-index", "--add", "--cacheinfo", f"160000,{head},{path}")
    repo.git("commit", "-q", "-m", f"submodule at {path}")
    return repo.git("rev-parse", "HEAD")


async def test_a_submodule_beside_fleet_yaml_is_skipped(client, fleet_repo) -> None:  # noqa: ANN001
    # 'a-sub' sorts before 'fleet.yaml': the tree walk meets the gitlink first and must pass it by.
    head = _add_gitlink(fleet_repo, "a-sub")
    repo = _ok(await client.call_tool("system_gitops_register_repository",
                                      {"name": "fleet", "repo_url": fleet_repo.url}))["repository"]
    run = _ok(await client.call_tool("system_gitops_sync_repository", {"repository_id": repo["id"]}))["sync_run"]
    assert (run["status"], run["revision"], run["diff_count"]) == ("success", head, 7)
    report = _ok(await client.call_tool("system_gitops_get_drift_report", {"repository_id": repo["id"]}))
    assert (report["revision"], report["diff_count"]) == (head, 7)


async def test_a_submodule_on_the_path_prefix_is_a_recorded_failure(client, fleet_repo) -> None:  # noqa: ANN001
    fleet_repo.commit({"prod/a/x.txt": "x\n"}, "a folder")
    head = _add_gitlink(fleet_repo, "prod/fleet")
    repo = _ok(await client.call_tool("system_gitops_register_repository", {
        "name": "fleet", "repo_url": fleet_repo.url, "path_prefix": "prod/fleet"}))["repository"]
    run = _ok(await client.call_tool("system_gitops_sync_repository", {"repository_id": repo["id"]}))["sync_run"]
    assert (run["status"], run["stage"], run["revision"]) == ("failed", "fetch", None)
    assert "prod/fleet is a submodule" in run["error"] and "path_prefix" in run["error"]
    runs = _ok(await client.call_tool("system_gitops_list_sync_runs", {"repository_id": repo["id"]}))
    assert [r["id"] for r in runs["sync_runs"]] == [run["id"]]
    got = _ok(await client.call_tool("system_gitops_get_repository", {"repository_id": repo["id"]}))["repository"]
    assert got["last_status"] == "failed" and "submodule" in got["last_error"]
    text = _error(await client.call_tool("system_gitops_get_drift_report", {"repository_id": repo["id"]}))
    assert "prod/fleet is a submodule" in text
    assert head  # the gitlink commit exists; it is the branch head that was refused


@pytest.mark.parametrize(
    ("branch", "problem"),
    [
        ("main\n", "control characters"),
        ("main\r", "control characters"),
        ("+main", "may not start with '+'"),
        ("refs/heads/main", "not a full ref"),
        ("refs/tags/v1", "not a full ref"),
        ("main@{1}", "characters that are not allowed"),
    ],
)
async def test_branch_must_be_a_plain_branch_name(client, fleet_repo, branch: str, problem: str) -> None:  # noqa: ANN001
    text = _error(await client.call_tool("system_gitops_register_repository",
                                         {"name": "fleet", "repo_url": fleet_repo.url, "branch": branch}))
    assert problem in text and "plain branch name" in text
    assert _ok(await client.call_tool("system_gitops_list_repositories", {}))["count"] == 0
    repo = _ok(await client.call_tool("system_gitops_register_repository",
                                      {"name": "fleet", "repo_url": fleet_repo.url}))["repository"]
    text = _error(await client.call_tool("system_gitops_update_repository",
                                         {"repository_id": repo["id"], "branch": branch}))
    assert problem in text
    got = _ok(await client.call_tool("system_gitops_get_repository", {"repository_id": repo["id"]}))["repository"]
    assert got["branch"] == "main"


async def test_plain_branch_names_still_accepted(client, fleet_repo) -> None:  # noqa: ANN001
    fleet_repo.git("branch", "release/2026-07")
    repo = _ok(await client.call_tool("system_gitops_register_repository", {
        "name": "fleet", "repo_url": fleet_repo.url, "branch": "release/2026-07"}))["repository"]
    run = _ok(await client.call_tool("system_gitops_sync_repository", {"repository_id": repo["id"]}))["sync_run"]
    assert run["status"] == "success"
    assert BASE_FLEET


async def test_names_with_a_trailing_newline_are_refused(client, fleet_repo) -> None:  # noqa: ANN001
    text = _error(await client.call_tool("system_gitops_register_repository",
                                         {"name": "fleet\n", "repo_url": fleet_repo.url}))
    assert "invalid repository name" in text
    text = _error(await client.call_tool("system_gitops_register_repository",
                                         {"name": "fleet", "repo_url": fleet_repo.url, "credential": "git\n"}))
    assert "invalid credential name" in text
    text = _error(await client.call_tool("system_put_template", {"name": "web\n", "spec": {}}))
    assert "invalid template name" in text
    text = _error(await client.call_tool("system_assign_module_to_template", {"template": "web", "module": "m\n"}))
    assert "invalid assignment name" in text
    assert _ok(await client.call_tool("system_list_templates", {}))["count"] == 0
    assert _ok(await client.call_tool("system_gitops_list_repositories", {}))["count"] == 0
