"""Migrations shipped in the package build exactly the schema the models declare, on both databases."""

from __future__ import annotations

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fleet_mcp.db import migrate
from fleet_mcp.db.all_models import metadata
from fleet_mcp.db.engine import create_engine

pytestmark = pytest.mark.anyio


async def test_upgrade_matches_models(fresh_db_url: str) -> None:
    await anyio.to_thread.run_sync(migrate.upgrade, fresh_db_url)
    await anyio.to_thread.run_sync(migrate.upgrade, fresh_db_url)  # idempotent
    engine = create_engine(fresh_db_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
            )
    finally:
        await engine.dispose()
    assert diff == [], f"models and migrations differ; generate a migration: {diff}"
