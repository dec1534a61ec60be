"""The peer state machine: every allowed and every refused transition, and the verbs built on it."""

from __future__ import annotations

import itertools

import pytest

from fleet_mcp.errors import Conflict
from fleet_mcp.federation.lifecycle import (
    ACTIONS,
    PeerStatus,
    allowed_actions,
    allowed_transitions,
    can_transition,
    check_action,
    check_transition,
)

ALLOWED = {
    ("proposed", "accepted"),
    ("proposed", "revoked"),
    ("accepted", "active"),
    ("accepted", "suspended"),
    ("accepted", "revoked"),
    ("active", "suspended"),
    ("active", "revoked"),
    ("suspended", "accepted"),
    ("suspended", "revoked"),
}
STATUSES = [s.value for s in PeerStatus]


@pytest.mark.parametrize(("current", "target"), list(itertools.product(STATUSES, STATUSES)))
def test_every_pair(current: str, target: str) -> None:
    if (current, target) in ALLOWED:
        assert can_transition(current, target)
        check_transition(current, target, peer_id=7)
        return
    assert not can_transition(current, target)
    with pytest.raises(Conflict) as e:
        check_transition(current, target, peer_id=7)
    allowed = sorted(t for c, t in ALLOWED if c == current)
    assert sorted(e.value.subject["allowed_transitions"]) == allowed
    assert e.value.subject["federation_peer_id"] == 7
    for name in allowed:
        assert name in (e.value.hint or "")
    if current == "revoked":
        assert "terminal" in (e.value.hint or "")


def test_allowed_transitions_in_lifecycle_order() -> None:
    assert allowed_transitions("proposed") == ["accepted", "revoked"]
    assert allowed_transitions("accepted") == ["active", "suspended", "revoked"]
    assert allowed_transitions("active") == ["suspended", "revoked"]
    assert allowed_transitions("suspended") == ["accepted", "revoked"]
    assert allowed_transitions("revoked") == []


@pytest.mark.parametrize(("current", "action"), list(itertools.product(STATUSES, ACTIONS)))
def test_every_action(current: str, action: str) -> None:
    sources, target = ACTIONS[action]
    if PeerStatus(current) in sources:
        assert check_action(current, action, peer_id=3) == target.value
        assert (current, target.value) in ALLOWED
        assert action in allowed_actions(current)
    else:
        with pytest.raises(Conflict) as e:
            check_action(current, action, peer_id=3)
        assert e.value.subject["allowed_actions"] == allowed_actions(current)
        assert f"cannot {action} federation peer 3 while it is {current}" == e.value.message


def test_resume_is_only_from_suspended_even_though_proposed_to_accepted_exists() -> None:
    with pytest.raises(Conflict):
        check_action("proposed", "resume")
    assert check_action("suspended", "resume") == "accepted"
