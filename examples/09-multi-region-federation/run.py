"""Two regions, two fleet-mcp instances, one federation: acme's control plane in eu-west and globex's in
us-east each run their own `fleet-mcp serve` (own data dir, database and keyring) with a federation
endpoint, and their operators drive them over real MCP stdio clients.

alice (eu-west) proposes to globex on the other instance and gets a peering token (endpoint, pinned CA,
one-time secret, expiry); gina (us-east) accepts it: her instance dials eu-west, checks the pin, presents
the secret, and each root cross-signs the other's intermediate for the other's domain only. A forged
token pointing at the wrong endpoint is refused; a real mutual-TLS handshake between fresh nodes of both
regions makes the peer active; gina revokes, eu-west hears it at once, and the handshake fails. Approval
questions of the shipped policy are answered "approve" by this script, playing the operators.

    python examples/09-multi-region-federation/run.py [--keep] [--policy FILE]

Exits non-zero when any step does not behave as described (CI runs it).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from subprocess import CalledProcessError
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp_types import ElicitResult

REGIONS = {
    "eu-west": ("acme", "acme.eu-west.fleet.example"),
    "us-east": ("globex", "globex.us-east.fleet.example"),
}


class Step(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    def __init__(self, base: Path, policy: Path | None) -> None:
        self.base, self.policy, self.n = base, policy, 0
        self.ports = {region: free_port() for region in REGIONS}

    def env(self, region: str, account: str, principal: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_MCP_")}
        env.update(
            {
                "FLEET_MCP_DATA_DIR": str(self.base / region),  # one instance per region: own DB and keyring
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

    def client(self, region: str, principal: str) -> Client:
        account, _ = REGIONS[region]
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "fleet_mcp", "serve", "--federation-listen", f"127.0.0.1:{self.ports[region]}"],
            env=self.env(region, account, principal),
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
        print(f"     {mark} {d['from']} → {d['to']}: {'verified' if d['ok'] else d['error']}")


def forge_endpoint(token: str, endpoint: str) -> str:
    """What a man in the middle would hand out: the same token, another endpoint (with another CA)."""
    body = token.split(".", 1)[1]
    doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    doc["ep"] = [endpoint]
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return "fmcp-peering-v1." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def main(keep: bool, policy: Path | None) -> int:
    base = Path(tempfile.mkdtemp(prefix="fleet-fed-example-"))
    run = Run(base, policy)
    print(f"data dirs under {base}")
    try:
        for region, (name, domain) in REGIONS.items():
            done = await anyio.run_process(
                [sys.executable, "-m", "fleet_mcp", "account", "create", name, "--federation-domain", domain],
                env=run.env(region, "default", "setup"),
                check=True,
            )
            print(f"[{region}] {done.stdout.decode().strip()}")
        async with AsyncExitStack() as stack:
            alice = await stack.enter_async_context(run.client("eu-west", "alice"))
            gina = await stack.enter_async_context(run.client("us-east", "gina"))

            proposal = await run.call(
                alice,
                "alice@acme (eu-west)",
                "system_sdwan_propose_federation_peer",
                {
                    "remote_account": "globex",
                    "remote_federation_domain": REGIONS["us-east"][1],
                    "remote_prefix_advertisement": "10.20.0.0/16",
                    "token_ttl_seconds": 3600,
                },
            )
            peer_a, token = proposal["federation_peer"]["id"], proposal["peering_token"]
            print(f"     ✓ peer {peer_a} proposed; peering token {token[:24]}… shown once (handed to us-east)")

            await run.call(
                gina,
                "gina@globex (us-east)",
                "system_sdwan_accept_remote_federation_peer",
                {"peering_token": forge_endpoint(token, f"https://127.0.0.1:{run.ports['us-east']}")},
                expect_error=True,
            )
            accepted = await run.call(
                gina, "gina@globex (us-east)", "system_sdwan_accept_remote_federation_peer", {"peering_token": token}
            )
            peer_b = accepted["federation_peer"]["id"]
            for c in accepted["cross_certificates"]:
                print(
                    f"     ✓ {c['signed_by']} root cross-signed {c['signed_for']}'s intermediate "
                    f"(limited to {', '.join(c['name_constraints'])}, until {c['not_after']})"
                )
            peer = (
                await run.call(alice, "alice@acme (eu-west)", "system_sdwan_get_federation_peer",
                               {"federation_peer_id": peer_a})
            )["federation_peer"]
            print(f"     ✓ eu-west sees peer {peer_a} {peer['status']} with {peer['remote_account']}")

            verified = await run.call(
                alice, "alice@acme (eu-west)", "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_a}
            )
            show_directions(verified)
            if not verified["ok"] or verified["federation_peer"]["status"] != "active":
                raise Step("the cross-region handshake did not make the peer active")
            back = await run.call(
                gina, "gina@globex (us-east)", "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_b}
            )
            show_directions(back)
            if not back["ok"]:
                raise Step("the handshake from us-east failed")
            print("     ✓ peer is active on both instances")

            scan = await run.call(gina, "gina@globex (us-east)", "system_sdwan_federation_scan")
            print(f"     ✓ {scan['finding_count']} findings {scan['severity_summary']}")
            if scan["finding_count"]:
                raise Step(f"unexpected findings: {scan['findings']}")

            revoked = await run.call(
                gina,
                "gina@globex (us-east)",
                "system_sdwan_revoke_federation_peer",
                {"federation_peer_id": peer_b, "reason": "region decommissioned"},
            )
            print(f"     ✓ us-east: {revoked['federation_peer']['status']}")
            seen = (
                await run.call(alice, "alice@acme (eu-west)", "system_sdwan_get_federation_peer",
                               {"federation_peer_id": peer_a})
            )["federation_peer"]
            if seen["status"] != "revoked":
                raise Step("eu-west did not hear about the revocation")
            print("     ✓ eu-west heard it at once: revoked, its cross certificate left its bundle")
            failed = await run.call(
                alice, "alice@acme (eu-west)", "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_a}
            )
            show_directions(failed)
            if failed["ok"]:
                raise Step("a handshake still worked after revocation")
            print("     ✓ after revocation the handshake fails")
        print(f"\nexample finished: {run.n} calls")
        return 0
    except (Step, CalledProcessError) as exc:
        print(f"\nexample FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    parser.add_argument("--policy", type=Path, default=None, help="policy file (default: the shipped one)")
    ns = parser.parse_args()
    sys.exit(anyio.run(main, ns.keep, ns.policy))
