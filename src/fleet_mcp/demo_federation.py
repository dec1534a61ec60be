"""The federation section of `fleet-mcp demo` (client presentation code: it drives the tools through MCP
clients and prints; registered in `fleet_mcp.demo_sections.SECTIONS`)."""

from __future__ import annotations

from typing import Any


def _directions(r: dict[str, Any]) -> str:
    return "; ".join(
        f"{d['from']}→{d['to']} {'ok ' + d['tls_version'] if d['ok'] else 'FAILED: ' + d['error']}"
        for d in r["directions"]
    )


async def federation_section(d: Any, *, alice: Any, gina: Any, **_: Any) -> None:
    """acme proposes, globex accepts with the one-time token (a wrong one is refused), a verified mTLS
    handshake makes the peer active, the scan is clean, globex revokes and the handshake fails."""
    d.section("Federation: one-time token, cross-signed CAs, verified mTLS, revocation that bites")
    proposal = await d.call(
        alice,
        "alice",
        "system_sdwan_propose_federation_peer",
        {"remote_account": "globex", "remote_prefix_advertisement": "10.20.0.0/16"},
        show=lambda r: (
            f"peer {r['federation_peer']['id']} proposed; the token is shown once "
            f"(valid until {r['acceptance_token_expires_at']})"
        ),
    )
    peer_id, token = proposal["federation_peer"]["id"], proposal["acceptance_token"]
    head, secret = token.split(".")
    await d.call(
        gina,
        "gina",
        "system_sdwan_accept_federation_peer",
        {"federation_peer_id": peer_id, "acceptance_token": f"{head}.{secret[::-1]}"},
        expect_error=True,
    )
    await d.call(
        gina,
        "gina",
        "system_sdwan_accept_federation_peer",
        {"federation_peer_id": peer_id, "acceptance_token": token},
        show=lambda r: (
            "accepted; cross certificates: "
            + ", ".join(
                f"{c['signed_by']} root → {c['signed_for']} (only {c['name_constraints'][0]})"
                for c in r["cross_certificates"]
            )
        ),
    )
    verified = await d.call(
        alice,
        "alice",
        "system_sdwan_verify_federation_handshake",
        {"federation_peer_id": peer_id},
        show=lambda r: f"{_directions(r)} → {r['federation_peer']['status']}",
    )
    if not verified["ok"]:
        raise RuntimeError("the federation handshake failed")
    await d.call(gina, "gina", "system_sdwan_federation_scan", {}, show=lambda r: f"{r['finding_count']} findings")
    await d.call(
        gina,
        "gina",
        "system_sdwan_revoke_federation_peer",
        {"federation_peer_id": peer_id, "reason": "demo over"},
        show=lambda r: f"peer {r['federation_peer']['status']}; cross certificates left both bundles",
    )
    failed = await d.call(
        alice,
        "alice",
        "system_sdwan_verify_federation_handshake",
        {"federation_peer_id": peer_id},
        show=lambda r: _directions(r),
    )
    if failed["ok"]:
        raise RuntimeError("a handshake still worked after revocation")
