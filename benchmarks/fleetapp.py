"""An in-process fleet-mcp App on a scratch database (SQLite file or PostgreSQL) for service-level benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from benchmarks.mcpload import PERMISSIVE_POLICY


async def create_schema(url: str) -> None:
    """Every table of every area that exists in the tree (the migrations may lag behind areas in progress)."""
    from fleet_mcp.db import all_models  # noqa: F401
    from fleet_mcp.db.base import Base
    from fleet_mcp.db.engine import create_engine

    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await engine.dispose()


@contextlib.asynccontextmanager
async def fleet_app(tmp: Path, *, database_url: str | None = None, **settings: Any) -> AsyncIterator[Any]:
    """A started App (permissive policy, no scheduler, local repositories allowed) and its tables."""
    from fleet_mcp.app import App
    from fleet_mcp.settings import Settings

    data_dir = tmp / "app-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    policy = tmp / "bench-policy.yaml"
    policy.write_text(PERMISSIVE_POLICY)
    url = database_url or f"sqlite+aiosqlite:///{data_dir / 'fleet.db'}"
    await create_schema(url)
    s = Settings(data_dir=data_dir, database_url=url, policy=policy, allow_local_repos=True, scheduler=False,
                 log_level="WARNING", **settings)
    app = App(s)
    await app.start(migrate_db=False)
    try:
        yield app
    finally:
        await app.close()


async def call_tool(app: Any, name: str, arguments: dict[str, Any]) -> Any:
    """Call a registered tool through the gate (permission, policy, one unit of work with its audit row)."""
    from fleet_mcp.gate import Gate
    from fleet_mcp.registry import load_tools

    return await Gate(app).call(load_tools()[name], app.stdio_caller, arguments)


def has_tool(name: str) -> bool:
    from fleet_mcp.registry import load_tools

    return name in load_tools()
