"""The shipped policies agree with the tools' annotations: nothing destructive is auto-approved, and
hiding drift (which hides a live change from GitOps review) needs a person's approval."""

from __future__ import annotations

from pathlib import Path

import pytest

import fleet_mcp
from fleet_mcp.registry import load_tools

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def test_shipped_policy_copies_are_identical() -> None:
    shipped = Path(fleet_mcp.__file__).parent / "policies"
    for path in sorted((ROOT / "policies").glob("*.yaml")):
        assert (shipped / path.name).read_text() == path.read_text(), path.name


async def test_no_destructive_tool_is_auto_approved_by_the_default_policy(client) -> None:  # noqa: ANN001
    destructive = sorted(name for name, spec in load_tools().items() if spec.destructive)
    assert "system_unassign_module_from_template" in destructive
    decided = {}
    for name in destructive:
        r = await client.call_tool("system_policy_explain", {"tool": name, "arguments": {}})
        assert not r.is_error, r.content
        decided[name] = r.structured_content["decision"]
    assert {n: d for n, d in decided.items() if d == "auto_approve"} == {}


async def test_unassign_and_suppress_drift_wait_for_a_person(app, client) -> None:  # noqa: ANN001
    """A client without elicitation (this one) gets a queued approval; nothing changes until it is decided."""
    for name in ("web",):
        assert not (await client.call_tool("system_put_template", {"name": name, "spec": {}})).is_error
    assert not (await client.call_tool("system_put_module", {"name": "nginx", "spec": {"variety": "role"}})).is_error
    assert not (await client.call_tool("system_assign_module_to_template",
                                       {"template": "web", "module": "nginx"})).is_error
    for tool, args in (
        ("system_unassign_module_from_template", {"template": "web", "module": "nginx"}),
        ("system_gitops_suppress_drift", {"kind": "template", "name": "web", "reason": "hide it"}),
    ):
        r = await client.call_tool(tool, args)
        assert r.is_error and r.structured_content["status"] == "approval_required", (tool, r.content)
    assignments = (await client.call_tool("system_list_assignments", {})).structured_content["items"]
    assert [a["name"] for a in assignments] == ["web:nginx"]
    template = (await client.call_tool("system_get_template", {"name": "web"})).structured_content["item"]
    assert template["drift_suppressed_until"] is None
