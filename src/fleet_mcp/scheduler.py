"""Background jobs inside `serve`: approval expiry sweeps, drift sensor, cross-cert renewal, rotation resume."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

log = logging.getLogger(__name__)

Job = Callable[[Any], Awaitable[None]]
JOBS: list[tuple[str, Callable[[Any], float], Job]] = []


def job(name: str, interval: Callable[[Any], float]) -> Callable[[Job], Job]:
    def register(fn: Job) -> Job:
        JOBS.append((name, interval, fn))
        return fn

    return register


@job("approvals.sweep", lambda app: 30.0)
async def sweep_approvals(app: Any) -> None:
    from fleet_mcp import approvals

    async with app.sessionmaker() as session, session.begin():
        n = await approvals.sweep_expired(session)
    if n:
        log.info("expired %d approval request(s)", n)


@job("policy.reload_if_changed", lambda app: 5.0)
async def reload_policy(app: Any) -> None:
    """Pick up edits to the policy file; an invalid edit is logged and the old policy stays."""
    await anyio.to_thread.run_sync(app.policy.reload_if_changed)


async def _loop(app: Any, name: str, interval: Callable[[Any], float], fn: Job) -> None:
    while True:
        try:
            await fn(app)
        except Exception:
            log.exception("background job %s failed; retrying next interval", name)
        await anyio.sleep(interval(app))


@contextlib.asynccontextmanager
async def run_scheduler(app: Any, *, enabled: bool = True) -> AsyncIterator[None]:
    """Run every registered job in the background for the lifetime of the block."""
    import importlib

    for mod in ("fleet_mcp.gitops.jobs", "fleet_mcp.federation.jobs", "fleet_mcp.vault.jobs"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    if not enabled:
        yield
        return
    async with anyio.create_task_group() as tg:
        for name, interval, fn in JOBS:
            tg.start_soon(_loop, app, name, interval, fn)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
