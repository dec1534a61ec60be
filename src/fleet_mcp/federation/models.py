"""Federation tables: per-account CAs, every issued certificate, federation peers and failed accepts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleet_mcp.db.base import Base, BigId, TimestampMixin, utcnow


class CertificateAuthority(TimestampMixin, Base):
    """One per account: root and intermediate certificates; private keys live elsewhere, sealed."""

    __tablename__ = "certificate_authorities"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), unique=True)
    root_cert_pem: Mapped[str] = mapped_column(Text)
    intermediate_cert_pem: Mapped[str] = mapped_column(Text)
    #: References returned by the key sealer (a transit-encrypted credential), never key material.
    root_key_ref: Mapped[str] = mapped_column(String(120))
    intermediate_key_ref: Mapped[str] = mapped_column(String(120))
    #: Grows whenever the trust bundle's content changes; `bundle_digest` is what it was computed from.
    bundle_version: Mapped[int] = mapped_column(default=1)
    bundle_digest: Mapped[str | None] = mapped_column(String(64))
    root_crl_number: Mapped[int] = mapped_column(default=1)
    intermediate_crl_number: Mapped[int] = mapped_column(default=1)
    root_crl_pem: Mapped[str | None] = mapped_column(Text)
    intermediate_crl_pem: Mapped[str | None] = mapped_column(Text)
    crl_next_update: Mapped[dt.datetime | None]


class IssuedCertificate(Base):
    """Every certificate an account's CA signed: node leaves and cross certificates."""

    __tablename__ = "issued_certificates"
    __table_args__ = (
        UniqueConstraint("account_id", "serial"),
        Index("ix_issued_certificates_peer_kind", "peer_id", "kind"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: The account whose CA signed it.
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    #: Lower-case hex of the X.509 serial (up to 159 bits, too wide for an integer column).
    serial: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # node | cross
    subject: Mapped[str] = mapped_column(String(500))
    dns_name: Mapped[str | None] = mapped_column(String(253))
    #: For cross certificates: the account whose intermediate was signed.
    subject_account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    peer_id: Mapped[int | None] = mapped_column(ForeignKey("federation_peers.id", ondelete="SET NULL"))
    name_constraints: Mapped[list[Any] | None]
    certificate_pem: Mapped[str] = mapped_column(Text)
    not_before: Mapped[dt.datetime]
    not_after: Mapped[dt.datetime]
    issued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: A renewed cross certificate leaves the bundle without being revoked.
    superseded_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    revocation_reason: Mapped[str | None] = mapped_column(String(500))


class FederationPeer(TimestampMixin, Base):
    """A federation between the proposing (local) account and the accepting (remote) account."""

    __tablename__ = "federation_peers"
    __table_args__ = (Index("ix_federation_peers_accounts", "local_account_id", "remote_account_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    local_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    remote_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    #: proposed | accepted | active | suspended | revoked (see federation.lifecycle).
    status: Mapped[str] = mapped_column(String(16), default="proposed", index=True)
    #: CIDR prefixes the remote side is expected to advertise.
    remote_prefix_advertisement: Mapped[list[Any] | None]
    #: Public half of the acceptance token; the secret is kept only as `token_digest` (SHA-256).
    token_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    token_digest: Mapped[str | None] = mapped_column(String(64))
    token_issued_at: Mapped[dt.datetime | None]
    token_expires_at: Mapped[dt.datetime | None]
    #: Failed accepts against the current token (the proposal is cancelled at the threshold).
    failed_attempts: Mapped[int] = mapped_column(default=0)
    last_failed_at: Mapped[dt.datetime | None]
    locked_until: Mapped[dt.datetime | None]
    proposed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    proposed_by: Mapped[str | None] = mapped_column(String(250))
    accepted_at: Mapped[dt.datetime | None]
    accepted_by: Mapped[str | None] = mapped_column(String(250))
    #: When the peer last (re-)entered `accepted` — a handshake is expected after it.
    trusted_since: Mapped[dt.datetime | None]
    last_handshake_at: Mapped[dt.datetime | None]
    last_handshake_error: Mapped[str | None] = mapped_column(Text)
    suspended_at: Mapped[dt.datetime | None]
    suspended_reason: Mapped[str | None] = mapped_column(String(500))
    #: Who holds a suspension on each side (the principal that suspended); only that side lifts it, and the
    #: peer leaves `suspended` only when neither side holds one.
    local_suspended_by: Mapped[str | None] = mapped_column(String(250))
    remote_suspended_by: Mapped[str | None] = mapped_column(String(250))
    revoked_at: Mapped[dt.datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(500))
    revoked_by: Mapped[str | None] = mapped_column(String(250))
    #: Serials (hex) of the current cross certificates: signed by the local root / by the remote root.
    local_cross_serial: Mapped[str | None] = mapped_column(String(64))
    remote_cross_serial: Mapped[str | None] = mapped_column(String(64))


class FederationAcceptFailure(Base):
    """One failed accept attempt, for the sliding windows per attempting account and per peer."""

    __tablename__ = "federation_accept_failures"
    __table_args__ = (
        Index("ix_federation_accept_failures_account_at", "account_id", "at"),
        Index("ix_federation_accept_failures_peer_at", "peer_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    peer_id: Mapped[int | None] = mapped_column(ForeignKey("federation_peers.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(String(40))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class FederationRemote(TimestampMixin, Base):
    """The other instance of a federation peer between two fleet-mcp instances (docs/federation-protocol.md).

    The other side's account is a *remote account* (`<account>@<instance id>`, no principals) whose CA row
    holds the other side's root and intermediate without keys; this row holds the channel to its instance."""

    __tablename__ = "federation_remotes"

    id: Mapped[int] = mapped_column(primary_key=True)
    peer_id: Mapped[int] = mapped_column(ForeignKey("federation_peers.id", ondelete="CASCADE"), unique=True)
    #: proposer | acceptor: this instance's role in the establishment.
    role: Mapped[str] = mapped_column(String(16))
    #: The account of this instance (the other side of the peer is the remote account).
    local_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    remote_instance_id: Mapped[str | None] = mapped_column(String(64))
    remote_account_name: Mapped[str | None] = mapped_column(String(120))
    #: The domain the remote account must have (set when proposing; checked at establishment).
    remote_domain: Mapped[str] = mapped_column(String(253))
    remote_endpoint: Mapped[str | None] = mapped_column(String(500))
    remote_peer_id: Mapped[int | None]
    #: SHA-256 of the remote instance CA (the pin) and the CA itself, the only trust for its endpoint.
    remote_ca_pin: Mapped[str | None] = mapped_column(String(64))
    remote_instance_ca_pem: Mapped[str | None] = mapped_column(Text)
    #: SHA-256 of the channel certificate this instance issued to the remote: how its calls are recognised.
    inbound_channel_fp: Mapped[str | None] = mapped_column(String(64), unique=True)
    #: The fingerprint before the last renewal: still accepted until the remote first uses the renewed
    #: certificate (so a renewal whose answer was lost does not cut the channel).
    previous_inbound_channel_fp: Mapped[str | None] = mapped_column(String(64))
    #: The channel certificate the remote instance issued to us, and our sealed key for it.
    outbound_channel_cert_pem: Mapped[str | None] = mapped_column(Text)
    outbound_channel_key_ref: Mapped[str | None] = mapped_column(String(120))
    #: proposer side: set when a remote claimed the secret and the confirm is still to come.
    claimed_at: Mapped[dt.datetime | None]
    bundle_sequence: Mapped[int] = mapped_column(default=0)
    bundle_fetched_at: Mapped[dt.datetime | None]
    refresh_hint: Mapped[int] = mapped_column(default=300)
    #: What the other side last said about the peer, and the last channel failure (for the scan).
    remote_status: Mapped[str | None] = mapped_column(String(16))
    last_contact_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    last_error_kind: Mapped[str | None] = mapped_column(String(40))
    #: A lifecycle action not yet delivered to the other side (it also learns it from its next poll).
    pending_action: Mapped[str | None] = mapped_column(String(16))
    pending_reason: Mapped[str | None] = mapped_column(String(500))
