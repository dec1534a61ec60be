"""GitOps scheduler jobs: the drift sensor and the optional auto-sync (whose calls go through the gate).

Each repository gets its own short unit of work, so one broken repository never stops the others.
Auto-sync runs as the account's `gitops-auto` principal (role operator) through the same gate as
any client: a sync is auto-approved by the shipped policy; an auto_apply repository's
apply is sent through the gate too, where the default policy queues it for approval.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from fleet_mcp import principals
from fleet_mcp.db.models import Account
from fleet_mcp.gitops import service
from fleet_mcp.registry import load_tools
from fleet_mcp.scheduler import job

log = logging.getLogger(__name__)

AUTO_PRINCIPAL = "gitops-auto"
AUTO_ROLES = ("operator",)


@job("gitops.drift_sensor", lambda app: app.settings.drift_interval)
async def drift_sensor(app: Any) -> list[service.DriftTick]:
    """One tick per enabled repository (cheap when nothing changed); returns what each tick found."""
    async with app.read_sessionmaker() as session:
        repo_ids = [r.id for r in await service.list_enabled_repositories(session)]
    ticks = []
    for repo_id in repo_ids:
        try:
            async with app.unit_of_work() as uow:
                ticks.append(await service.drift_tick(uow.session, repository_id=repo_id))
        except Exception:
            log.exception("drift sensor failed for repository %s", repo_id)
    return ticks


@job("gitops.auto_sync", lambda app: app.settings.auto_sync_interval or 3600.0)
async def auto_sync(app: Any) -> list[dict[str, Any]]:
    """Sync every enabled repository through the gate; for auto_apply ones, ask the gate to apply new proposals."""
    if not app.settings.auto_sync_interval:
        return []
    tools = load_tools()
    async with app.read_sessionmaker() as session:
        repos = [(r.id, r.account_id, r.auto_apply) for r in await service.list_enabled_repositories(session)]
    outcomes: list[dict[str, Any]] = []
    callers: dict[int, principals.Caller] = {}
    for repo_id, account_id, auto_apply in repos:
        try:
            caller = callers.get(account_id) or await _auto_caller(app, account_id)
            callers[account_id] = caller
            synced = await app.gate.call(tools["system_gitops_sync_repository"], caller, {"repository_id": repo_id})
            entry: dict[str, Any] = {"repository_id": repo_id, "sync": synced.data}
            run = synced.data.get("sync_run") if synced.ok else None
            # Only newly opened proposals are sent on, so an unchanged repository never re-asks.
            if auto_apply and run and run["status"] in ("success", "partial") and run["diff_summary"].get("opened"):
                applied = await app.gate.call(tools["system_gitops_apply_sync_run"], caller,
                                              {"sync_run_id": run["id"]})
                entry["apply"] = applied.data
            outcomes.append(entry)
        except Exception:
            log.exception("auto-sync failed for repository %s", repo_id)
    return outcomes


async def _auto_caller(app: Any, account_id: int) -> principals.Caller:
    async with app.unit_of_work() as uow:
        acct = (await uow.session.execute(select(Account).where(Account.id == account_id))).scalar_one()
        await principals.ensure_principal(uow.session, acct, AUTO_PRINCIPAL, list(AUTO_ROLES))
    return principals.Caller(
        name=AUTO_PRINCIPAL, account_id=acct.id, account_name=acct.name, roles=AUTO_ROLES, via="scheduler"
    )
