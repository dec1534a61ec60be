"""SD-WAN federation tools: propose/accept peers with one-time tokens, verify mTLS, suspend/resume/revoke,
scan, node certificates and trust bundles. Thin: each validates, calls the federation service, shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from fleet_mcp.context import ToolContext
from fleet_mcp.errors import ExternalError, FleetError
from fleet_mcp.federation.schemas import (
    AcceptOut,
    FederationPeerOut,
    HandshakeOut,
    NodeCertificateOut,
    ProposalOut,
    ScanOut,
    TokenOut,
    TrustBundleOut,
)
from fleet_mcp.federation.service import FederationService
from fleet_mcp.registry import Args, NoArgs, tool

FEDERATION: dict[str, Any] = {"toolset": "federation"}
MANAGE = "sdwan.federation.manage"
READ = "sdwan.federation.read"
TTL_DESCRIPTION = "How long the acceptance token stays valid, in seconds (default 24 h, at most 7 days)."


def service(ctx: ToolContext) -> FederationService:
    """The federation service over the app's transit backend (CA keys are sealed credentials)."""
    if ctx.app.transit is None:
        raise ExternalError(
            "no transit backend is configured, so CA keys cannot be sealed",
            hint="start the server with the local transit (default) or FLEET_MCP_TRANSIT=vault",
        )
    from fleet_mcp.federation.listener import build_service

    return build_service(ctx.app)


def _who(ctx: ToolContext) -> dict[str, Any]:
    return {"account_id": ctx.principal.account_id, "correlation_id": ctx.call_id}


# -- inputs --------------------------------------------------------------------------------------


class PeerIdArgs(Args):
    federation_peer_id: int = Field(description="Id of the federation peer.", ge=1)


class ReasonArgs(PeerIdArgs):
    reason: str = Field(
        description="Why (kept on the peer and in the audit log).", min_length=1, max_length=500
    )


class ProposeArgs(Args):
    remote_account: str = Field(
        description="Name of the account to federate with.", min_length=1, max_length=120
    )
    remote_prefix_advertisement: str | list[str] | None = Field(
        default=None,
        description="CIDR prefixes the remote side is expected to advertise (list or comma list).",
    )
    token_ttl_seconds: int = Field(default=86_400, ge=60, le=7 * 86_400, description=TTL_DESCRIPTION)
    remote_federation_domain: str | None = Field(
        default=None,
        max_length=253,
        description="Set when the remote account lives on another fleet-mcp instance: the federation domain "
        "it must have (our root's cross certificate is limited to it). The result then holds a peering_token.",
    )


class AcceptRemoteArgs(Args):
    peering_token: SecretStr = Field(
        description="The fmcp-peering-v1.… token the proposing instance's operators handed over.",
        min_length=1,
        max_length=4096,
    )


class RefreshOut(BaseModel):
    outcome: str = Field(
        description="ok | unreachable | refused | wrong_trust_domain | sequence_backwards | malformed | revoked | "
        "changed (the peer changed while the other instance was asked; nothing applied, poll again)"
    )
    federation_peer: FederationPeerOut


class AcceptArgs(PeerIdArgs):
    acceptance_token: SecretStr = Field(
        description="The one-time token the proposing account handed over.", min_length=1, max_length=200
    )


class RegenerateArgs(PeerIdArgs):
    token_ttl_seconds: int = Field(default=86_400, ge=60, le=7 * 86_400, description=TTL_DESCRIPTION)


class ListArgs(Args):
    status: Literal["proposed", "accepted", "active", "suspended", "revoked"] | None = Field(
        default=None, description="Only peers in this status."
    )


class IssueArgs(Args):
    node_name: str = Field(
        description="A DNS label (placed under the account's federation domain) or a full "
        "name already under it.",
        min_length=1,
        max_length=253,
    )
    csr_pem: str | None = Field(
        default=None,
        max_length=16_384,
        description="PEM CSR of the node's own key; "
        "without it the server generates a key and returns it once.",
    )


class BundleArgs(Args):
    include_crls: bool = Field(
        default=False,
        description="Also return the CRLs a verifier needs (load them with VERIFY_CRL_CHECK_CHAIN).",
    )


# -- outputs -------------------------------------------------------------------------------------


class PeerOut(BaseModel):
    federation_peer: FederationPeerOut


class PeersOut(BaseModel):
    federation_peers: list[FederationPeerOut]
    count: int


# -- approval summaries --------------------------------------------------------------------------


async def _peer_summary(ctx: ToolContext, peer_id: int, verb: str, extra: str = "") -> str:
    peer = await service(ctx).get_peer(ctx.session, account_id=ctx.principal.account_id, peer_id=peer_id)
    return (
        f"{verb} federation peer {peer.id} ({peer.local_account} → {peer.remote_account}, now {peer.status})"
        f"{extra}"
    )


async def _propose_summary(ctx: ToolContext, args: ProposeArgs) -> str:
    prefixes = args.remote_prefix_advertisement
    shown = ", ".join(prefixes) if isinstance(prefixes, list) else (prefixes or "none")
    return (
        f"Propose federating {ctx.principal.account_name} with {args.remote_account} (expected prefixes: "
        f"{shown}); a one-time acceptance token valid {args.token_ttl_seconds} s is returned once."
    )


async def _accept_summary(ctx: ToolContext, args: AcceptArgs) -> str:
    return await _peer_summary(
        ctx,
        args.federation_peer_id,
        "Accept",
        "; both roots cross-sign the other's intermediate (name-constrained).",
    )


async def _regenerate_summary(ctx: ToolContext, args: RegenerateArgs) -> str:
    return await _peer_summary(
        ctx,
        args.federation_peer_id,
        "Replace the acceptance token of",
        f"; the new token is valid {args.token_ttl_seconds} s.",
    )


async def _suspend_summary(ctx: ToolContext, args: ReasonArgs) -> str:
    return await _peer_summary(
        ctx,
        args.federation_peer_id,
        "Suspend",
        f" — trust is withdrawn from both bundles. Reason: {args.reason}",
    )


async def _resume_summary(ctx: ToolContext, args: ReasonArgs) -> str:
    return await _peer_summary(
        ctx,
        args.federation_peer_id,
        "Resume",
        f" — fresh cross certificates are issued. Reason: {args.reason}",
    )


async def _revoke_summary(ctx: ToolContext, args: ReasonArgs) -> str:
    return await _peer_summary(
        ctx,
        args.federation_peer_id,
        "Revoke (terminal)",
        f" — cross certificates leave both bundles and go on the CRLs. Reason: {args.reason}",
    )


# -- tools ---------------------------------------------------------------------------------------


@tool(
    name="system_sdwan_propose_federation_peer",
    title="Propose a federation peer",
    permission=MANAGE,
    summary=_propose_summary,
    **FEDERATION,
)
async def propose_federation_peer(ctx: ToolContext, args: ProposeArgs) -> ProposalOut:
    """Propose federating this account with another account; returns the one-time acceptance token.

    The token (a public id and a 256-bit secret) is shown only in this result and stored only as a SHA-256
    digest. Hand it to the remote account's operators out of band; they accept with
    system_sdwan_accept_federation_peer before it expires."""
    return await service(ctx).propose(
        ctx.session,
        remote_account=args.remote_account,
        remote_prefix_advertisement=args.remote_prefix_advertisement,
        token_ttl_seconds=args.token_ttl_seconds,
        remote_federation_domain=args.remote_federation_domain,
        actor=ctx.principal.qualified,
        **_who(ctx),
    )


async def _accept_remote_summary(ctx: ToolContext, args: AcceptRemoteArgs) -> str:
    from fleet_mcp.db.base import utcnow
    from fleet_mcp.federation import peering

    try:
        t = peering.decode(args.peering_token.get_secret_value(), now=utcnow())
    except Exception:  # noqa: BLE001 - the call itself reports what is wrong with the token
        return f"Accept a federation proposal from another instance for {ctx.principal.account_name} (token unreadable)."
    return (
        f"Accept federating {ctx.principal.account_name} with {t.account} ({t.domain}) on instance "
        f"{t.issuer_instance} at {', '.join(t.endpoints)} (CA pin {t.pin[:16]}…); our root cross-signs its "
        f"intermediate, limited to {t.domain}."
    )


@tool(
    name="system_sdwan_accept_remote_federation_peer",
    title="Accept a federation peer from another instance",
    permission=MANAGE,
    summary=_accept_remote_summary,
    **FEDERATION,
)
async def accept_remote_federation_peer(ctx: ToolContext, args: AcceptRemoteArgs) -> AcceptOut:
    """Accept a proposal made on another fleet-mcp instance with its peering token.

    Dials the endpoint in the token, checks that it presents the pinned CA (no Web PKI, no trust on first
    use), presents the one-time secret and this account's CA certificates; the proposing instance claims the
    secret once. Each side's root then cross-signs the other's intermediate, limited to the other's domain,
    and both sides are accepted. Needs this server's own federation endpoint (serve --federation-listen)."""
    return await service(ctx).accept_remote(
        ctx.session,
        peering_token=args.peering_token.get_secret_value(),
        actor=ctx.principal.qualified,
        **_who(ctx),
    )


async def _dial_refresh(ctx: ToolContext, args: PeerIdArgs) -> Any:
    """The refresh's network half, before the unit of work opens (read session, no write lock held while the
    other instance answers or hangs). A refused request (not visible, not remote) is left to the handler."""
    svc = service(ctx)
    try:
        poll = await svc.prepare_poll(
            ctx.session, peer_id=args.federation_peer_id, account_id=ctx.principal.account_id
        )
    except FleetError:
        return None
    return await svc.dial_poll(poll) if poll is not None else None


@tool(
    name="system_sdwan_refresh_federation_peer",
    title="Refresh a federation peer on another instance",
    permission=MANAGE,
    prepare=_dial_refresh,
    **FEDERATION,
)
async def refresh_federation_peer(ctx: ToolContext, args: PeerIdArgs) -> RefreshOut:
    """Poll the other instance of a peer now (the scheduler does it every refresh interval): deliver a
    lifecycle change still pending, fetch its trust bundle and status, apply its suspension, resumption or
    revocation, and re-sign a rotated intermediate. A bundle for another trust domain, with an older
    sequence, oversized or malformed, is refused and reported. The other instance is called before this
    call's transaction opens; if the peer changed meanwhile the answer is dropped (outcome `changed`)."""
    svc = service(ctx)
    # Checks visibility and that the peer is remote again, with the errors a caller should see.
    await svc.established(ctx.session, peer_id=args.federation_peer_id, account_id=ctx.principal.account_id)
    poll = ctx.prepared
    if poll is None or poll.peer_id != args.federation_peer_id:
        raise ExternalError(
            "the other instance could not be polled before this call's transaction opened; nothing changed",
            hint="try again; the server log has the cause",
        )
    outcome = await svc.apply_poll(ctx.session, poll)
    peer = await svc.get_peer(ctx.session, account_id=ctx.principal.account_id, peer_id=args.federation_peer_id)
    return RefreshOut(outcome=outcome, federation_peer=peer)


def _push_after_commit(ctx: ToolContext, peer_id: int) -> None:
    """Deliver the lifecycle change this call committed to the other instance (if the peer has one), after
    the commit and outside any transaction; the result shows whether it was delivered. A failed push stays
    pending on the link for the next poll."""

    async def push(result: Any) -> PeerOut | None:
        from fleet_mcp.federation.polling import poll_peer

        svc = service(ctx)
        await poll_peer(ctx.app, svc, peer_id, push_only=True, principal=ctx.principal.qualified,
                        account=ctx.principal.account_name, tool="federation.push_lifecycle", always_audit=True)
        assert ctx.app.read_sessionmaker is not None
        async with ctx.app.read_sessionmaker() as read:
            return PeerOut(federation_peer=await svc.get_peer(read, account_id=ctx.principal.account_id,
                                                               peer_id=peer_id))

    ctx.after_commit(push)


@tool(
    name="system_sdwan_accept_federation_peer",
    title="Accept a federation peer",
    permission=MANAGE,
    summary=_accept_summary,
    **FEDERATION,
)
async def accept_federation_peer(ctx: ToolContext, args: AcceptArgs) -> AcceptOut:
    """Accept a federation proposal addressed to this account with its one-time token.

    On success each account's root cross-signs the other's intermediate, limited by a DNS name constraint
    to the other's federation domain, and both trust bundles change. A wrong, unknown, used or expired token
    is refused; repeated failures lock accepting for a while and eventually cancel the proposal."""
    return await service(ctx).accept(
        ctx.session,
        peer_id=args.federation_peer_id,
        acceptance_token=args.acceptance_token.get_secret_value(),
        actor=ctx.principal.qualified,
        **_who(ctx),
    )


@tool(
    name="system_sdwan_regenerate_acceptance_token",
    title="Regenerate an acceptance token",
    permission=MANAGE,
    summary=_regenerate_summary,
    **FEDERATION,
)
async def regenerate_acceptance_token(ctx: ToolContext, args: RegenerateArgs) -> TokenOut:
    """Replace the acceptance token of a proposal this account made; the previous token stops working."""
    return await service(ctx).regenerate_token(
        ctx.session, peer_id=args.federation_peer_id, token_ttl_seconds=args.token_ttl_seconds, **_who(ctx)
    )


@tool(
    name="system_sdwan_list_federation_peers",
    title="List federation peers",
    permission=READ,
    read_only=True,
    idempotent=True,
    **FEDERATION,
)
async def list_federation_peers(ctx: ToolContext, args: ListArgs) -> PeersOut:
    """Federation peers this account proposed or was proposed to, with status and cross certificates."""
    peers = await service(ctx).list_peers(
        ctx.session, account_id=ctx.principal.account_id, status=args.status
    )
    return PeersOut(federation_peers=peers, count=len(peers))


@tool(
    name="system_sdwan_get_federation_peer",
    title="Get a federation peer",
    permission=READ,
    read_only=True,
    idempotent=True,
    **FEDERATION,
)
async def get_federation_peer(ctx: ToolContext, args: PeerIdArgs) -> PeerOut:
    """One federation peer: status, allowed transitions, timestamps and cross certificates (never a token)."""
    peer = await service(ctx).get_peer(
        ctx.session, account_id=ctx.principal.account_id, peer_id=args.federation_peer_id
    )
    return PeerOut(federation_peer=peer)


@tool(
    name="system_sdwan_verify_federation_handshake",
    title="Verify a federation handshake",
    permission=MANAGE,
    **FEDERATION,
)
async def verify_federation_handshake(ctx: ToolContext, args: PeerIdArgs) -> HandshakeOut:
    """Run a real mutual-TLS handshake over loopback between fresh nodes of both accounts, in both directions.

    Each side trusts only its own bundle. Success makes an accepted peer active; a failure names the
    direction and the reason (e.g. certificate verify failed). For a peer on another instance, a fresh node
    of this account connects to a fresh node of the other account served by that instance's federation
    endpoint (one direction per call: this instance's node is the client); success activates both sides."""
    return await service(ctx).verify_handshake(ctx.session, peer_id=args.federation_peer_id, **_who(ctx))


@tool(
    name="system_sdwan_suspend_federation_peer",
    title="Suspend a federation peer",
    permission=MANAGE,
    summary=_suspend_summary,
    **FEDERATION,
)
async def suspend_federation_peer(ctx: ToolContext, args: ReasonArgs) -> PeerOut:
    """Suspend an accepted or active peer: its cross certificates are revoked and leave both bundles.

    The suspension belongs to this account: only this account can resume it. The other account may add its
    own suspension to a suspended peer; then both must resume before trust comes back."""
    peer = await service(ctx).suspend(
        ctx.session,
        peer_id=args.federation_peer_id,
        reason=args.reason,
        actor=ctx.principal.qualified,
        **_who(ctx),
    )
    _push_after_commit(ctx, args.federation_peer_id)
    return PeerOut(federation_peer=peer)


@tool(
    name="system_sdwan_resume_federation_peer",
    title="Resume a federation peer",
    permission=MANAGE,
    summary=_resume_summary,
    **FEDERATION,
)
async def resume_federation_peer(ctx: ToolContext, args: ReasonArgs) -> PeerOut:
    """Lift this account's suspension of a peer; an account cannot lift the other account's suspension.

    When no suspension is left the peer is accepted again with fresh cross certificates (verify the
    handshake to activate it); while the other account still holds one it stays suspended."""
    peer = await service(ctx).resume(
        ctx.session,
        peer_id=args.federation_peer_id,
        reason=args.reason,
        actor=ctx.principal.qualified,
        **_who(ctx),
    )
    _push_after_commit(ctx, args.federation_peer_id)
    return PeerOut(federation_peer=peer)


@tool(
    name="system_sdwan_revoke_federation_peer",
    title="Revoke a federation peer",
    permission=MANAGE,
    destructive=True,
    summary=_revoke_summary,
    **FEDERATION,
)
async def revoke_federation_peer(ctx: ToolContext, args: ReasonArgs) -> PeerOut:
    """Revoke a federation peer for good, from either side.

    Cross certificates leave both trust bundles (their versions change) and their serials go on the signing
    roots' CRLs; handshakes between the accounts fail from then on."""
    peer = await service(ctx).revoke(
        ctx.session,
        peer_id=args.federation_peer_id,
        reason=args.reason,
        actor=ctx.principal.qualified,
        **_who(ctx),
    )
    _push_after_commit(ctx, args.federation_peer_id)
    return PeerOut(federation_peer=peer)


@tool(
    name="system_sdwan_federation_scan",
    title="Scan federation governance",
    permission=READ,
    read_only=True,
    idempotent=True,
    **FEDERATION,
)
async def federation_scan(ctx: ToolContext, args: NoArgs) -> ScanOut:
    """Findings that need an operator: stale proposals, expired tokens, missing handshakes, expiring or
    unconstrained cross certificates, revoked peers still trusted, failed-accept spikes, prefix overlaps; for
    peers on another instance: unreachable, bundle stale, sequence gone backwards, bundle refused, revoked
    there but not here."""
    return await service(ctx).scan(ctx.session, account_id=ctx.principal.account_id)


@tool(
    name="system_sdwan_issue_node_certificate",
    title="Issue a node certificate",
    permission=MANAGE,
    **FEDERATION,
)
async def issue_node_certificate(ctx: ToolContext, args: IssueArgs) -> NodeCertificateOut:
    """Issue a short-lived node certificate (serverAuth + clientAuth) under the account's federation domain.

    From a CSR, or with a server-generated key returned once in private_key_pem (never stored). Nodes
    present chain_pem ([leaf, intermediate]) and trust the bundle from system_sdwan_get_trust_bundle."""
    return await service(ctx).issue_node_certificate(
        ctx.session, node_name=args.node_name, csr_pem=args.csr_pem, **_who(ctx)
    )


@tool(
    name="system_sdwan_get_trust_bundle",
    title="Get the trust bundle",
    permission=READ,
    read_only=True,
    idempotent=True,
    **FEDERATION,
)
async def get_trust_bundle(ctx: ToolContext, args: BundleArgs) -> TrustBundleOut:
    """What this account's nodes trust: its own root plus the cross certificates its own root signed.

    bundle_version changes whenever the bundle does; reload TLS contexts then (a kept context does not
    forget a removed CA)."""
    return await service(ctx).trust_bundle(
        ctx.session, account_id=ctx.principal.account_id, include_crls=args.include_crls
    )


async def _rotate_summary(ctx: ToolContext, args: NoArgs) -> str:
    return (
        f"Rotate the intermediate CA of {ctx.principal.account_name}: new key under the same root; peers re-sign "
        "it; node certificates must be re-issued."
    )


@tool(
    name="system_sdwan_rotate_intermediate_ca",
    title="Rotate the account's intermediate CA",
    permission=MANAGE,
    summary=_rotate_summary,
    **FEDERATION,
)
async def rotate_intermediate_ca(ctx: ToolContext, args: NoArgs) -> TrustBundleOut:
    """Replace this account's intermediate CA (new key, same root) and re-sign its CRLs.

    Peers on this instance cross-sign the new intermediate at once; peers on other instances do so on their
    next bundle poll (the bundle sequence grows). Node certificates issued by the old intermediate keep
    working inside the account until they expire; peers trust only new ones: re-issue node certificates."""
    return await service(ctx).rotate_intermediate(ctx.session, **_who(ctx))

