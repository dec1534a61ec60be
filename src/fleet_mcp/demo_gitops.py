"""The GitOps section of `fleet-mcp demo` (client-side presentation: it drives the tools and prints):
a local repository, sync, per-change proposals, atomic apply, a hand edit that makes a proposal
stale, and the fix."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

FLEET_YAML = """\
templates:
  web: {description: web tier, node_platform: linux, instance_type: t3.small}
modules:
  nginx: {variety: role, priority: 10, version: "1.25"}
  node-exporter: {variety: subscription}
assignments:
  web:nginx: {priority: 1}
  web:node-exporter: {}
"""


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.test",
           "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.test",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def _commit(repo: Path, text: str, message: str) -> None:
    (repo / "fleet.yaml").write_text(text)
    _git(repo, "add", "fleet.yaml")
    _git(repo, "commit", "-q", "-m", message)
    print(f"\n  git commit: {message} ({_git(repo, 'rev-parse', 'HEAD')[:12]})")


def _run(r: dict[str, Any]) -> str:
    run = r["sync_run"]
    return (f"sync run {run['id']}: {run['status']}, {run['diff_count']} change(s) "
            f"{run['diff_summary'].get('by_action', {})}, proposals {run['proposal_ids']}")


async def gitops_section(d: Any, *, alice: Any, **_: Any) -> None:
    d.section("GitOps: proposals per change, atomic apply, refuse on conflict")
    repo = Path(d.data_dir) / "fleet-repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _commit(repo, FLEET_YAML, "initial fleet")
    r = await d.call(alice, "alice", "system_gitops_register_repository", {"name": "fleet", "repo_url": str(repo)},
                     show=lambda r: f"repository {r['repository']['id']} registered")
    repo_id = r["repository"]["id"]
    await d.call(alice, "alice", "system_gitops_register_repository",
                 {"name": "evil", "repo_url": "ext::sh -c touch% /tmp/pwned"}, expect_error=True)
    synced = await d.call(alice, "alice", "system_gitops_sync_repository", {"repository_id": repo_id}, show=_run)
    run_id = synced["sync_run"]["id"]
    await d.call(alice, "alice", "system_gitops_apply_sync_run", {"sync_run_id": run_id},
                 show=lambda r: f"applied={r['applied']}: {len(r['results'])} proposals in one transaction")

    _commit(repo, FLEET_YAML.replace("priority: 10", "priority: 20"), "nginx priority 20")
    second = await d.call(alice, "alice", "system_gitops_sync_repository", {"repository_id": repo_id}, show=_run)
    (proposal_id,) = second["sync_run"]["proposal_ids"]
    await d.call(alice, "alice", "system_put_module",
                 {"name": "nginx", "spec": {"variety": "role", "priority": 99, "version": "1.25"}},
                 show=lambda r: f"nginx edited by hand (revision {r['item']['revision']})")
    await d.call(alice, "alice", "system_gitops_apply_proposal", {"proposal_id": proposal_id},
                 show=lambda r: f"refused: conflict={r['conflict']}, proposal {r['proposal']['status']}; "
                                "nothing changed")
    third = await d.call(alice, "alice", "system_gitops_sync_repository", {"repository_id": repo_id}, show=_run)
    (fresh,) = third["sync_run"]["proposal_ids"]
    await d.call(alice, "alice", "system_gitops_apply_proposal", {"proposal_id": fresh},
                 show=lambda r: f"applied={r['applied']} on the current live state")
    await d.call(alice, "alice", "system_gitops_get_drift_report", {"repository_id": repo_id},
                 show=lambda r: f"drift={r['drift']}: live state equals git at {r['revision'][:12]}")
