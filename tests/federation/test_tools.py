"""The federation tools through the real gate (policy, approval by elicitation, audit), as two principals of
two accounts; plus the published contract (names, annotations, permissions, result fields)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from fleet_mcp import audit
from fleet_mcp.federation.models import CertificateAuthority, FederationPeer
from fleet_mcp.registry import load_tools
from fleet_mcp.vault.models import Credential
from tests.conftest import call_as, make_caller

pytestmark = pytest.mark.anyio

# The federation rules of policies/default.yaml, alone (the shipped file names tools of other areas too).
POLICY = """
version: 1
default: deny
rules:
  - name: reads
    match: {read_only: true}
    decision: auto_approve
  - name: federation-lifecycle
    match:
      tools: [system_sdwan_propose_federation_peer, system_sdwan_accept_federation_peer,
              system_sdwan_regenerate_acceptance_token, system_sdwan_suspend_federation_peer,
              system_sdwan_accept_remote_federation_peer, system_sdwan_rotate_intermediate_ca,
              system_sdwan_resume_federation_peer, system_sdwan_revoke_federation_peer]
    decision: require_approval
  - name: routine-changes
    match: {tools: [system_sdwan_verify_federation_handshake, system_sdwan_issue_node_certificate,
                    system_sdwan_refresh_federation_peer]}
    decision: auto_approve
"""


@pytest.fixture
def settings(settings, tmp_path):  # noqa: ANN001
    path = tmp_path / "federation-policy.yaml"
    path.write_text(POLICY)
    return settings.model_copy(update={"policy": path})


EXPECTED = {
    # name: (permission, read_only, destructive)
    "system_sdwan_propose_federation_peer": ("sdwan.federation.manage", False, False),
    "system_sdwan_accept_federation_peer": ("sdwan.federation.manage", False, False),
    "system_sdwan_regenerate_acceptance_token": ("sdwan.federation.manage", False, False),
    "system_sdwan_list_federation_peers": ("sdwan.federation.read", True, False),
    "system_sdwan_get_federation_peer": ("sdwan.federation.read", True, False),
    "system_sdwan_verify_federation_handshake": ("sdwan.federation.manage", False, False),
    "system_sdwan_suspend_federation_peer": ("sdwan.federation.manage", False, False),
    "system_sdwan_resume_federation_peer": ("sdwan.federation.manage", False, False),
    "system_sdwan_revoke_federation_peer": ("sdwan.federation.manage", False, True),
    "system_sdwan_federation_scan": ("sdwan.federation.read", True, False),
    "system_sdwan_issue_node_certificate": ("sdwan.federation.manage", False, False),
    "system_sdwan_get_trust_bundle": ("sdwan.federation.read", True, False),
    "system_sdwan_accept_remote_federation_peer": ("sdwan.federation.manage", False, False),
    "system_sdwan_refresh_federation_peer": ("sdwan.federation.manage", False, False),
    "system_sdwan_rotate_intermediate_ca": ("sdwan.federation.manage", False, False),
}


def test_contract_of_every_federation_tool() -> None:
    tools = {n: s for n, s in load_tools().items() if s.toolset == "federation"}
    assert set(tools) == set(EXPECTED)
    for name, (permission, ro, destructive) in EXPECTED.items():
        spec = tools[name]
        assert (spec.permission, spec.read_only, spec.destructive) == (permission, ro, destructive), name
        assert spec.idempotent == ro, name
    props = lambda n: set(tools[n].input_schema()["properties"])  # noqa: E731
    out = lambda n: set(tools[n].output_schema()["properties"])  # noqa: E731
    assert props("system_sdwan_propose_federation_peer") == {
        "remote_account",
        "remote_prefix_advertisement",
        "token_ttl_seconds",
        "remote_federation_domain",
    }
    assert props("system_sdwan_accept_remote_federation_peer") == {"peering_token"}
    assert props("system_sdwan_accept_federation_peer") == {"federation_peer_id", "acceptance_token"}
    assert props("system_sdwan_regenerate_acceptance_token") == {"federation_peer_id", "token_ttl_seconds"}
    assert props("system_sdwan_suspend_federation_peer") == {"federation_peer_id", "reason"}
    assert props("system_sdwan_issue_node_certificate") == {"node_name", "csr_pem"}
    assert {"federation_peer", "acceptance_token", "acceptance_token_expires_at"} <= out(
        "system_sdwan_propose_federation_peer"
    )
    assert {"federation_peer", "cross_certificates"} <= out("system_sdwan_accept_federation_peer")
    assert {"ok", "directions", "federation_peer"} <= out("system_sdwan_verify_federation_handshake")
    assert {"findings", "finding_count", "severity_summary"} <= out("system_sdwan_federation_scan")
    assert {"certificate_pem", "chain_pem", "serial", "not_after"} <= out("system_sdwan_issue_node_certificate")
    assert {"bundle_pem", "bundle_version"} <= out("system_sdwan_get_trust_bundle")
    assert {"federation_peers", "count"} <= out("system_sdwan_list_federation_peers")
    handshake = tools["system_sdwan_verify_federation_handshake"].output_schema()
    direction = handshake["properties"]["directions"]["items"]
    assert set(direction["properties"]) == {"from", "to", "ok", "error", "tls_version"}
    peer = tools["system_sdwan_get_federation_peer"].output_schema()["properties"]["federation_peer"]["properties"]
    assert {
        "id",
        "local_account",
        "remote_account",
        "status",
        "allowed_transitions",
        "proposed_at",
        "accepted_at",
        "last_handshake_at",
        "token_expires_at",
        "cross_certificates",
    } <= set(peer)
    assert not {k for k in peer if "digest" in k or k == "token"}


async def test_federation_through_the_gate(account, other_account, app) -> None:  # noqa: ANN001
    alice = await make_caller(app, "acme", "alice", ("admin",))
    bob = await make_caller(app, "globex", "bob", ("operator",))
    viewer = await make_caller(app, "globex", "vic", ("viewer",))

    async def call(caller, tool, args=None):  # noqa: ANN001
        return await call_as(app, caller, tool, args or {}, elicited="accept")

    r = await call(
        alice,
        "system_sdwan_propose_federation_peer",
        {"remote_account": "globex", "remote_prefix_advertisement": ["10.8.0.0/16"]},
    )
    assert r.ok, r.message
    token, peer_id = r.data["acceptance_token"], r.data["federation_peer"]["id"]
    assert r.data["federation_peer"]["status"] == "proposed"

    # A viewer may read but not accept; the gate names the permission.
    r = await call(
        viewer,
        "system_sdwan_accept_federation_peer",
        {"federation_peer_id": peer_id, "acceptance_token": token},
    )
    assert not r.ok and r.data["permission"] == "sdwan.federation.manage"
    # The proposer's own account cannot accept it (same error as a wrong token).
    r_self = await call(
        alice,
        "system_sdwan_accept_federation_peer",
        {"federation_peer_id": peer_id, "acceptance_token": token},
    )
    r_wrong = await call(
        bob,
        "system_sdwan_accept_federation_peer",
        {"federation_peer_id": peer_id, "acceptance_token": token[:-2] + "AA"},
    )
    assert not r_self.ok and not r_wrong.ok
    assert r_self.data["error"]["message"] == r_wrong.data["error"]["message"]
    assert r_wrong.data["error"]["code"] == "unauthenticated"

    r = await call(
        bob, "system_sdwan_accept_federation_peer", {"federation_peer_id": peer_id, "acceptance_token": token}
    )
    assert r.ok, r.message
    assert r.data["federation_peer"]["status"] == "accepted"
    assert sorted(c["signed_by"] for c in r.data["cross_certificates"]) == ["acme", "globex"]
    assert all(c["name_constraints"] for c in r.data["cross_certificates"])

    r = await call(bob, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_id})
    assert r.ok and r.data["ok"], r.data
    assert [(d["from"], d["to"], d["ok"]) for d in r.data["directions"]] == [
        ("acme", "globex", True),
        ("globex", "acme", True),
    ]
    assert r.data["federation_peer"]["status"] == "active"

    r = await call(viewer, "system_sdwan_list_federation_peers", {"status": "active"})
    assert r.ok and r.data["count"] == 1
    r = await call(alice, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_id})
    assert r.ok and r.data["federation_peer"]["allowed_transitions"] == ["suspended", "revoked"]
    r = await call(alice, "system_sdwan_federation_scan")
    assert r.ok and r.data["finding_count"] == 0
    r = await call(alice, "system_sdwan_issue_node_certificate", {"node_name": "edge-1"})
    assert r.ok and r.data["private_key_pem"] and r.data["dns_name"] == "edge-1.acme.fleet.test"
    r = await call(alice, "system_sdwan_issue_node_certificate", {"node_name": "edge-1.globex.fleet.test"})
    assert not r.ok and r.data["error"]["code"] == "invalid_argument"
    b1 = await call(alice, "system_sdwan_get_trust_bundle", {"include_crls": True})
    assert b1.ok and b1.data["certificate_count"] == 2 and "X509 CRL" in b1.data["crls_pem"]

    r = await call(bob, "system_sdwan_revoke_federation_peer", {"federation_peer_id": peer_id, "reason": "done"})
    assert r.ok and r.data["federation_peer"]["status"] == "revoked"
    b2 = await call(alice, "system_sdwan_get_trust_bundle")
    assert b2.data["bundle_version"] > b1.data["bundle_version"] and b2.data["certificate_count"] == 1
    r = await call(alice, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_id})
    assert r.ok and not r.data["ok"] and [d["ok"] for d in r.data["directions"]] == [False, False]
    r = await call(alice, "system_sdwan_resume_federation_peer", {"federation_peer_id": peer_id, "reason": "x"})
    assert not r.ok and r.data["error"]["code"] == "conflict"

    # CA keys are sealed credentials of kind ca_private_key (so pepper rotation rewraps them).
    async with app.sessionmaker() as s:
        cas = (await s.execute(select(CertificateAuthority))).scalars().all()
        creds = {c.id: c for c in (await s.execute(select(Credential))).scalars().all()}
        entries = [e async for e in audit.export(s)]
        peer = await s.get(FederationPeer, peer_id)
    assert len(cas) == 2
    for ca in cas:
        for ref in (ca.root_key_ref, ca.intermediate_key_ref):
            cred = creds[int(ref.split(":")[1])]
            assert cred.kind == "ca_private_key" and cred.internal and cred.ciphertext.startswith("vault:v")
            assert cred.account_id == ca.account_id
    # The token never reaches the audit log (arguments are masked) and the digest is gone.
    exported = json.dumps(entries, default=str)
    assert "system_sdwan_accept_federation_peer" in exported
    assert token not in exported and token.split(".")[1] not in exported
    assert peer.token_digest is None
    db_file = app.settings.effective_database_url
    if db_file.startswith("sqlite"):
        from pathlib import Path

        path = Path(db_file.split("///", 1)[1])
        raw = b"".join(f.read_bytes() for f in path.parent.glob(path.name + "*"))
        assert token.encode() not in raw and b"PRIVATE KEY" not in raw


async def test_renewal_job_renews_due_cross_certificates(account, other_account, app) -> None:  # noqa: ANN001
    import datetime as dt

    from sqlalchemy import update

    from fleet_mcp.db.models import AuditEntry
    from fleet_mcp.federation.jobs import renew_cross_certificates
    from fleet_mcp.federation.models import IssuedCertificate

    alice = await make_caller(app, "acme", "alice", ("admin",))
    bob = await make_caller(app, "globex", "bob", ("operator",))
    r = await call_as(
        app, alice, "system_sdwan_propose_federation_peer", {"remote_account": "globex"}, elicited="accept"
    )
    peer_id, token = r.data["federation_peer"]["id"], r.data["acceptance_token"]
    r = await call_as(
        app,
        bob,
        "system_sdwan_accept_federation_peer",
        {"federation_peer_id": peer_id, "acceptance_token": token},
        elicited="accept",
    )
    assert r.ok
    assert await renew_cross_certificates(app) == 0
    async with app.sessionmaker() as s, s.begin():  # age one cross certificate past half its life
        first = r.data["cross_certificates"][0]["serial"]
        await s.execute(
            update(IssuedCertificate)
            .where(IssuedCertificate.serial == first)
            .values(not_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        )
    assert await renew_cross_certificates(app) == 1
    r = await call_as(app, alice, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_id})
    states = sorted(c["state"] for c in r.data["federation_peer"]["cross_certificates"])
    assert states == ["current", "current", "superseded"]
    async with app.sessionmaker() as s:
        rows = (
            (await s.execute(select(AuditEntry).where(AuditEntry.tool == "federation.renew_cross_certificates")))
            .scalars()
            .all()
        )
    assert [row.detail["renewed"] for row in rows] == [1]
    r = await call_as(app, bob, "system_sdwan_verify_federation_handshake", {"federation_peer_id": peer_id})
    assert r.ok and r.data["ok"]


async def test_failed_accepts_are_counted_through_the_gate(account, other_account, app) -> None:  # noqa: ANN001
    alice = await make_caller(app, "acme", "alice", ("admin",))
    bob = await make_caller(app, "globex", "bob", ("operator",))
    r = await call_as(
        app, alice, "system_sdwan_propose_federation_peer", {"remote_account": "globex"}, elicited="accept"
    )
    peer_id = r.data["federation_peer"]["id"]
    r = await call_as(
        app,
        bob,
        "system_sdwan_accept_federation_peer",
        {"federation_peer_id": peer_id, "acceptance_token": "fat_wrong"},
        elicited="accept",
    )
    assert not r.ok
    r = await call_as(app, alice, "system_sdwan_get_federation_peer", {"federation_peer_id": peer_id})
    assert r.data["federation_peer"]["failed_attempts"] == 1
