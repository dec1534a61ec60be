"""Core tools end to end through the SDK's in-memory client."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


async def test_put_get_list_template(client) -> None:  # noqa: ANN001
    r = await client.call_tool("system_put_template", {"name": "web", "spec": {"description": "web nodes",
                                                                                "instance_type": "t3.small"}})
    assert not r.is_error, r.content
    item = r.structured_content["item"]
    assert item["revision"] == 1 and item["managed_by"] == "manual" and len(item["fingerprint"]) == 64
    r2 = await client.call_tool("system_put_template", {"name": "web", "spec": {"description": "web nodes",
                                                                                 "instance_type": "t3.small"}})
    assert r2.structured_content["item"]["revision"] == 1
    r3 = await client.call_tool("system_list_templates", {})
    assert [i["name"] for i in r3.structured_content["items"]] == ["web"]
