"""Background jobs: one replica per tick on PostgreSQL, and the approval sweep."""

from __future__ import annotations

import anyio
import pytest

from fleet_mcp.scheduler import run_once

pytestmark = pytest.mark.anyio


async def test_only_one_replica_runs_a_tick(app) -> None:  # noqa: ANN001
    from fleet_mcp.app import App

    other = App(app.settings)
    await other.start(migrate_db=False)
    started = anyio.Event()
    release = anyio.Event()
    ran: list[str] = []

    async def slow(a) -> None:  # noqa: ANN001
        ran.append("first")
        started.set()
        await release.wait()

    async def fast(a) -> None:  # noqa: ANN001
        ran.append("second")

    results: list[bool] = []

    async def first() -> None:
        results.append(await run_once(app, "test.job", slow))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await started.wait()
            second = await run_once(other, "test.job", fast)
            release.set()
        if app.engine.dialect.name == "postgresql":
            assert second is False and ran == ["first"]
        else:  # one SQLite file belongs to one process; jobs simply run
            assert second is True and ran == ["first", "second"]
        assert results == [True]
    finally:
        await other.close()


async def test_read_only_and_toolsets_serve_subsets(app) -> None:  # noqa: ANN001
    from mcp import Client

    from fleet_mcp.server import build_server

    server, _ = build_server(app, read_only=True)
    async with Client(server) as c:
        tools = (await c.list_tools()).tools
    assert tools and all(t.annotations.read_only_hint for t in tools)
    server, _ = build_server(app, toolsets={"audit"})
    async with Client(server) as c:
        names = {t.name for t in (await c.list_tools()).tools}
    assert names == {"system_audit_query", "system_audit_verify", "system_policy_explain"}
