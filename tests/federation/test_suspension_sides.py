"""A suspension belongs to the side that made it: only that side may lift it (both, when both suspended),
and a resume by the other side neither restores trust nor lets a handshake re-activate the peer."""

from __future__ import annotations

import pytest

from tests.conftest import call_as, make_caller
from tests.federation.test_tools import settings  # noqa: F401  (the federation policy)

pytestmark = pytest.mark.anyio


async def _active_peer(app):  # noqa: ANN001, ANN202
    alice = await make_caller(app, "acme", "alice", ("admin",))
    bob = await make_caller(app, "globex", "bob", ("operator",))

    async def call(caller, tool, args=None):  # noqa: ANN001, ANN202
        return await call_as(app, caller, tool, args or {}, elicited="accept")

    r = await call(alice, "system_sdwan_propose_federation_peer", {"remote_account": "globex"})
    peer_id, token = r.data["federation_peer"]["id"], r.data["acceptance_token"]
    r = await call(bob, "system_sdwan_accept_federation_peer", {"federation_peer_id": peer_id, "acceptance_token": token})
    assert r.ok, r.message
    r = await call(alice, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_id})
    assert r.data["ok"] and r.data["federation_peer"]["status"] == "active"
    return alice, bob, call, peer_id


async def test_the_side_that_did_not_suspend_cannot_resume(account, other_account, app) -> None:  # noqa: ANN001
    alice, bob, call, peer_id = await _active_peer(app)
    r = await call(alice, "system_sdwan_suspend_federation_peer", {"federation_peer_id": peer_id, "reason": "audit"})
    assert r.ok and r.data["federation_peer"]["status"] == "suspended"
    assert r.data["federation_peer"]["suspended_by"] == ["acme"]
    before = (await call(bob, "system_sdwan_get_trust_bundle")).data

    r = await call(bob, "system_sdwan_resume_federation_peer", {"federation_peer_id": peer_id, "reason": "mine now"})
    assert not r.ok and r.data["error"]["code"] == "conflict"
    assert "acme" in r.data["error"]["message"] and r.data["error"]["hint"]
    # Nothing changed: still suspended, no cross certificate back in either bundle, handshakes still fail.
    r = await call(bob, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_id})
    assert r.data["federation_peer"]["status"] == "suspended"
    assert all(c["state"] == "revoked" for c in r.data["federation_peer"]["cross_certificates"])
    after = (await call(bob, "system_sdwan_get_trust_bundle")).data
    assert (after["bundle_version"], after["certificate_count"]) == (before["bundle_version"], 1)
    r = await call(bob, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_id})
    assert r.ok and not r.data["ok"] and r.data["federation_peer"]["status"] == "suspended"

    # The suspending side resumes: fresh cross certificates, and a handshake activates the peer again.
    r = await call(alice, "system_sdwan_resume_federation_peer", {"federation_peer_id": peer_id, "reason": "done"})
    assert r.ok, r.message
    assert r.data["federation_peer"]["status"] == "accepted" and r.data["federation_peer"]["suspended_by"] == []
    r = await call(bob, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_id})
    assert r.data["ok"] and r.data["federation_peer"]["status"] == "active"


async def test_when_both_suspended_both_must_resume(account, other_account, app) -> None:  # noqa: ANN001
    alice, bob, call, peer_id = await _active_peer(app)
    r = await call(bob, "system_sdwan_suspend_federation_peer", {"federation_peer_id": peer_id, "reason": "b"})
    assert r.ok and r.data["federation_peer"]["suspended_by"] == ["globex"]
    # The other side adds its own suspension to a suspended peer.
    r = await call(alice, "system_sdwan_suspend_federation_peer", {"federation_peer_id": peer_id, "reason": "a"})
    assert r.ok, r.message
    assert sorted(r.data["federation_peer"]["suspended_by"]) == ["acme", "globex"]
    # A side cannot suspend twice.
    r = await call(alice, "system_sdwan_suspend_federation_peer", {"federation_peer_id": peer_id, "reason": "a"})
    assert not r.ok and r.data["error"]["code"] == "conflict"

    r = await call(alice, "system_sdwan_resume_federation_peer", {"federation_peer_id": peer_id, "reason": "a ok"})
    assert r.ok, r.message
    peer = r.data["federation_peer"]
    assert peer["status"] == "suspended" and peer["suspended_by"] == ["globex"]
    assert all(c["state"] == "revoked" for c in peer["cross_certificates"])  # nothing re-signed yet
    r = await call(alice, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_id})
    assert not r.data["ok"] and r.data["federation_peer"]["status"] == "suspended"
    r = await call(alice, "system_sdwan_resume_federation_peer", {"federation_peer_id": peer_id, "reason": "again"})
    assert not r.ok and r.data["error"]["code"] == "conflict"

    r = await call(bob, "system_sdwan_resume_federation_peer", {"federation_peer_id": peer_id, "reason": "b ok"})
    assert r.ok and r.data["federation_peer"]["status"] == "accepted"
    assert sorted(c["state"] for c in r.data["federation_peer"]["cross_certificates"]).count("current") == 2
    r = await call(alice, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_id})
    assert r.data["ok"] and r.data["federation_peer"]["status"] == "active"
