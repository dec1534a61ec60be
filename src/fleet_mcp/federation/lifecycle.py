"""The federation peer state machine: proposed → accepted → active, suspension, terminal revocation."""

from __future__ import annotations

from enum import StrEnum

from fleet_mcp.errors import Conflict


class PeerStatus(StrEnum):
    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


_TRANSITIONS: dict[PeerStatus, frozenset[PeerStatus]] = {
    PeerStatus.PROPOSED: frozenset({PeerStatus.ACCEPTED, PeerStatus.REVOKED}),
    PeerStatus.ACCEPTED: frozenset({PeerStatus.ACTIVE, PeerStatus.SUSPENDED, PeerStatus.REVOKED}),
    PeerStatus.ACTIVE: frozenset({PeerStatus.SUSPENDED, PeerStatus.REVOKED}),
    PeerStatus.SUSPENDED: frozenset({PeerStatus.ACCEPTED, PeerStatus.REVOKED}),
    PeerStatus.REVOKED: frozenset(),
}
_ORDER = list(PeerStatus)

#: Statuses in which the peer's cross certificates sit in both trust bundles.
TRUSTED_STATUSES = frozenset({PeerStatus.ACCEPTED, PeerStatus.ACTIVE})


def allowed_transitions(status: str) -> list[str]:
    """Statuses reachable from `status`, in lifecycle order."""
    targets = _TRANSITIONS[PeerStatus(status)]
    return [s.value for s in _ORDER if s in targets]


def can_transition(current: str, target: str) -> bool:
    return PeerStatus(target) in _TRANSITIONS[PeerStatus(current)]


def check_transition(current: str, target: str, *, peer_id: int | None = None) -> None:
    """Refuse a transition outside the matrix, naming the allowed ones."""
    if can_transition(current, target):
        return
    allowed = allowed_transitions(current)
    hint = (
        f"from {current} the peer can go to: {', '.join(allowed)}"
        if allowed
        else f"{current} is terminal; propose a new federation peer instead"
    )
    raise Conflict(
        f"federation peer cannot go from {current} to {target}",
        hint=hint,
        federation_peer_id=peer_id,
        status=current,
        allowed_transitions=allowed,
    )


#: The verbs that move a peer, each from a set of statuses to one target (all inside the matrix above).
ACTIONS: dict[str, tuple[frozenset[PeerStatus], PeerStatus]] = {
    "accept": (frozenset({PeerStatus.PROPOSED}), PeerStatus.ACCEPTED),
    "activate": (frozenset({PeerStatus.ACCEPTED}), PeerStatus.ACTIVE),
    "suspend": (frozenset({PeerStatus.ACCEPTED, PeerStatus.ACTIVE}), PeerStatus.SUSPENDED),
    "resume": (frozenset({PeerStatus.SUSPENDED}), PeerStatus.ACCEPTED),
    "revoke": (frozenset(set(PeerStatus) - {PeerStatus.REVOKED}), PeerStatus.REVOKED),
}


def allowed_actions(status: str) -> list[str]:
    current = PeerStatus(status)
    return [name for name, (sources, _) in ACTIONS.items() if current in sources]


def check_action(current: str, action: str, *, peer_id: int | None = None) -> str:
    """Refuse `action` from `current` (naming what is allowed); return the target status."""
    sources, target = ACTIONS[action]
    if PeerStatus(current) in sources:
        check_transition(current, target.value, peer_id=peer_id)
        return target.value
    allowed = allowed_transitions(current)
    actions = allowed_actions(current)
    hint = (
        f"from {current} the peer can go to: {', '.join(allowed)} (actions: {', '.join(actions)})"
        if allowed
        else f"{current} is terminal; propose a new federation peer instead"
    )
    raise Conflict(
        f"cannot {action} federation peer {peer_id} while it is {current}",
        hint=hint,
        federation_peer_id=peer_id,
        status=current,
        allowed_transitions=allowed,
        allowed_actions=actions,
    )
