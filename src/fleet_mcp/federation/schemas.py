"""Result shapes of the federation services (and of the federation tools); never a token digest."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from fleet_mcp.schema_marks import SECRET


class CrossCertificateOut(BaseModel):
    signed_by: str = Field(description="Account whose root signed it (it sits in that account's bundle).")
    signed_for: str = Field(description="Account whose intermediate it vouches for.")
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    name_constraints: list[str] = Field(description="Permitted DNS subtrees (critical name constraint).")
    state: str = Field(description="current | superseded | revoked | expired")
    revoked_at: dt.datetime | None = None


class RemoteInstanceOut(BaseModel):
    """The other fleet-mcp instance of a peer federated across instances (public data only)."""

    instance_id: str | None = Field(description="The other instance's id (None until a proposal is claimed).")
    account: str | None = Field(default=None, description="The account there.")
    domain: str = Field(description="The federation domain of the account there.")
    endpoint: str | None = Field(default=None, description="Its federation endpoint URL.")
    ca_pin: str | None = Field(default=None, description="SHA-256 of its instance CA (the pin).")
    role: str = Field(description="This instance's role: proposer | acceptor.")
    remote_peer_id: int | None = Field(default=None, description="The peer's id on the other instance.")
    remote_status: str | None = Field(default=None, description="What the other instance last said the status is.")
    bundle_sequence: int = Field(description="Sequence of the last trust bundle accepted from it.")
    bundle_fetched_at: dt.datetime | None = None
    refresh_hint: int = Field(description="Seconds between polls it asked for.")
    last_contact_at: dt.datetime | None = None
    last_error_kind: str | None = None
    last_error: str | None = None
    pending_action: str | None = Field(default=None, description="A lifecycle change not yet delivered there.")
    channel_certificate_not_after: dt.datetime | None = Field(
        default=None, description="Expiry of the channel certificate it issued to us (renewed at 2/3 of its life)."
    )


class FederationPeerOut(BaseModel):
    id: int
    local_account: str = Field(description="The proposing account.")
    remote_account: str = Field(description="The accepting account.")
    status: str
    allowed_transitions: list[str]
    remote_prefix_advertisement: list[str] | None = None
    proposed_at: dt.datetime
    proposed_by: str | None = None
    accepted_at: dt.datetime | None = None
    accepted_by: str | None = None
    last_handshake_at: dt.datetime | None = None
    last_handshake_error: str | None = None
    token_expires_at: dt.datetime | None = Field(
        default=None, description="Expiry of the pending acceptance token (only while proposed)."
    )
    failed_attempts: int = 0
    locked_until: dt.datetime | None = None
    suspended_at: dt.datetime | None = None
    suspended_reason: str | None = None
    suspended_by: list[str] = Field(
        default_factory=list,
        description="Accounts holding a suspension; each lifts only its own, and the peer resumes when none is left.",
    )
    revoked_at: dt.datetime | None = None
    revoked_reason: str | None = None
    cross_certificates: list[CrossCertificateOut] = Field(default_factory=list)
    remote_instance: RemoteInstanceOut | None = Field(
        default=None, description="Set when the other account lives on another fleet-mcp instance."
    )


class ProposalOut(BaseModel):
    federation_peer: FederationPeerOut
    acceptance_token: str = Field(description="Shown once: hand it to the remote account out of band.",
                                  json_schema_extra=SECRET)
    acceptance_token_expires_at: dt.datetime
    peering_token: str | None = Field(
        default=None,
        description="Only for a remote account on another instance: shown once, pasted into "
        "system_sdwan_accept_remote_federation_peer there (endpoint, pinned CA, one-time secret, expiry).",
        json_schema_extra=SECRET,
    )


class TokenOut(BaseModel):
    federation_peer_id: int
    acceptance_token: str = Field(description="Shown once; the previous token no longer works.",
                                  json_schema_extra=SECRET)
    acceptance_token_expires_at: dt.datetime
    peering_token: str | None = Field(
        default=None, description="For a proposal to another instance: the new peering token (shown once).",
        json_schema_extra=SECRET,
    )


class AcceptOut(BaseModel):
    federation_peer: FederationPeerOut
    cross_certificates: list[CrossCertificateOut]


class DirectionOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    from_: str = Field(alias="from", description="Account whose node was the TLS client.")
    to: str = Field(description="Account whose node was the TLS server.")
    ok: bool
    error: str | None = None
    tls_version: str | None = None


class HandshakeOut(BaseModel):
    ok: bool
    directions: list[DirectionOut]
    federation_peer: FederationPeerOut


class NodeCertificateOut(BaseModel):
    certificate_pem: str
    chain_pem: str = Field(description="What the node presents: [leaf, own intermediate].")
    serial: str
    not_after: dt.datetime
    dns_name: str
    private_key_pem: str | None = Field(
        default=None, description="Only when the server generated the key; shown once, never stored.",
        json_schema_extra=SECRET,
    )


class TrustBundleOut(BaseModel):
    account: str
    bundle_pem: str = Field(description="Own root plus the cross certificates the own root signed.")
    bundle_version: int
    certificate_count: int
    crls_pem: str | None = Field(default=None, description="CRLs to load with VERIFY_CRL_CHECK_CHAIN.")


class FindingOut(BaseModel):
    kind: str
    severity: str
    federation_peer_id: int | None
    message: str


class ScanOut(BaseModel):
    findings: list[FindingOut]
    finding_count: int
    severity_summary: dict[str, int]
