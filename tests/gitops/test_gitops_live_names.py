"""Live-state names are compared exactly: '_' and '%' in a name are ordinary characters, never wildcards."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_types import ElicitResult

from fleet_mcp.server import build_server

pytestmark = pytest.mark.anyio


@pytest.fixture
async def approving_client(app):  # noqa: ANN001
    """An SDK client whose user accepts every approval prompt (deletions need one under the shipped policy)."""

    async def accept(_ctx, _params):  # noqa: ANN001, ANN202
        return ElicitResult(action="accept", content={"approve": True})

    async with Client(build_server(app)[0], elicitation_callback=accept) as c:
        yield c


def _ok(r) -> dict:  # noqa: ANN001
    assert not r.is_error, r.content
    return r.structured_content


async def test_delete_template_or_module_is_not_blocked_by_a_lookalike_assignment(approving_client) -> None:  # noqa: ANN001
    client = approving_client
    for name in ("a_b", "axb"):
        _ok(await client.call_tool("system_put_template", {"name": name, "spec": {"description": name}}))
    for name in ("m", "m_", "mx"):
        _ok(await client.call_tool("system_put_module", {"name": name, "spec": {"variety": "role"}}))
    _ok(await client.call_tool("system_assign_module_to_template", {"template": "axb", "module": "m"}))
    _ok(await client.call_tool("system_assign_module_to_template", {"template": "axb", "module": "mx"}))

    # 'a_b' and 'm_' are used by no assignment: 'axb:m' and 'axb:mx' only look alike under LIKE.
    assert _ok(await client.call_tool("system_delete_template", {"name": "a_b"}))["deleted"] is True
    assert _ok(await client.call_tool("system_delete_module", {"name": "m_"}))["deleted"] is True

    # The real users are still protected, and nothing changed on refusal.
    used = await client.call_tool("system_delete_template", {"name": "axb"})
    assert used.is_error and "used by 2 assignment(s)" in used.content[0].text
    used = await client.call_tool("system_delete_module", {"name": "m"})
    assert used.is_error and "used by 1 assignment(s)" in used.content[0].text
    names = {t["name"] for t in _ok(await client.call_tool("system_list_templates", {}))["items"]}
    assert names == {"axb"}


async def test_signal_kind_filter_treats_percent_and_underscore_literally(client) -> None:  # noqa: ANN001
    _ok(await client.call_tool("system_put_template", {"name": "web", "spec": {"description": "w"}}))
    every = _ok(await client.call_tool("system_recent_signals", {"kind": "fleet.template*"}))["events"]
    assert [e["kind"] for e in every] == ["fleet.template.changed"]
    # Only '*' is a wildcard: '%' and '_' must match themselves, so these find nothing.
    for pattern in ("fleet%*", "fleet_template*", "%*"):
        assert _ok(await client.call_tool("system_recent_signals", {"kind": pattern}))["count"] == 0, pattern
