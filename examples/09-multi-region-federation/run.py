"""Two regions' accounts federate through fleet-mcp over real MCP stdio clients, then the trust is revoked.

acme (eu-west) proposes, hands the one-time token to globex (us-east), a wrong token is refused, globex
accepts, a real mutual-TLS handshake makes the peer active, the governance scan is clean, globex revokes
and the same handshake fails in both directions. Approval questions of the shipped policy are answered
"approve" by this script, playing the operator at the client.

    python examples/09-multi-region-federation/run.py [--keep] [--policy FILE]

Exits non-zero when any step does not behave as described (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from subprocess import CalledProcessError
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp_types import ElicitResult

ACCOUNTS = {"acme": "acme.eu-west.fleet.example", "globex": "globex.us-east.fleet.example"}


class Step(RuntimeError):
    pass


class Run:
    def __init__(self, data_dir: Path, policy: Path | None) -> None:
        self.data_dir, self.policy, self.n = data_dir, policy, 0

    def env(self, account: str, principal: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_MCP_")}
        env.update(
            {
                "FLEET_MCP_DATA_DIR": str(self.data_dir),
                "FLEET_MCP_ACCOUNT": account,
                "FLEET_MCP_PRINCIPAL": principal,
                "FLEET_MCP_ROLES": "operator",
                "FLEET_MCP_SCHEDULER": "false",
                "FLEET_MCP_LOG_LEVEL": "WARNING",
            }
        )
        if self.policy:
            env["FLEET_MCP_POLICY"] = str(self.policy)
        return env

    async def approve(self, _ctx: Any, params: Any) -> ElicitResult:
        first = params.message.splitlines()[0]
        print(f"       ? {first}\n       ! the operator approves")
        return ElicitResult(action="accept", content={"approve": True})

    def client(self, account: str, principal: str) -> Client:
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "fleet_mcp", "serve"], env=self.env(account, principal)
        )
        return Client(params, elicitation_callback=self.approve)

    async def call(
        self, client: Client, who: str, tool: str, args: dict[str, Any] | None = None, *, expect_error: bool = False
    ) -> dict[str, Any]:
        self.n += 1
        shown = {k: ("***" if "token" in k and k != "token_ttl_seconds" else v) for k, v in (args or {}).items()}
        print(f"\n{self.n:>3}. {who} → {tool} {json.dumps(shown)}")
        r = await client.call_tool(tool, args or {})
        text = r.content[0].text if r.content else ""
        if r.is_error != expect_error:
            raise Step(f"step {self.n} {tool}: unexpected {'error' if r.is_error else 'success'}: {text}")
        if r.is_error:
            print(f"     ✗ refused as expected: {text}")
        return r.structured_content or {}


def show_directions(result: dict[str, Any]) -> None:
    for d in result["directions"]:
        mark = "✓" if d["ok"] else "✗"
        print(f"     {mark} {d['from']} → {d['to']}: {d['tls_version'] or d['error']}")


async def main(keep: bool, policy: Path | None) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="fleet-fed-example-"))
    run = Run(data_dir, policy)
    print(f"data dir {data_dir}")
    try:
        for name, domain in ACCOUNTS.items():
            done = await anyio.run_process(
                [sys.executable, "-m", "fleet_mcp", "account", "create", name, "--federation-domain", domain],
                env=run.env("default", "setup"),
                check=True,
            )
            print(done.stdout.decode().strip())
        async with AsyncExitStack() as stack:
            alice = await stack.enter_async_context(run.client("acme", "alice"))  # eu-west operator
            gina = await stack.enter_async_context(run.client("globex", "gina"))  # us-east operator

            proposal = await run.call(
                alice,
                "alice@acme",
                "system_sdwan_propose_federation_peer",
                {"remote_account": "globex", "remote_prefix_advertisement": "10.20.0.0/16", "token_ttl_seconds": 3600},
            )
            peer_id, token = proposal["federation_peer"]["id"], proposal["acceptance_token"]
            print(
                f"     ✓ peer {peer_id} proposed; one-time token {token[:12]}… valid until "
                f"{proposal['acceptance_token_expires_at']} (handed to globex out of band)"
            )

            head, secret = token.split(".")
            wrong = f"{head}.{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"
            await run.call(
                gina,
                "gina@globex",
                "system_sdwan_accept_federation_peer",
                {"federation_peer_id": peer_id, "acceptance_token": wrong},
                expect_error=True,
            )

            accepted = await run.call(
                gina,
                "gina@globex",
                "system_sdwan_accept_federation_peer",
                {"federation_peer_id": peer_id, "acceptance_token": token},
            )
            for c in accepted["cross_certificates"]:
                print(
                    f"     ✓ {c['signed_by']} root cross-signed {c['signed_for']}'s intermediate "
                    f"(serial {c['serial'][:12]}…, limited to {', '.join(c['name_constraints'])}, "
                    f"until {c['not_after']})"
                )
            bundle = await run.call(alice, "alice@acme", "system_sdwan_get_trust_bundle")
            print(
                f"     ✓ acme's bundle: version {bundle['bundle_version']}, {bundle['certificate_count']} certificates"
            )

            verified = await run.call(
                alice, "alice@acme", "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_id}
            )
            show_directions(verified)
            if not verified["ok"] or verified["federation_peer"]["status"] != "active":
                raise Step("the cross-account handshake did not make the peer active")
            print("     ✓ peer is active")

            scan = await run.call(gina, "gina@globex", "system_sdwan_federation_scan")
            print(f"     ✓ {scan['finding_count']} findings {scan['severity_summary']}")
            if scan["finding_count"]:
                raise Step(f"unexpected findings: {scan['findings']}")

            revoked = await run.call(
                gina,
                "gina@globex",
                "system_sdwan_revoke_federation_peer",
                {"federation_peer_id": peer_id, "reason": "region decommissioned"},
            )
            print(
                f"     ✓ status {revoked['federation_peer']['status']}; cross certificates "
                f"{sorted({c['state'] for c in revoked['federation_peer']['cross_certificates']})}"
            )
            after = await run.call(alice, "alice@acme", "system_sdwan_get_trust_bundle")
            print(
                f"     ✓ acme's bundle: version {after['bundle_version']}, "
                f"{after['certificate_count']} certificate (the cross certificate left)"
            )

            failed = await run.call(
                alice, "alice@acme", "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_id}
            )
            show_directions(failed)
            if failed["ok"] or any(d["ok"] for d in failed["directions"]):
                raise Step("a handshake still worked after revocation")
            print("     ✓ after revocation the handshake fails in both directions")
        print(f"\nexample finished: {run.n} calls")
        return 0
    except (Step, CalledProcessError) as exc:
        print(f"\nexample FAILED: {exc}", file=sys.stderr)
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
