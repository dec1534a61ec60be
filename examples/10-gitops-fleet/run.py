"""A fleet managed from git through fleet-mcp over a real MCP stdio client: sync, approve, apply, stale, drift.

A local git repository gets a fleet.yaml; the operator registers it, syncs, reviews the proposals
and applies them (the shipped policy asks for approval; this script answers as the operator at
the client and prints the field-level diff it was shown). Then git and a hand edit disagree: the
apply is refused as stale and changes nothing, the drift sensor reports drift, a fresh sync based
on the edited resource is applied, and the sensor reports the drift resolved.

    python examples/10-gitops-fleet/run.py [--keep] [--policy FILE]

Exits non-zero when any step does not behave as described (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp_types import ElicitResult

FLEET_YAML = """\
templates:
  web:
    description: Web nodes
    node_platform: linux
    provider_region: eu-west-1
    instance_type: m5.large
    metadata: {team: web}
modules:
  nginx: {variety: role, priority: 10, version: "1.25", config: {workers: 4}}
  node-exporter: {variety: subscription}
assignments:
  web:nginx: {priority: 1}
  web:node-exporter: {}
provider_configs:
  aws-eu: {provider: aws, region: eu-west-1, settings: {credential: aws-prod}}
fleet: {default_template: web, provider: aws}
"""


class Step(RuntimeError):
    pass


class Run:
    def __init__(self, data_dir: Path, repo_dir: Path, policy: Path | None) -> None:
        self.data_dir, self.repo_dir, self.policy, self.n = data_dir, repo_dir, policy, 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_MCP_")}
        env.update(
            {
                "FLEET_MCP_DATA_DIR": str(self.data_dir),
                "FLEET_MCP_ACCOUNT": "acme",
                "FLEET_MCP_PRINCIPAL": "alice",
                "FLEET_MCP_ROLES": "operator",
                "FLEET_MCP_ALLOW_LOCAL_REPOS": "1",  # a local repository: demos and tests only
                "FLEET_MCP_DRIFT_INTERVAL": "1",
                "FLEET_MCP_LOG_LEVEL": "WARNING",
            }
        )
        if self.policy:
            env["FLEET_MCP_POLICY"] = str(self.policy)
        return env

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.test",
               "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.test",
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
        done = subprocess.run(["git", "-C", str(self.repo_dir), *args], env=env, check=True, capture_output=True,
                              text=True)
        return done.stdout.strip()

    def commit(self, text: str, message: str) -> str:
        (self.repo_dir / "fleet.yaml").write_text(text)
        self.git("add", "fleet.yaml")
        self.git("commit", "-q", "-m", message)
        sha = self.git("rev-parse", "HEAD")
        print(f"\n  git: {message} ({sha[:12]})")
        return sha

    async def approve(self, _ctx: Any, params: Any) -> ElicitResult:
        lines = params.message.splitlines()
        print(f"       ? {lines[0]}")
        effect = [line for line in lines if line.startswith("Effect:")]
        if effect:
            start = lines.index(effect[0])
            for line in lines[start:start + 12]:
                print(f"       | {line}")
        print("       ! the operator approves")
        return ElicitResult(action="accept", content={"approve": True})

    def client(self) -> Client:
        params = StdioServerParameters(command=sys.executable, args=["-m", "fleet_mcp", "serve"], env=self.env())
        return Client(params, elicitation_callback=self.approve)

    async def call(self, client: Client, tool: str, args: dict[str, Any] | None = None, *,
                   expect_error: bool = False) -> dict[str, Any]:
        self.n += 1
        print(f"\n{self.n:>3}. alice → {tool} {json.dumps(args or {})}")
        r = await client.call_tool(tool, args or {})
        text = r.content[0].text if r.content else ""
        if r.is_error != expect_error:
            raise Step(f"step {self.n} {tool}: unexpected {'error' if r.is_error else 'success'}: {text}")
        if r.is_error:
            print(f"     ✗ refused as expected: {text}")
        return r.structured_content or {}

    async def wait_until_in_sync(self, client: Client, repo_id: int) -> None:
        """Let the drift sensor catch up with the apply (it may have seen the drift before it)."""
        with anyio.fail_after(30):
            while True:
                r = await client.call_tool("system_gitops_get_repository", {"repository_id": repo_id})
                if not r.structured_content["repository"]["drift_detected"]:
                    return
                await anyio.sleep(0.5)

    async def wait_for_signal(self, client: Client, kind: str, after_id: int) -> dict[str, Any]:
        """Poll recent signals until the drift sensor (every second here) emits `kind`."""
        with anyio.fail_after(30):
            while True:
                r = await client.call_tool("system_recent_signals", {"kind": "gitops.drift*", "limit": 10})
                for e in r.structured_content["events"]:
                    if e["kind"] == kind and e["id"] > after_id:
                        return e
                await anyio.sleep(0.5)


def show_run(run: dict[str, Any]) -> None:
    s = run["diff_summary"]
    print(f"     ✓ sync run {run['id']}: {run['status']} at {run['revision'][:12]}, {run['diff_count']} change(s) "
          f"{s['by_action']}, proposals {run['proposal_ids']}")


def show_proposals(proposals: list[dict[str, Any]]) -> None:
    for p in proposals:
        print(f"       #{p['id']} {p['action']:<6} {p['kind']:<15} {p['name']:<20} risk {p['risk']:<6} {p['status']}")
        for f in p["fields"][:4]:
            print(f"            {f['path']}: {json.dumps(f['live'])} → {json.dumps(f['desired'])}")


async def main(keep: bool, policy: Path | None) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="fleet-gitops-example-"))
    repo_dir = data_dir / "fleet-repo"
    repo_dir.mkdir()
    run = Run(data_dir / "server", repo_dir, policy)
    print(f"data dir {data_dir}")
    try:
        run.git("init", "-q", "-b", "main")
        run.commit(FLEET_YAML, "initial fleet")
        async with run.client() as c:
            repo = (await run.call(c, "system_gitops_register_repository",
                                   {"name": "fleet", "repo_url": str(repo_dir)}))["repository"]
            repo_id = repo["id"]
            print(f"     ✓ repository {repo_id} registered ({repo['branch']}, last_status {repo['last_status']})")
            await run.call(c, "system_gitops_register_repository",
                           {"name": "evil", "repo_url": "ext::sh -c touch% /tmp/pwned"}, expect_error=True)

            synced = (await run.call(c, "system_gitops_sync_repository", {"repository_id": repo_id}))["sync_run"]
            show_run(synced)
            listed = await run.call(c, "system_gitops_list_proposals", {"sync_run_id": synced["id"]})
            show_proposals(listed["proposals"])

            applied = await run.call(c, "system_gitops_apply_sync_run", {"sync_run_id": synced["id"]})
            if not applied["applied"]:
                raise Step(f"apply failed: {applied['error']}")
            print(f"     ✓ applied {len(applied['results'])} proposals in one transaction")
            modules = (await run.call(c, "system_list_modules"))["items"]
            for m in modules:
                print(f"       {m['name']}: revision {m['revision']}, managed_by {m['managed_by']}")
            report = await run.call(c, "system_gitops_get_drift_report", {"repository_id": repo_id})
            if report["drift"]:
                raise Step("drift right after applying everything")
            print("     ✓ no drift: live state equals git")
            await run.wait_until_in_sync(c, repo_id)
            signals = await run.call(c, "system_recent_signals", {"kind": "gitops.drift*", "limit": 1})
            last_id = signals["events"][0]["id"] if signals["events"] else 0

            # Git and a hand edit now disagree about nginx.
            run.commit(FLEET_YAML.replace("priority: 10", "priority: 20"), "nginx priority 20")
            second = (await run.call(c, "system_gitops_sync_repository", {"repository_id": repo_id}))["sync_run"]
            show_run(second)
            (pid,) = second["proposal_ids"]
            edited = await run.call(c, "system_put_module", {"name": "nginx", "spec": {
                "variety": "role", "priority": 99, "version": "1.25", "config": {"workers": 4}}})
            print(f"     ✓ nginx edited by hand: revision {edited['item']['revision']}, "
                  f"managed_by {edited['item']['managed_by']}")

            stale = await run.call(c, "system_gitops_apply_proposal", {"proposal_id": pid})
            if stale["applied"] or not stale["conflict"] or stale["proposal"]["status"] != "stale":
                raise Step("the apply was not refused as stale")
            print(f"     ✓ refused as stale, nothing changed: {stale['error']}")
            nginx = (await run.call(c, "system_get_module", {"name": "nginx"}))["item"]
            if nginx["spec"]["priority"] != 99:
                raise Step("a stale apply changed live state")

            detected = await run.wait_for_signal(c, "gitops.drift_detected", last_id)
            print(f"     ✓ drift sensor: {detected['kind']} ({detected['severity']}), "
                  f"{detected['payload']['diff_count']} change(s)")
            report = await run.call(c, "system_gitops_get_drift_report", {"repository_id": repo_id})
            for ch in report["changes"]:
                for f in ch["fields"]:
                    print(f"       {ch['kind']} {ch['name']}: {f['path']} live {f['live']} → git {f['desired']}")

            # The fix: sync again, so the proposal is based on the edited module and shows what it overwrites.
            third = (await run.call(c, "system_gitops_sync_repository", {"repository_id": repo_id}))["sync_run"]
            show_run(third)
            fixed = await run.call(c, "system_gitops_apply_proposal", {"proposal_id": third["proposal_ids"][0]})
            if not fixed["applied"]:
                raise Step(f"the fresh proposal did not apply: {fixed['error']}")
            print(f"     ✓ applied proposal {fixed['proposal']['id']}: nginx priority "
                  f"{fixed['proposal']['fields'][0]['live']} → {fixed['proposal']['fields'][0]['desired']}")
            resolved = await run.wait_for_signal(c, "gitops.drift_resolved", detected["id"])
            print(f"     ✓ drift sensor: {resolved['kind']}")
            final = await run.call(c, "system_gitops_get_repository", {"repository_id": repo_id})
            r = final["repository"]
            print(f"     ✓ repository: last_status {r['last_status']}, revision {r['last_synced_revision'][:12]}, "
                  f"drift {r['drift_detected']}; {len(final['recent_sync_runs'])} recent sync runs")
        print(f"\nexample finished: {run.n} calls")
        return 0
    except (Step, subprocess.CalledProcessError, TimeoutError) as exc:
        print(f"\nexample FAILED: {exc!r}", file=sys.stderr)
        return 1
    finally:
        if keep:
            print(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    parser.add_argument("--policy", type=Path, default=None, help="policy file (default: the shipped one)")
    ns = parser.parse_args()
    sys.exit(anyio.run(main, ns.keep, ns.policy))
