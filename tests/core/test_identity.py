"""Identity, roles, admin audit, keyed digests and the bounds on what callers can make the server store."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


async def test_policy_explain_lists_every_rule_considered(client) -> None:  # noqa: ANN001
    r = await client.call_tool("system_policy_explain", {"tool": "system_gitops_apply_proposal",
                                                         "arguments": {"proposal_id": 1}})
    assert not r.is_error, r.content
    considered = r.structured_content["considered"]
    assert considered, "the trace of the policy's rules is missing"
    assert {"rule", "matched", "decisive", "reasons"} <= set(considered[0])
    decisive = [c for c in considered if c["decisive"]]
    assert len(decisive) <= 1
    if decisive:
        assert decisive[0]["rule"] == r.structured_content["rule"]
