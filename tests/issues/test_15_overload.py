"""Issue 15 (4): a principal (or the process) at its concurrency limit is answered "busy, retry after" at
once, with an audit row; others are served; the slot frees when the call ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet_mcp.db.models import AuditEntry
from tests.conftest import call_as, make_caller

pytestmark = pytest.mark.anyio
ALLOW_ALL = Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "allow-all.yaml"


@pytest.fixture
def settings(settings):  # noqa: ANN001
    return settings.model_copy(update={"max_concurrent_calls": 3, "max_concurrent_calls_per_principal": 1,
                                       "policy": ALLOW_ALL})


async def test_busy_principal_is_refused_at_once_and_others_are_served(app) -> None:  # noqa: ANN001
    alice = await make_caller(app, "acme", "alice", ("admin",))
    bob = await make_caller(app, "acme", "bob", ("admin",))
    assert (await call_as(app, alice, "system_vault_store_credential",
                          {"name": "db", "kind": "password", "secret": "s3cret!"})).ok
    in_progress, release = asyncio.Event(), asyncio.Event()

    async def hold(done: float, total: float | None, message: str | None) -> None:
        in_progress.set()
        await release.wait()  # the rotation reports progress: the call stays in progress until released

    rotation = asyncio.create_task(call_as(app, alice, "system_rotate_vault_transit_pepper", {"wait": True},
                                           progress=hold))
    await asyncio.wait_for(in_progress.wait(), 120)
    busy = await call_as(app, alice, "system_list_templates", {})
    assert not busy.ok and busy.data["status"] == "busy" and busy.data["retry_after"] > 0, busy.data
    assert "retry after" in busy.message
    served = await call_as(app, bob, "system_list_templates", {})
    assert served.ok, served.message
    release.set()
    done = await asyncio.wait_for(rotation, 120)
    assert done.ok, done.message
    again = await call_as(app, alice, "system_list_templates", {})
    assert again.ok, again.message
    async with app.read_sessionmaker() as read:
        rows = (await read.execute(select(AuditEntry).where(AuditEntry.outcome == "busy"))).scalars().all()
    assert [(r.principal, r.tool) for r in rows] == [("acme/alice", "system_list_templates")]
