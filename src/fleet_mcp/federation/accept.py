"""Accepting a proposal: lockouts, constant-time token check, atomic claim, failure counting, cross-signing.

Every wrong token — malformed, unknown, wrong secret, or a peer not addressed to the caller — gets one and the
same error and is counted. Those errors carry `keep_changes = True`: the counters, the cancellation and the
events they wrote must commit even though the call fails (the gate releases the savepoint instead of rolling
it back)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp import events
from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import Conflict, FleetError, RateLimited
from fleet_mcp.federation import accounts, peers, tokens
from fleet_mcp.federation.authority import Authorities
from fleet_mcp.federation.config import FederationConfig
from fleet_mcp.federation.lifecycle import PeerStatus, check_action
from fleet_mcp.federation.models import FederationAcceptFailure, FederationPeer
from fleet_mcp.federation.schemas import AcceptOut


def keep_changes(exc: FleetError) -> FleetError:
    """Mark an error whose writes must commit with the call's audit row."""
    exc.keep_changes = True
    return exc


class Acceptance:
    def __init__(self, authorities: Authorities, config: FederationConfig) -> None:
        self.authorities = authorities
        self.config = config

    async def account_retry_at(
        self, session: AsyncSession, account_id: int, now: dt.datetime
    ) -> dt.datetime | None:
        """When a locked-out attempting account may try again, or None if it is not locked out."""
        recent = (
            (
                await session.execute(
                    select(FederationAcceptFailure.at)
                    .where(
                        FederationAcceptFailure.account_id == account_id,
                        FederationAcceptFailure.at > now - self.config.failure_window,
                    )
                    .order_by(FederationAcceptFailure.at.desc())
                    .limit(self.config.lockout_after)
                )
            )
            .scalars()
            .all()
        )
        if len(recent) < self.config.lockout_after:
            return None
        return recent[-1] + self.config.failure_window

    async def account_failures(self, session: AsyncSession, account_id: int, now: dt.datetime) -> int:
        return (
            await session.execute(
                select(func.count())
                .select_from(FederationAcceptFailure)
                .where(
                    FederationAcceptFailure.account_id == account_id,
                    FederationAcceptFailure.at > now - self.config.failure_window,
                )
            )
        ).scalar_one()

    async def _failed(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peer: FederationPeer | None,
        reason: str,
        now: dt.datetime,
        correlation_id: str | None,
    ) -> FleetError:
        """Count one failed attempt: always for the attempting account, for the peer only when it was
        addressed to that account (so strangers cannot lock or cancel other accounts' proposals)."""
        session.add(
            FederationAcceptFailure(
                account_id=account_id, peer_id=peer.id if peer else None, reason=reason, at=now
            )
        )
        await session.flush()
        payload: dict[str, Any] = {"reason": reason, "federation_peer_id": peer.id if peer else None}
        await events.emit(
            session,
            account_id=account_id,
            kind="federation.accept_failed",
            severity="medium",
            payload=payload,
            correlation_id=correlation_id,
        )
        if peer is not None:
            await session.execute(
                update(FederationPeer)
                .where(FederationPeer.id == peer.id)
                .values(failed_attempts=FederationPeer.failed_attempts + 1, last_failed_at=now)
                .execution_options(synchronize_session=False)
            )
            await session.refresh(peer)
            await events.emit(
                session,
                account_id=peer.local_account_id,
                kind="federation.accept_failed",
                severity="medium",
                payload=payload,
                correlation_id=correlation_id,
            )
            in_window = (
                await session.execute(
                    select(func.count())
                    .select_from(FederationAcceptFailure)
                    .where(
                        FederationAcceptFailure.peer_id == peer.id,
                        FederationAcceptFailure.at > now - self.config.failure_window,
                    )
                )
            ).scalar_one()
            if peer.status == PeerStatus.PROPOSED.value and peer.failed_attempts >= self.config.cancel_after:
                peer.status = check_action(peer.status, "revoke", peer_id=peer.id)
                peer.token_digest = None
                peer.revoked_at, peer.revoked_by = now, "system"
                peer.revoked_reason = f"cancelled after {peer.failed_attempts} failed accept attempts"
                await session.flush()
                await peers.emit_both(
                    session,
                    peer,
                    "federation.proposal_cancelled",
                    severity="high",
                    payload={"failed_attempts": peer.failed_attempts},
                    correlation_id=correlation_id,
                )
            elif in_window >= self.config.lockout_after:
                peer.locked_until = now + self.config.lockout_for
                await session.flush()
                await peers.emit_both(
                    session,
                    peer,
                    "federation.accept_locked",
                    severity="high",
                    payload={
                        "failed_attempts": peer.failed_attempts,
                        "locked_until": peer.locked_until.isoformat(),
                    },
                    correlation_id=correlation_id,
                )
        return keep_changes(tokens.invalid_token(federation_peer_id=peer.id if peer else None))

    async def accept(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        peer_id: int,
        acceptance_token: str,
        actor: str | None = None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> AcceptOut:
        """Accept the proposal `peer_id` addressed to `account_id`, then cross-sign both ways."""
        now = now or utcnow()
        await accounts.by_id(session, account_id)
        retry_at = await self.account_retry_at(session, account_id, now)
        if retry_at is not None:
            raise RateLimited(
                "too many failed accept attempts from this account",
                hint=f"try again after {retry_at:%Y-%m-%d %H:%M:%S} UTC with the correct token",
                retry_after=retry_at.isoformat(),
            )
        found = await session.get(FederationPeer, peer_id)
        peer = found if found is not None and found.remote_account_id == account_id else None

        async def fail(reason: str, counted: FederationPeer | None) -> FleetError:
            return await self._failed(
                session,
                account_id=account_id,
                peer=counted,
                reason=reason,
                now=now,
                correlation_id=correlation_id,
            )

        try:
            presented = tokens.parse_token(acceptance_token)
        except FleetError:
            raise await fail("malformed", peer) from None
        if peer is None:
            raise await fail("unknown_peer", None)
        if peer.locked_until is not None and peer.locked_until > now:
            raise RateLimited(
                f"federation peer {peer.id} is locked after repeated failed accept attempts",
                hint=f"try again after {peer.locked_until:%Y-%m-%d %H:%M:%S} UTC, or ask the "
                "proposing account to regenerate the token",
                federation_peer_id=peer.id,
                retry_after=peer.locked_until.isoformat(),
            )
        if peer.status != PeerStatus.PROPOSED.value:
            if tokens.public_id_matches(presented, peer.token_id):
                # The public id of a token that can no longer be used: there is nothing left to guess.
                raise Conflict(
                    f"the acceptance token can no longer be used: federation peer {peer.id} is {peer.status}",
                    hint="nothing to do if your account accepted it; otherwise ask for a new proposal",
                    federation_peer_id=peer.id,
                    status=peer.status,
                )
            raise await fail("not_proposed", peer)
        if not tokens.digest_matches(presented, peer.token_id, peer.token_digest):
            raise await fail("wrong_token", peer)
        if peer.token_expires_at is None or peer.token_expires_at <= now:
            raise Conflict(
                f"the acceptance token of federation peer {peer.id} has expired",
                hint="ask the proposing account to run system_sdwan_regenerate_acceptance_token",
                federation_peer_id=peer.id,
            )
        target = check_action(peer.status, "accept", peer_id=peer.id)
        # The atomic claim: of many concurrent accepts exactly one sees its UPDATE match a row.
        claimed = await session.execute(
            update(FederationPeer)
            .where(
                FederationPeer.id == peer.id,
                FederationPeer.status == PeerStatus.PROPOSED.value,
                FederationPeer.token_digest == presented.digest,
                FederationPeer.token_expires_at > now,
            )
            .values(
                status=target,
                token_digest=None,
                accepted_at=now,
                accepted_by=actor,
                trusted_since=now,
                failed_attempts=0,
                locked_until=None,
            )
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict(
                f"the acceptance token was already used; federation peer {peer.id} is no longer proposed",
                hint="nothing to do if your account accepted it",
                federation_peer_id=peer.id,
            )
        await session.refresh(peer)
        cross = await self.authorities.cross_sign_pair(session, peer, now=now, correlation_id=correlation_id)
        await peers.emit_both(
            session,
            peer,
            "federation.peer_accepted",
            correlation_id=correlation_id,
            payload={"accepted_by": actor, "cross_serials": [c.serial for c in cross]},
        )
        out = await peers.to_out(session, peer, now=now)
        serials = {c.serial for c in cross}
        return AcceptOut(
            federation_peer=out, cross_certificates=[c for c in out.cross_certificates if c.serial in serials]
        )
