"""The drift sensor tick and drift suppression.

A tick compares the repository's last fetched desired state (stored by the last sync) with live
state, in three steps of rising cost, stopping at the first that shows nothing changed: the
account's live generation (moved by every write through `fleet.store`) and the earliest suppression
expiry — two primary-key reads, trusted for at most FULL_CHECK_SECONDS so writes that bypass the
store are caught too; then the digest of every in-scope (kind, name, fingerprint, suppressed),
built inside the database; finally the full diff. Events are emitted on transitions only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from fleet_mcp import events
from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import InvalidArgument, NotFound
from fleet_mcp.fleet.spec import check_kind, check_name
from fleet_mcp.fleet.store import (
    SUPPRESS_FOREVER,
    bump_generation,
    live_generation,
    require_resource,
    suppression_until_out,
)
from fleet_mcp.gitops.diff import diff
from fleet_mcp.gitops.fleetfile import DesiredState
from fleet_mcp.gitops.live import live_digest, load_live, next_suppression_expiry
from fleet_mcp.gitops.models import GitOpsRepository

MAX_REASON = 2000
#: Even when the cheap aggregate key is unchanged, recompute the full digest this often.
FULL_CHECK_SECONDS = 600
FULL_CHECK = dt.timedelta(seconds=FULL_CHECK_SECONDS)


@dataclass(frozen=True)
class DriftTick:
    """What one sensor tick found. `checked` is False when the tick was skipped or cheap."""

    repository_id: int
    checked: bool
    drift: bool
    diff_count: int
    event: str | None = None
    severity: str | None = None
    skipped: str | None = None


async def drift_tick(
    session: AsyncSession,
    *,
    repository_id: int,
    account_id: int | None = None,
    now: dt.datetime | None = None,
) -> DriftTick:
    """One drift-sensor pass for one repository; emits gitops.drift_detected / gitops.drift_resolved."""
    now = now or utcnow()
    # Row lock: two replicas ticking the same repository serialise, so a transition is announced once.
    # The stored desired state is the big column: it is loaded only when the tick has to diff.
    stmt = (
        select(GitOpsRepository)
        .options(defer(GitOpsRepository.desired_state))
        .where(GitOpsRepository.id == repository_id)
        .with_for_update()
    )
    if account_id is not None:
        stmt = stmt.where(GitOpsRepository.account_id == account_id)
    repo = (await session.execute(stmt)).scalar_one_or_none()
    if repo is None:
        raise NotFound(f"repository {repository_id} does not exist", repository_id=repository_id)
    if not repo.enabled:
        return DriftTick(repo.id, False, repo.drift_detected, repo.drift_count, skipped="disabled")
    if repo.desired_revision is None:
        return DriftTick(repo.id, False, repo.drift_detected, repo.drift_count, skipped="never fetched")

    loaded: list[DesiredState] = []

    async def desired_state() -> DesiredState:
        if not loaded:
            raw: Any = (
                await session.execute(select(GitOpsRepository.desired_state).where(GitOpsRepository.id == repo.id))
            ).scalar_one()
            loaded.append(DesiredState.from_json(raw or {}))
        return loaded[0]

    same_revision = repo.drift_checked_revision == repo.desired_revision
    generation = await live_generation(session, repo.account_id)
    recently = repo.drift_checked_at is not None and repo.drift_checked_at > now - FULL_CHECK
    expiry_passed = repo.next_suppression_expiry is not None and repo.next_suppression_expiry <= now
    if same_revision and recently and not expiry_passed and repo.last_live_generation == generation:
        return DriftTick(repo.id, False, repo.drift_detected, repo.drift_count, skipped="unchanged")
    digest = await live_digest(
        session, account_id=repo.account_id, repository_id=repo.id, desired=desired_state, now=now
    )
    repo.last_live_generation = generation
    repo.next_suppression_expiry = await next_suppression_expiry(session, account_id=repo.account_id, now=now)
    if same_revision and repo.last_live_digest == digest:
        repo.drift_checked_at = now
        await session.flush()
        return DriftTick(repo.id, False, repo.drift_detected, repo.drift_count, skipped="unchanged")

    desired = await desired_state()
    view = await load_live(session, account_id=repo.account_id, repository_id=repo.id, desired=desired, now=now)
    changeset = diff(desired, view.resources, view.suppressed, now)
    was = repo.drift_detected
    repo.drift_detected = changeset.drift
    repo.drift_count = changeset.diff_count
    repo.drift_checked_at = now
    repo.drift_checked_revision = repo.desired_revision
    repo.last_live_digest = digest  # a change that lands after it only causes one more full tick
    await session.flush()

    payload: dict[str, Any] = {
        "repository_id": repo.id,
        "repository": repo.name,
        "revision": repo.desired_revision,
        "diff_count": changeset.diff_count,
        "by_action": changeset.summary["by_action"],
        "by_kind": changeset.summary["by_kind"],
        "suppressed": len(changeset.suppressed),
    }
    if changeset.drift and not was:
        await events.emit(
            session,
            account_id=repo.account_id,
            kind="gitops.drift_detected",
            severity=changeset.severity,
            payload=payload,
        )
        return DriftTick(repo.id, True, True, changeset.diff_count, "gitops.drift_detected", changeset.severity)
    if was and not changeset.drift:
        await events.emit(
            session,
            account_id=repo.account_id,
            kind="gitops.drift_resolved",
            severity="info",
            payload=payload,
        )
        return DriftTick(repo.id, True, False, 0, "gitops.drift_resolved", "info")
    return DriftTick(repo.id, True, changeset.drift, changeset.diff_count)


def suppression_out(row: Any, kind: str, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    until = row.drift_suppressed_until
    active = until is not None and until > now
    return {
        "kind": kind,
        "name": row.name,
        "suppressed": active,
        "until": suppression_until_out(until) if active else None,
        "reason": row.drift_suppressed_reason if active else None,
    }


async def suppress_drift(
    session: AsyncSession,
    *,
    account_id: int,
    kind: str,
    name: str,
    reason: str,
    until: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Stop reporting and proposing changes for one live resource, until `until` (or until lifted)."""
    now = now or utcnow()
    check_kind(kind)
    check_name(kind, name)
    if not reason or not reason.strip():
        raise InvalidArgument("a reason is required to suppress drift", hint="say why, for the audit trail")
    if len(reason) > MAX_REASON:
        raise InvalidArgument(f"the reason is longer than {MAX_REASON} characters")
    if until is not None:
        if until.tzinfo is None:
            raise InvalidArgument("until needs a timezone", hint="use ISO 8601 with Z or an offset")
        if until <= now:
            raise InvalidArgument("until lies in the past", hint="give a future time, or omit it for no expiry")
    row = await require_resource(session, account_id, kind, name)
    row.drift_suppressed_until = until if until is not None else SUPPRESS_FOREVER
    row.drift_suppressed_reason = reason.strip()
    await session.flush()
    await bump_generation(session, account_id)
    return suppression_out(row, kind, now)


async def unsuppress_drift(
    session: AsyncSession, *, account_id: int, kind: str, name: str, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Lift a drift suppression."""
    check_kind(kind)
    row = await require_resource(session, account_id, kind, name)
    row.drift_suppressed_until = None
    row.drift_suppressed_reason = None
    await session.flush()
    await bump_generation(session, account_id)
    return suppression_out(row, kind, now)
