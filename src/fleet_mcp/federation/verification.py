"""The verified handshake of a federation peer: fresh nodes of both accounts, real mTLS both ways."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Account
from fleet_mcp.errors import Conflict
from fleet_mcp.federation import accounts, peers
from fleet_mcp.federation.authority import Authorities
from fleet_mcp.federation.config import FederationConfig
from fleet_mcp.federation.handshake import NodeIdentity, verify_mutual_tls
from fleet_mcp.federation.lifecycle import TRUSTED_STATUSES, PeerStatus, check_action
from fleet_mcp.federation.models import FederationPeer
from fleet_mcp.federation.schemas import DirectionOut, HandshakeOut

_TRUSTED = {s.value for s in TRUSTED_STATUSES}


class HandshakeVerifier:
    def __init__(self, authorities: Authorities, config: FederationConfig) -> None:
        self.authorities = authorities
        self.config = config

    async def probe_identity(
        self,
        session: AsyncSession,
        account: Account,
        peer: FederationPeer,
        now: dt.datetime,
        correlation_id: str | None,
    ) -> NodeIdentity:
        """A freshly issued node of `account` holding the account's current bundle (and CRLs)."""
        issued = await self.authorities.issue_node_certificate(
            session,
            account_id=account.id,
            node_name=f"fedcheck-{peer.id}",
            lifetime=self.config.probe_cert_lifetime,
            now=now,
            correlation_id=correlation_id,
        )
        ca = await self.authorities.ensure(session, account.id, now=now)
        pem, cross = await self.authorities.bundle_pem(session, ca)
        crls: tuple[str, ...] = ()
        if self.config.handshake_with_crls:
            await self.authorities.refresh_stale_crls(session, ca, now)
            for c in cross:
                peer_ca = await self.authorities.get(session, c.subject_account_id or 0)
                if peer_ca is not None:
                    await self.authorities.refresh_stale_crls(session, peer_ca, now)
            crls = (await self.authorities.crls_for(session, ca, cross),)
        assert issued.private_key_pem is not None
        return NodeIdentity(
            label=account.name,
            dns_name=issued.dns_name,
            chain_pem=issued.chain_pem,
            key_pem=issued.private_key_pem.encode(),
            trust_pem=pem,
            crl_pems=crls,
        )

    async def verify(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peer_id: int,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> HandshakeOut:
        """Each side trusts only its own bundle. Success moves `accepted` to `active`; a failure names the
        direction and the reason. Suspended and revoked peers are checked too (they are expected to fail)."""
        now = now or utcnow()
        peer = await peers.visible(session, account_id, peer_id)
        if peer.status == PeerStatus.PROPOSED.value:
            raise Conflict(
                f"federation peer {peer.id} is still proposed; there is nothing to verify yet",
                hint="the remote account accepts it first",
                federation_peer_id=peer.id,
            )
        local = await accounts.by_id(session, peer.local_account_id)
        remote = await accounts.by_id(session, peer.remote_account_id)
        a = await self.probe_identity(session, local, peer, now, correlation_id)
        b = await self.probe_identity(session, remote, peer, now, correlation_id)
        results = await verify_mutual_tls(a, b, timeout=self.config.handshake_timeout)
        ok = all(r.ok for r in results)
        directions = [
            DirectionOut(from_=r.client, to=r.server, ok=r.ok, error=r.error, tls_version=r.tls_version)
            for r in results
        ]
        payload = {"ok": ok, "directions": [d.model_dump(by_alias=True) for d in directions]}
        if ok:
            peer.last_handshake_at, peer.last_handshake_error = now, None
            if peer.status == PeerStatus.ACCEPTED.value:
                peer.status = check_action(peer.status, "activate", peer_id=peer.id)
                kind, severity = "federation.peer_activated", "info"
            elif peer.status in _TRUSTED:
                kind, severity = "federation.handshake_verified", "info"
            else:  # suspended or revoked, and still the handshake worked: trust was not withdrawn
                kind, severity = "federation.revoked_but_trusted", "critical"
        else:
            peer.last_handshake_error = "; ".join(
                f"{r.client}→{r.server}: {r.error}" for r in results if not r.ok
            )
            kind = "federation.handshake_failed"
            severity = "high" if peer.status in _TRUSTED else "info"
        await session.flush()
        await peers.emit_both(
            session, peer, kind, severity=severity, payload=payload, correlation_id=correlation_id
        )
        return HandshakeOut(
            ok=ok, directions=directions, federation_peer=await peers.to_out(session, peer, now=now)
        )
