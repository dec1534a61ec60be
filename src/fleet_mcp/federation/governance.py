"""The governance scan: a pure function from peer and cross-certificate rows to findings for an operator."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from fleet_mcp.federation import pki
from fleet_mcp.federation.lifecycle import TRUSTED_STATUSES, PeerStatus
from fleet_mcp.federation.models import FederationPeer, IssuedCertificate
from fleet_mcp.federation.schemas import FindingOut

SEVERITY_ORDER = ("critical", "high", "medium", "low", "info")


@dataclass(frozen=True)
class ScanThresholds:
    proposal_stale_after: dt.timedelta = dt.timedelta(hours=72)
    handshake_expected_within: dt.timedelta = dt.timedelta(hours=24)
    cross_cert_expiring_within: dt.timedelta = dt.timedelta(days=2)
    failed_accept_spike: int = 5


def parse_prefixes(values: Sequence[str] | None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for v in values or ():
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            continue
    return out


def _overlapping_pairs(live: Sequence[FederationPeer]) -> dict[tuple[int, int], list[str]]:
    """Pairs of peers (indexes into `live`, same proposer) whose advertised prefixes overlap, with the
    overlapping prefixes. A sort-and-sweep over address intervals: O(n log n + overlaps), where comparing
    every pair was quadratic (a 10k-peer scan took minutes)."""
    by_group: dict[tuple[int, int], list[tuple[int, int, int, Any]]] = {}
    for i, peer in enumerate(live):
        for net in parse_prefixes(peer.remote_prefix_advertisement):
            start, end = int(net.network_address), int(net.broadcast_address)
            by_group.setdefault((peer.local_account_id, net.version), []).append((start, end, i, net))
    pairs: dict[tuple[int, int], list[str]] = {}
    for intervals in by_group.values():
        intervals.sort(key=lambda t: (t[0], -t[1], t[2]))
        active: list[tuple[int, int, int, Any]] = []
        for cur in intervals:
            active = [a for a in active if a[1] >= cur[0]]
            for prev in active:
                if prev[2] == cur[2]:
                    continue  # one peer's own prefixes are not compared with each other
                (ia, na), (ib, nb) = sorted(((prev[2], prev[3]), (cur[2], cur[3])), key=lambda t: t[0])
                pairs.setdefault((ia, ib), []).append(f"{na} ~ {nb}")
            active.append(cur)
    return pairs


def _current(cert: IssuedCertificate) -> bool:
    return cert.revoked_at is None and cert.superseded_at is None


def scan_peers(
    peers: Sequence[FederationPeer],
    cross_certs: Sequence[IssuedCertificate],
    *,
    now: dt.datetime,
    account_names: Mapping[int, str],
    account_domains: Mapping[int, str | None],
    account_failures: Mapping[int, int] | None = None,
    thresholds: ScanThresholds | None = None,
) -> list[FindingOut]:
    """Findings, most severe first; `account_failures` counts recent failed accepts per attempting account."""
    t = thresholds or ScanThresholds()
    findings: list[FindingOut] = []

    def add(kind: str, severity: str, peer: FederationPeer | None, message: str) -> None:
        findings.append(
            FindingOut(
                kind=kind, severity=severity, federation_peer_id=peer.id if peer else None, message=message
            )
        )

    def name(account_id: int) -> str:
        return account_names.get(account_id, f"account {account_id}")

    certs_by_peer: dict[int | None, list[IssuedCertificate]] = {}
    for c in cross_certs:
        certs_by_peer.setdefault(c.peer_id, []).append(c)

    for p in peers:
        label = f"federation {name(p.local_account_id)} → {name(p.remote_account_id)} (peer {p.id})"
        status = PeerStatus(p.status)
        if status is PeerStatus.PROPOSED:
            if now - p.proposed_at >= t.proposal_stale_after:
                add(
                    "proposal_stale",
                    "low",
                    p,
                    f"{label} has been proposed since {p.proposed_at:%Y-%m-%d %H:%M} "
                    "UTC without being accepted; revoke it or regenerate the token.",
                )
            if p.token_expires_at is not None and p.token_expires_at <= now:
                add(
                    "token_expired",
                    "low",
                    p,
                    f"{label}: the acceptance token expired at "
                    f"{p.token_expires_at:%Y-%m-%d %H:%M} UTC; regenerate it or revoke the proposal.",
                )
        if status is PeerStatus.ACCEPTED:
            since = p.trusted_since or p.accepted_at or p.proposed_at
            verified = p.last_handshake_at is not None and p.last_handshake_at >= since
            if not verified:
                if now - since >= t.handshake_expected_within:
                    add(
                        "accepted_no_handshake",
                        "medium",
                        p,
                        f"{label} was accepted at {since:%Y-%m-%d %H:%M} UTC "
                        "but no mutual-TLS handshake has been verified; "
                        "run system_sdwan_verify_federation_handshake.",
                    )
                else:
                    add(
                        "cross_handshake_pending",
                        "info",
                        p,
                        f"{label} is accepted; its cross-certified handshake has not been verified yet.",
                    )
        peer_certs = certs_by_peer.get(p.id, [])
        trusted = [c for c in peer_certs if _current(c)]
        if status in TRUSTED_STATUSES:
            for c in trusted:
                left = c.not_after - now
                signer, subject = name(c.account_id), name(c.subject_account_id or 0)
                who = f"cross certificate {c.serial} ({signer} root → {subject})"
                if left <= dt.timedelta(0):
                    add(
                        "cross_cert_expired",
                        "high",
                        p,
                        f"{label}: {who} expired at {c.not_after:%Y-%m-%d %H:%M} "
                        "UTC; handshakes fail until it is renewed.",
                    )
                elif left <= t.cross_cert_expiring_within:
                    add(
                        "cross_cert_expiring",
                        "medium",
                        p,
                        f"{label}: {who} expires at "
                        f"{c.not_after:%Y-%m-%d %H:%M} UTC; the scheduler renews it while the peer is "
                        "trusted.",
                    )
        elif trusted:
            add(
                "revoked_but_trusted",
                "critical",
                p,
                f"{label} is {status.value} but "
                f"{len(trusted)} cross certificate(s) ({', '.join(c.serial for c in trusted)}) are still in "
                "trust bundles; revoke the peer again to remove them.",
            )
        for c in peer_certs:
            if c.revoked_at is not None or c.not_after <= now:
                continue
            domain = account_domains.get(c.subject_account_id or 0)
            permitted = pki.permitted_dns_names(x509.load_pem_x509_certificate(c.certificate_pem.encode()))
            if not permitted or not domain or any(d.lower() != domain.lower() for d in permitted):
                add(
                    "unconstrained_cross_cert",
                    "critical",
                    p,
                    f"{label}: cross certificate {c.serial} is not "
                    f"limited to {domain or '(no domain)'} by a critical DNS name constraint; "
                    "revoke the peer.",
                )
        if p.failed_attempts >= t.failed_accept_spike or (
            p.locked_until is not None and p.locked_until > now
        ):
            add(
                "failed_accept_spike",
                "high",
                p,
                f"{label}: {p.failed_attempts} failed accept attempt(s) against "
                "the current token; someone may be guessing it. Regenerate or revoke the proposal.",
            )

    for account_id, count in sorted((account_failures or {}).items()):
        if count >= t.failed_accept_spike:
            add(
                "failed_accept_spike",
                "high",
                None,
                f"account {name(account_id)} made {count} failed accept "
                "attempts recently; further accepts from it are refused for a while.",
            )

    live = [p for p in peers if p.status != PeerStatus.REVOKED.value and p.remote_prefix_advertisement]
    for (ia, ib), hits in sorted(_overlapping_pairs(live).items()):
        a, b = live[ia], live[ib]
        add(
            "prefix_overlap",
            "medium",
            b,
            f"peers {a.id} and {b.id} advertise overlapping prefixes "
            f"({'; '.join(hits)}); routes would be ambiguous.",
        )

    findings.sort(key=lambda f: (SEVERITY_ORDER.index(f.severity), f.federation_peer_id or 0, f.kind))
    return findings


def severity_summary(findings: Sequence[FindingOut]) -> dict[str, int]:
    counts = Counter(f.severity for f in findings)
    return {s: counts.get(s, 0) for s in SEVERITY_ORDER}
