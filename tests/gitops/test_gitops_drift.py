"""Drift sensor ticks, events and suppression, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from fleet_mcp import live
from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import FleetEvent
from fleet_mcp.errors import InvalidArgument, NotFound
from fleet_mcp.gitops import service as gitops
from tests.gitops.gitops_helpers import BASE_FLEET

pytestmark = pytest.mark.anyio


async def _events(uow) -> list[FleetEvent]:  # noqa: ANN001
    res = await uow(lambda s: s.execute(select(FleetEvent).where(FleetEvent.kind.like("gitops.drift%"))
                                        .order_by(FleetEvent.id)))
    return list(res.scalars())


async def _tick(uow, repo_id: int, now: dt.datetime | None = None) -> gitops.DriftTick:  # noqa: ANN001
    return await uow(lambda s: gitops.drift_tick(s, repository_id=repo_id, now=now))


async def _registered_and_synced(uow, account, fleet_repo, options) -> tuple[int, int]:  # noqa: ANN001
    async def fn(s):  # noqa: ANN001, ANN202
        r = await gitops.register_repository(s, account_id=account.id, name="fleet", repo_url=fleet_repo.url,
                                             allow_local=True)
        return r.id

    repo_id = await uow(fn)
    assert (await _tick(uow, repo_id)).skipped == "never fetched"
    run = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                     options=options))
    return repo_id, run.id


async def test_drift_detected_then_resolved(uow, account, fleet_repo, options) -> None:
    repo_id, run_id = await _registered_and_synced(uow, account, fleet_repo, options)
    tick = await _tick(uow, repo_id)
    assert (tick.checked, tick.drift, tick.diff_count, tick.event, tick.severity) == (
        True, True, 7, "gitops.drift_detected", "medium")
    (event,) = await _events(uow)
    assert event.account_id == account.id and event.severity == "medium"
    assert event.payload["diff_count"] == 7 and event.payload["by_action"]["create"] == 7

    # Nothing changed: the tick is cheap (no diff) and silent.
    again = await _tick(uow, repo_id)
    assert (again.checked, again.skipped, again.drift) == (False, "unchanged", True)
    assert len(await _events(uow)) == 1

    await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run_id))
    resolved = await _tick(uow, repo_id)
    assert (resolved.event, resolved.drift, resolved.diff_count) == ("gitops.drift_resolved", False, 0)
    kinds = [e.kind for e in await _events(uow)]
    assert kinds == ["gitops.drift_detected", "gitops.drift_resolved"]
    repo = await uow(lambda s: gitops.get_repository(s, account_id=account.id, repository_id=repo_id))
    assert (repo.drift_detected, repo.drift_count, repo.drift_checked_revision) == (
        False, 0, fleet_repo.git("rev-parse", "HEAD"))


async def test_manual_edit_drift_and_suppression(uow, account, fleet_repo, options) -> None:
    repo_id, run_id = await _registered_and_synced(uow, account, fleet_repo, options)
    await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run_id))
    assert (await _tick(uow, repo_id)).drift is False

    # A hand edit and a hand delete: drift with a delete → severity high.
    await uow(lambda s: live.put(s, account.id, "template", "web", {"description": "hand-tuned"}))
    await uow(lambda s: live.delete(s, account.id, "assignment", "web:nginx"))
    detected = await _tick(uow, repo_id)
    assert (detected.event, detected.diff_count) == ("gitops.drift_detected", 2)
    assert detected.severity == "medium"  # a create and an update: no delete from git's point of view

    now = utcnow()
    sup = await uow(lambda s: gitops.suppress_drift(s, account_id=account.id, kind="template", name="web",
                                                    reason="incident 7", until=now + dt.timedelta(hours=1)))
    assert (sup["suppressed"], sup["reason"]) == (True, "incident 7")
    still = await _tick(uow, repo_id, now)
    assert (still.checked, still.drift, still.diff_count, still.event) == (True, True, 1, None)

    report = await uow(lambda s: gitops.drift_report(s, account_id=account.id, repository_id=repo_id,
                                                     options=options, now=now))
    data = report.to_json()
    assert [c["name"] for c in data["changes"]] == ["web:nginx"]
    assert data["suppressed"][0]["name"] == "web" and data["suppressed"][0]["reason"] == "incident 7"

    # Put the assignment back: only the suppressed resource differs → drift resolved.
    await uow(lambda s: live.put(s, account.id, "assignment", "web:nginx", {"priority": 1}))
    cleared = await _tick(uow, repo_id, now)
    assert (cleared.event, cleared.drift) == ("gitops.drift_resolved", False)

    # The suppression expires: the same difference is drift again.
    later = now + dt.timedelta(hours=2)
    expired = await _tick(uow, repo_id, later)
    assert (expired.event, expired.diff_count) == ("gitops.drift_detected", 1)

    # A sync while suppressed proposes nothing for the suppressed resource.
    await uow(lambda s: gitops.suppress_drift(s, account_id=account.id, kind="template", name="web",
                                              reason="keep until the migration"))
    run = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                     options=options))
    assert (run.diff_count, run.diff_summary["suppressed"], run.proposal_ids) == (0, 1, [])
    lifted = await uow(lambda s: gitops.unsuppress_drift(s, account_id=account.id, kind="template", name="web"))
    assert lifted["suppressed"] is False


async def test_deletes_make_drift_severe_and_new_commits_are_rechecked(uow, account, fleet_repo, options) -> None:
    repo_id, run_id = await _registered_and_synced(uow, account, fleet_repo, options)
    await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run_id))
    assert (await _tick(uow, repo_id)).drift is False
    fleet_repo.commit({"fleet.yaml": BASE_FLEET.replace("  db:postgres: {}\n", "")})
    await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id, options=options))
    tick = await _tick(uow, repo_id)  # live unchanged, but the desired revision moved
    assert (tick.event, tick.severity, tick.diff_count) == ("gitops.drift_detected", "high", 1)


async def test_suppress_validation(uow, account, fleet_repo, options) -> None:
    await _registered_and_synced(uow, account, fleet_repo, options)
    with pytest.raises(NotFound):
        await uow(lambda s: gitops.suppress_drift(s, account_id=account.id, kind="template", name="web",
                                                  reason="not live yet"))
    await uow(lambda s: live.put(s, account.id, "template", "web", {}))
    with pytest.raises(InvalidArgument, match="past"):
        await uow(lambda s: gitops.suppress_drift(s, account_id=account.id, kind="template", name="web",
                                                  reason="x", until=utcnow() - dt.timedelta(seconds=1)))
    with pytest.raises(InvalidArgument, match="reason"):
        await uow(lambda s: gitops.suppress_drift(s, account_id=account.id, kind="template", name="web",
                                                  reason=""))
    with pytest.raises(InvalidArgument, match="kind"):
        await uow(lambda s: gitops.suppress_drift(s, account_id=account.id, kind="node", name="web",
                                                  reason="x"))


async def test_disabled_repository_is_skipped(uow, account, fleet_repo, options) -> None:
    repo_id, _ = await _registered_and_synced(uow, account, fleet_repo, options)
    await uow(lambda s: gitops.update_repository(s, account_id=account.id, repository_id=repo_id, enabled=False))
    assert (await _tick(uow, repo_id)).skipped == "disabled"
    assert await _events(uow) == []


async def test_writes_that_bypass_the_store_are_caught_by_the_periodic_full_check(
    uow, account, fleet_repo, options
) -> None:
    from sqlalchemy import update

    from fleet_mcp.db.models import Module
    from fleet_mcp.fleet.spec import fingerprint
    from fleet_mcp.gitops.drift import FULL_CHECK_SECONDS

    repo_id, run_id = await _registered_and_synced(uow, account, fleet_repo, options)
    await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run_id))
    now = utcnow()
    assert (await _tick(uow, repo_id, now)).drift is False
    # A raw UPDATE (not through fleet.store) leaves the live generation alone ...
    attrs = {"variety": "role", "priority": 99, "version": "1.25", "config": {}}
    await uow(lambda s: s.execute(update(Module).where(Module.name == "nginx")
                                  .values(attributes=attrs, fingerprint=fingerprint(attrs))))
    soon = await _tick(uow, repo_id, now + dt.timedelta(seconds=5))
    assert (soon.checked, soon.skipped) == (False, "unchanged")
    # ... until the periodic full check, which sees the changed fingerprint.
    later = await _tick(uow, repo_id, now + dt.timedelta(seconds=FULL_CHECK_SECONDS + 5))
    assert later.checked and later.drift and later.event == "gitops.drift_detected"
