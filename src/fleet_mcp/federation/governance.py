"""The governance scan: a table of rules, each a pure function from peer and cross-certificate rows to the
findings of one kind for an operator. The scan runs every rule of the table and sorts what they found."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from fleet_mcp.federation import pki
from fleet_mcp.federation.lifecycle import TRUSTED_STATUSES, PeerStatus
from fleet_mcp.federation.models import FederationPeer, FederationRemote, IssuedCertificate
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


@dataclass(frozen=True)
class ScanInput:
    """What every rule reads: the peers, their cross certificates and the account facts around them."""

    peers: Sequence[FederationPeer]
    certs_by_peer: Mapping[int | None, Sequence[IssuedCertificate]]
    now: dt.datetime
    account_names: Mapping[int, str]
    account_domains: Mapping[int, str | None]
    account_failures: Mapping[int, int]
    thresholds: ScanThresholds
    #: Peers on another instance: their link (channel, last poll, last error), by peer id.
    remotes: Mapping[int, FederationRemote] = field(default_factory=dict)

    def name(self, account_id: int) -> str:
        return self.account_names.get(account_id, f"account {account_id}")

    def label(self, p: FederationPeer) -> str:
        return f"federation {self.name(p.local_account_id)} → {self.name(p.remote_account_id)} (peer {p.id})"

    def certs(self, p: FederationPeer) -> Sequence[IssuedCertificate]:
        return self.certs_by_peer.get(p.id, ())

    def with_status(self, *statuses: PeerStatus) -> list[FederationPeer]:
        return [p for p in self.peers if PeerStatus(p.status) in statuses]


#: What a rule yields: the peer the finding is about (None for an account-wide finding) and the message.
Hit = tuple[FederationPeer | None, str]


@dataclass(frozen=True)
class Rule:
    """One finding kind: its severity and the function that finds its occurrences."""

    kind: str
    severity: str
    find: Callable[[ScanInput], Iterable[Hit]]


def _proposal_stale(s: ScanInput) -> Iterable[Hit]:
    """A proposal nobody accepted within `proposal_stale_after`."""
    for p in s.with_status(PeerStatus.PROPOSED):
        if s.now - p.proposed_at >= s.thresholds.proposal_stale_after:
            yield p, (
                f"{s.label(p)} has been proposed since {p.proposed_at:%Y-%m-%d %H:%M} "
                "UTC without being accepted; revoke it or regenerate the token."
            )


def _token_expired(s: ScanInput) -> Iterable[Hit]:
    """A proposal whose acceptance token has expired."""
    for p in s.with_status(PeerStatus.PROPOSED):
        if p.token_expires_at is not None and p.token_expires_at <= s.now:
            yield p, (
                f"{s.label(p)}: the acceptance token expired at "
                f"{p.token_expires_at:%Y-%m-%d %H:%M} UTC; regenerate it or revoke the proposal."
            )


def _unverified_since(s: ScanInput, p: FederationPeer) -> dt.datetime | None:
    """When an accepted peer became trusted, if no handshake has been verified since then."""
    since = p.trusted_since or p.accepted_at or p.proposed_at
    verified = p.last_handshake_at is not None and p.last_handshake_at >= since
    return None if verified else since


def _accepted_no_handshake(s: ScanInput) -> Iterable[Hit]:
    """An accepted peer still without a verified handshake after `handshake_expected_within`."""
    for p in s.with_status(PeerStatus.ACCEPTED):
        since = _unverified_since(s, p)
        if since is not None and s.now - since >= s.thresholds.handshake_expected_within:
            yield p, (
                f"{s.label(p)} was accepted at {since:%Y-%m-%d %H:%M} UTC "
                "but no mutual-TLS handshake has been verified; "
                "run system_sdwan_verify_federation_handshake."
            )


def _cross_handshake_pending(s: ScanInput) -> Iterable[Hit]:
    """A freshly accepted peer whose handshake is still to be verified (information only)."""
    for p in s.with_status(PeerStatus.ACCEPTED):
        since = _unverified_since(s, p)
        if since is not None and s.now - since < s.thresholds.handshake_expected_within:
            yield p, f"{s.label(p)} is accepted; its cross-certified handshake has not been verified yet."


def _trusted_cross_certs(s: ScanInput) -> Iterable[tuple[FederationPeer, IssuedCertificate, str]]:
    for p in s.with_status(*TRUSTED_STATUSES):
        for c in s.certs(p):
            if _current(c):
                signer, subject = s.name(c.account_id), s.name(c.subject_account_id or 0)
                yield p, c, f"cross certificate {c.serial} ({signer} root → {subject})"


def _cross_cert_expired(s: ScanInput) -> Iterable[Hit]:
    """A trusted peer's current cross certificate is past its end of validity."""
    for p, c, who in _trusted_cross_certs(s):
        if c.not_after - s.now <= dt.timedelta(0):
            yield p, (
                f"{s.label(p)}: {who} expired at {c.not_after:%Y-%m-%d %H:%M} "
                "UTC; handshakes fail until it is renewed."
            )


def _cross_cert_expiring(s: ScanInput) -> Iterable[Hit]:
    """A trusted peer's current cross certificate ends within `cross_cert_expiring_within`."""
    for p, c, who in _trusted_cross_certs(s):
        if dt.timedelta(0) < c.not_after - s.now <= s.thresholds.cross_cert_expiring_within:
            yield p, (
                f"{s.label(p)}: {who} expires at "
                f"{c.not_after:%Y-%m-%d %H:%M} UTC; the scheduler renews it while the peer is "
                "trusted."
            )


def _revoked_but_trusted(s: ScanInput) -> Iterable[Hit]:
    """A peer not trusted (proposed, suspended, revoked) with cross certificates still in trust bundles."""
    for p in s.peers:
        status = PeerStatus(p.status)
        if status in TRUSTED_STATUSES:
            continue
        trusted = [c for c in s.certs(p) if _current(c)]
        if trusted:
            yield p, (
                f"{s.label(p)} is {status.value} but "
                f"{len(trusted)} cross certificate(s) ({', '.join(c.serial for c in trusted)}) are still in "
                "trust bundles; revoke the peer again to remove them."
            )


def _unconstrained_cross_cert(s: ScanInput) -> Iterable[Hit]:
    """A valid cross certificate not limited to its subject's domain by a DNS name constraint."""
    for p in s.peers:
        for c in s.certs(p):
            if c.revoked_at is not None or c.not_after <= s.now:
                continue
            domain = s.account_domains.get(c.subject_account_id or 0)
            permitted = pki.permitted_dns_names(x509.load_pem_x509_certificate(c.certificate_pem.encode()))
            if not permitted or not domain or any(d.lower() != domain.lower() for d in permitted):
                yield p, (
                    f"{s.label(p)}: cross certificate {c.serial} is not "
                    f"limited to {domain or '(no domain)'} by a critical DNS name constraint; "
                    "revoke the peer."
                )


def _failed_accept_spike(s: ScanInput) -> Iterable[Hit]:
    """Many failed accepts against a peer's token, or from one attempting account."""
    for p in s.peers:
        if p.failed_attempts >= s.thresholds.failed_accept_spike or (
            p.locked_until is not None and p.locked_until > s.now
        ):
            yield p, (
                f"{s.label(p)}: {p.failed_attempts} failed accept attempt(s) against "
                "the current token; someone may be guessing it. Regenerate or revoke the proposal."
            )
    for account_id, count in sorted(s.account_failures.items()):
        if count >= s.thresholds.failed_accept_spike:
            yield None, (
                f"account {s.name(account_id)} made {count} failed accept "
                "attempts recently; further accepts from it are refused for a while."
            )


def _prefix_overlap(s: ScanInput) -> Iterable[Hit]:
    """Two live peers of one proposer whose advertised prefixes overlap."""
    live = [p for p in s.peers if p.status != PeerStatus.REVOKED.value and p.remote_prefix_advertisement]
    for (ia, ib), hits in sorted(_overlapping_pairs(live).items()):
        a, b = live[ia], live[ib]
        yield b, (
            f"peers {a.id} and {b.id} advertise overlapping prefixes "
            f"({'; '.join(hits)}); routes would be ambiguous."
        )


def _remote_links(s: ScanInput) -> Iterable[tuple[FederationPeer, FederationRemote]]:
    for p in s.peers:
        link = s.remotes.get(p.id)
        if link is not None and link.remote_peer_id is not None:
            yield p, link


def _remote_revoked_local_trusted(s: ScanInput) -> Iterable[Hit]:
    """The other instance revoked the peer but this side still has it (its revoke did not apply)."""
    for p, link in _remote_links(s):
        if link.remote_status == PeerStatus.REVOKED.value and p.status != PeerStatus.REVOKED.value:
            yield p, (
                f"{s.label(p)} is revoked on the other instance ({link.remote_instance_id}) but {p.status} here; "
                "revoke it here too."
            )


def _remote_unreachable(s: ScanInput) -> Iterable[Hit]:
    """The last poll or push to the other instance could not reach it."""
    for p, link in _remote_links(s):
        if p.status != PeerStatus.REVOKED.value and link.last_error_kind == "unreachable":
            yield p, (
                f"{s.label(p)}: the other instance at {link.remote_endpoint} was unreachable ({link.last_error}); "
                "its suspensions and revocations reach this side only when it answers again."
            )


def _sequence_backwards(s: ScanInput) -> Iterable[Hit]:
    """The other instance served a bundle older than one already accepted (a rollback or a replay)."""
    for p, link in _remote_links(s):
        if link.last_error_kind == "sequence_backwards":
            yield p, f"{s.label(p)}: {link.last_error}; the newer bundle is kept. Ask the other operators why."


def _remote_bundle_refused(s: ScanInput) -> Iterable[Hit]:
    """The other instance's bundle was refused: another trust domain, malformed, oversized, or refused."""
    for p, link in _remote_links(s):
        if p.status != PeerStatus.REVOKED.value and link.last_error_kind in ("wrong_trust_domain", "malformed", "refused"):
            yield p, f"{s.label(p)}: the other instance's bundle was refused ({link.last_error})."


def _bundle_stale(s: ScanInput) -> Iterable[Hit]:
    """No bundle from the other instance for three refresh intervals while the peer is trusted."""
    for p, link in _remote_links(s):
        if PeerStatus(p.status) not in TRUSTED_STATUSES:
            continue
        last = link.bundle_fetched_at
        if last is None or s.now - last > dt.timedelta(seconds=3 * max(link.refresh_hint, 1)):
            when = f"{last:%Y-%m-%d %H:%M} UTC" if last else "never"
            yield p, (
                f"{s.label(p)}: the other instance's bundle was last fetched {when} (refresh every "
                f"{link.refresh_hint} s); a CA rotation or revocation there may not have arrived."
            )


def _channel_cert_expiring(s: ScanInput) -> Iterable[Hit]:
    """The channel certificate the other instance issued to us is past 5/6 of its life (the renewal job renews
    at 2/3) or expired: once it expires, polls, pushes and handshakes with that instance stop."""
    from fleet_mcp.federation import pki

    for p, link in _remote_links(s):
        if p.status == PeerStatus.REVOKED.value or not link.outbound_channel_cert_pem:
            continue
        try:
            cert = pki.load_cert(link.outbound_channel_cert_pem)
        except ValueError:
            continue
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if s.now >= start + (end - start) * 5 / 6:
            state = "expired" if s.now >= end else f"expires {end:%Y-%m-%d %H:%M} UTC"
            why = f" (last renewal attempt: {link.last_error})" if link.last_error_kind == "channel_renewal_failed" else ""
            yield p, (
                f"{s.label(p)}: our channel certificate for {link.remote_instance_id} {state} and was not "
                f"renewed{why}; check the scheduler (`federation.renew_channel_certificates`) and the link."
            )


#: The scan is this table: add a finding kind by adding a rule here.
RULES: tuple[Rule, ...] = (
    Rule("proposal_stale", "low", _proposal_stale),
    Rule("token_expired", "low", _token_expired),
    Rule("accepted_no_handshake", "medium", _accepted_no_handshake),
    Rule("cross_handshake_pending", "info", _cross_handshake_pending),
    Rule("cross_cert_expired", "high", _cross_cert_expired),
    Rule("cross_cert_expiring", "medium", _cross_cert_expiring),
    Rule("revoked_but_trusted", "critical", _revoked_but_trusted),
    Rule("unconstrained_cross_cert", "critical", _unconstrained_cross_cert),
    Rule("failed_accept_spike", "high", _failed_accept_spike),
    Rule("prefix_overlap", "medium", _prefix_overlap),
    Rule("remote_revoked_local_trusted", "critical", _remote_revoked_local_trusted),
    Rule("remote_unreachable", "high", _remote_unreachable),
    Rule("sequence_backwards", "high", _sequence_backwards),
    Rule("remote_bundle_refused", "high", _remote_bundle_refused),
    Rule("bundle_stale", "medium", _bundle_stale),
    Rule("channel_cert_expiring", "high", _channel_cert_expiring),
)


def scan_peers(
    peers: Sequence[FederationPeer],
    cross_certs: Sequence[IssuedCertificate],
    *,
    now: dt.datetime,
    account_names: Mapping[int, str],
    account_domains: Mapping[int, str | None],
    account_failures: Mapping[int, int] | None = None,
    thresholds: ScanThresholds | None = None,
    rules: Sequence[Rule] = RULES,
    remotes: Mapping[int, FederationRemote] | None = None,
) -> list[FindingOut]:
    """Findings of every rule, most severe first; `account_failures` counts recent failed accepts per
    attempting account."""
    certs_by_peer: dict[int | None, list[IssuedCertificate]] = {}
    for c in cross_certs:
        certs_by_peer.setdefault(c.peer_id, []).append(c)
    scan = ScanInput(
        peers=peers,
        certs_by_peer=certs_by_peer,
        now=now,
        account_names=account_names,
        account_domains=account_domains,
        account_failures=account_failures or {},
        thresholds=thresholds or ScanThresholds(),
        remotes=remotes or {},
    )
    findings = [
        FindingOut(
            kind=rule.kind,
            severity=rule.severity,
            federation_peer_id=peer.id if peer is not None else None,
            message=message,
        )
        for rule in rules
        for peer, message in rule.find(scan)
    ]
    findings.sort(key=lambda f: (SEVERITY_ORDER.index(f.severity), f.federation_peer_id or 0, f.kind))
    return findings


def severity_summary(findings: Sequence[FindingOut]) -> dict[str, int]:
    counts = Counter(f.severity for f in findings)
    return {s: counts.get(s, 0) for s in SEVERITY_ORDER}
