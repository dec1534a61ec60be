"""`fleet-mcp demo`: the main job end to end on embedded defaults, through real MCP clients over stdio."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import textwrap
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from mcp_types import ElicitResult

from fleet_mcp.audit import mask


class Demo:
    """Prints each step readably; plays the human at the client by accepting approval questions."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.n = 0
        self.questions: list[str] = []

    def env(self, account: str, principal: str, roles: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_MCP_")}
        env.update({
            "FLEET_MCP_DATA_DIR": str(self.data_dir),
            "FLEET_MCP_ACCOUNT": account,
            "FLEET_MCP_PRINCIPAL": principal,
            "FLEET_MCP_ROLES": roles,
            "FLEET_MCP_ALLOW_LOCAL_REPOS": "true",
            "FLEET_MCP_SCHEDULER": "false",
            "FLEET_MCP_LOG_LEVEL": "WARNING",
        })
        return env

    async def human(self, context: Any, params: Any) -> ElicitResult:
        self.questions.append(params.message)
        print(textwrap.indent("? " + params.message.replace("\n", "\n  "), "      "))
        print("      ! the operator approves")
        return ElicitResult(action="accept", content={"approve": True})

    def client(self, account: str, principal: str, roles: str) -> Client:
        params = StdioServerParameters(command=sys.executable, args=["-m", "fleet_mcp", "serve"],
                                       env=self.env(account, principal, roles))
        return Client(params, elicitation_callback=self.human)

    def section(self, title: str) -> None:
        print(f"\n== {title} " + "=" * max(0, 70 - len(title)))

    async def call(self, client: Client, who: str, tool: str, args: dict[str, Any] | None = None,
                   *, expect_error: bool = False, show: Any = None) -> dict[str, Any]:
        self.n += 1
        shown = json.dumps(mask(args or {}), default=str)
        if len(shown) > 110:
            shown = shown[:107] + "..."
        print(f"\n{self.n:>3}. {who} → {tool} {shown}")
        r = await client.call_tool(tool, args or {})
        data = r.structured_content or {}
        if r.is_error != expect_error:
            text = getattr(r.content[0], "text", "") if r.content else ""
            raise RuntimeError(f"step {self.n} {tool}: unexpected {'error' if r.is_error else 'success'}: {text}")
        if r.is_error:
            print(f"     ✗ {getattr(r.content[0], 'text', '') if r.content else data}")
        else:
            summary = show(data) if show else _summarise(data)
            print(f"     ✓ {summary}")
        return data


def _summarise(data: dict[str, Any]) -> str:
    text = json.dumps(data, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


async def core_section(d: Demo, alice: Client, bob: Client) -> None:
    d.section("Core: typed tools, the policy gate, the audit chain")
    tools = (await alice.list_tools()).tools
    by_set: dict[str, int] = {}
    for t in tools:
        prefix = t.name.split("_")[1]
        by_set[prefix] = by_set.get(prefix, 0) + 1
    print(f"  alice (acme, operator) sees {len(tools)} tools: "
          + ", ".join(f"{k}×{v}" for k, v in sorted(by_set.items())))
    await d.call(alice, "alice", "system_put_template", {"name": "edge", "spec": {"node_platform": "linux",
                                                                                   "instance_type": "t3.small"}},
                 show=lambda r: f"auto-approved: template edge revision {r['item']['revision']}")
    await d.call(alice, "alice", "system_put_module", {"name": "wireguard", "spec": {"variety": "role"}},
                 show=lambda r: f"auto-approved: module wireguard revision {r['item']['revision']}")
    await d.call(alice, "alice", "system_put_template", {"name": "scratch", "spec": {}},
                 show=lambda r: "auto-approved: template scratch")
    print("\n  Deleting is destructive: the default policy asks the human in the client (elicitation).")
    await d.call(alice, "alice", "system_delete_template", {"name": "scratch"},
                 show=lambda r: f"approved in the client and run once: deleted={r['deleted']}")
    await d.call(alice, "alice", "system_policy_explain",
                 {"tool": "system_rotate_vault_transit_pepper", "arguments": {}},
                 show=lambda r: f"rotation → {r['decision']} by rule {r['rule']!r} "
                                f"(alice has its permission: {r['caller_has_permission']})")


async def audit_section(d: Demo, alice: Client, bob: Client, admin: Client) -> None:
    d.section("Audit: every call, decision and approval is in the hash chain")
    await d.call(admin, "root", "system_audit_verify", {},
                 show=lambda r: f"chain ok={r['ok']} over {r['entries_checked']} entries")
    data = await d.call(admin, "root", "system_audit_query", {"limit": 5},
                        show=lambda r: f"{r['count']} newest entries")
    for e in data["entries"]:
        print(f"       seq {e['seq']:>3} {e['principal']:<14} {e['tool']:<38} {e['decision']:<24} {e['outcome']}")


async def run_demo(keep: bool = False) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    d = Demo(data_dir)
    print(f"fleet-mcp demo — data dir {data_dir} (SQLite, local transit keyring, shipped default policy)")
    try:
        # Each stdio server creates its principal's account on start (acme and globex here).
        async with AsyncExitStack() as stack:
            alice = await stack.enter_async_context(d.client("acme", "alice", "operator"))
            bob = await stack.enter_async_context(d.client("acme", "bob", "approver"))
            gina = await stack.enter_async_context(d.client("globex", "gina", "operator"))
            admin = await stack.enter_async_context(d.client("acme", "root", "admin"))
            await core_section(d, alice, bob)
            from fleet_mcp.demo_sections import SECTIONS

            for section in SECTIONS:
                await section(d, alice=alice, bob=bob, gina=gina, admin=admin)
            await audit_section(d, alice, bob, admin)
        print(f"\ndemo finished: {d.n} calls, {len(d.questions)} approvals asked in the client.")
        return 0
    except Exception as exc:  # noqa: BLE001 - the demo reports and exits non-zero
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if keep:
            print(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
