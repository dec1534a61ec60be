"""The governance scan is a table of rules: one small rule per finding kind, iterated by the scan. The
findings (kind, severity, peer, message, order) are exactly those of the scan before it became a table:
`data/scan_golden.json` was recorded from that scan on the same rows."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from fleet_mcp.federation import governance
from tests.federation import test_governance as tg

GOLDEN = Path(__file__).parent / "data" / "scan_golden.json"
NOW = tg.NOW
LATE = NOW + dt.timedelta(days=5)


def _rows() -> tuple[list, list]:
    peers = [
        tg.peer(1, "proposed", proposed_at=NOW - dt.timedelta(hours=73),
                token_expires_at=NOW - dt.timedelta(hours=49), remote_prefix_advertisement=["10.0.0.0/8"]),
        tg.peer(2, "accepted", trusted_since=NOW - dt.timedelta(hours=25),
                remote_prefix_advertisement=["10.1.0.0/16", "fd00::/8"]),
        tg.peer(3, "accepted", trusted_since=NOW - dt.timedelta(hours=1)),
        tg.peer(4, "active", last_handshake_at=NOW),
        tg.peer(5, "active", last_handshake_at=NOW),
        tg.peer(6, "revoked"),
        tg.peer(7, "active", last_handshake_at=NOW),
        tg.peer(8, "proposed", failed_attempts=5, token_expires_at=NOW + dt.timedelta(hours=1),
                remote_prefix_advertisement=["fd00:1::/32"]),
        tg.peer(9, "suspended"),
        tg.peer(10, "proposed", locked_until=NOW + dt.timedelta(minutes=5),
                token_expires_at=NOW + dt.timedelta(hours=1)),
    ]
    certs = [
        tg.cross(4, not_after=NOW + dt.timedelta(days=1)),
        tg.cross(4, not_after=NOW + dt.timedelta(days=1, hours=2)),
        tg.cross(5, not_after=NOW - dt.timedelta(hours=1)),
        tg.cross(6, not_after=LATE),
        tg.cross(6, not_after=LATE, revoked=True),
        tg.cross(7, not_after=LATE, constrained_to=None),
        tg.cross(7, not_after=LATE, constrained_to="acme.fleet.test", superseded=True),
        tg.cross(9, not_after=LATE, revoked=True),
        tg.cross(9, not_after=LATE),
    ]
    return peers, certs


def test_the_table_gives_the_findings_of_the_scan_before_it() -> None:
    peers, certs = _rows()
    findings = tg.run(peers, certs, failures={2: 7, 1: 5})
    serials = {c.serial: f"S{i}" for i, c in enumerate(certs)}  # serials are random: compare by position
    got = []
    for f in findings:
        message = f.message
        for serial, placeholder in serials.items():
            message = message.replace(serial, placeholder)
        got.append([f.kind, f.severity, f.federation_peer_id, message])
    assert got == json.loads(GOLDEN.read_text())


def test_one_rule_per_finding_kind_and_the_scan_iterates_the_table() -> None:
    kinds = [rule.kind for rule in governance.RULES]
    assert len(kinds) == len(set(kinds))
    assert set(kinds) >= {
        "proposal_stale", "token_expired", "accepted_no_handshake", "cross_handshake_pending",
        "cross_cert_expired", "cross_cert_expiring", "revoked_but_trusted", "unconstrained_cross_cert",
        "failed_accept_spike", "prefix_overlap",
    }
    for rule in governance.RULES:
        assert rule.severity in governance.SEVERITY_ORDER and callable(rule.find) and rule.find.__doc__
    # A table without a rule finds nothing of its kind: the scan has no findings of its own.
    peers, certs = _rows()
    without = [r for r in governance.RULES if r.kind != "prefix_overlap"]
    findings = governance.scan_peers(
        peers, certs, now=NOW, account_names=tg.NAMES, account_domains=tg.DOMAINS, rules=without
    )
    assert findings and "prefix_overlap" not in {f.kind for f in findings}
