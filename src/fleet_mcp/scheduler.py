"""Background jobs inside `serve`: approval expiry sweeps, drift sensor, cross-cert renewal, rotation resume."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from sqlalchemy import text

if TYPE_CHECKING:
    from fleet_mcp.app import App

log = logging.getLogger(__name__)

Job = Callable[["App"], Awaitable[object]]
JOBS: list[tuple[str, Callable[[App], float], Job, bool]] = []


def job(name: str, interval: Callable[[App], float], *, per_process: bool = False) -> Callable[[Job], Job]:
    """Register a background job; unless per_process, one replica at a time runs each tick."""

    def register(fn: Job) -> Job:
        if not any(j[0] == name for j in JOBS):
            JOBS.append((name, interval, fn, per_process))
        return fn

    return register


@job("approvals.sweep", lambda app: 30.0)
async def sweep_approvals(app: App) -> None:
    from fleet_mcp import approvals

    async with app.unit_of_work() as uow:
        n = await approvals.sweep_expired(uow.session)
        stuck = await approvals.sweep_interrupted(uow.session)
    if n:
        log.info("expired %d approval request(s)", n)
    if stuck:
        log.warning("%d approved request(s) never ran (the server stopped first); recorded as failed", stuck)


@job("policy.reload_if_changed", lambda app: 5.0, per_process=True)
async def reload_policy(app: App) -> None:
    """Pick up edits to the policy file; an invalid edit is logged and the old policy stays."""
    await anyio.to_thread.run_sync(app.policy.reload_if_changed)


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"fleet-mcp:{name}".encode()).digest()[:8], "big", signed=True)


async def run_once(app: App, name: str, fn: Job) -> bool:
    """Run one tick of a job; on PostgreSQL only the replica holding the job's advisory lock runs it."""
    if app.engine is None or app.engine.dialect.name != "postgresql":
        await fn(app)
        return True
    key = _lock_key(name)
    async with app.engine.connect() as conn:
        if not await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}):
            return False
        try:
            await conn.commit()
            await fn(app)
            return True
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            await conn.commit()


async def _loop(app: App, name: str, interval: Callable[[App], float], fn: Job, per_process: bool) -> None:
    while True:
        try:
            if per_process:
                await fn(app)
            else:
                await run_once(app, name, fn)
        except Exception:
            log.exception("background job %s failed; retrying next interval", name)
        await anyio.sleep(interval(app))


@contextlib.asynccontextmanager
async def run_scheduler(app: App, *, enabled: bool = True) -> AsyncIterator[None]:
    """Run every registered job in the background for the lifetime of the block."""
    import importlib

    for mod in ("fleet_mcp.jobs.gitops", "fleet_mcp.federation.jobs", "fleet_mcp.vault.jobs"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    if not enabled:
        yield
        return
    async with anyio.create_task_group() as tg:
        for name, interval, fn, per_process in JOBS:
            tg.start_soon(_loop, app, name, interval, fn, per_process)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
