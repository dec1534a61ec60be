"""Alembic environment: runs migrations over the async engine (SQLite in batch mode)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from fleet_mcp.db.all_models import metadata
from fleet_mcp.db.engine import create_engine

config = context.config

#: PostgreSQL advisory lock key held while migrating: replicas started at once on one database take turns, and
#: each one after the first finds the schema already at head (its version is read after the lock is taken).
MIGRATION_LOCK_KEY = 0x666C6565745F6D67  # "fleet_mg"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def _run_async() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "alembic needs sqlalchemy.url"
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_run_async())
        return
    raise RuntimeError("run migrations from a worker thread, not inside the event loop")


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `fleet-mcp db upgrade`")
run_migrations_online()
