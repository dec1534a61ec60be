"""A sync whose git fetch hangs holds no database lock: other writers go on meanwhile (SQLite included)."""

from __future__ import annotations

import anyio
import pytest

from tests.conftest import call_as, make_caller
from tests.gitops.gitops_servers import HangingServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(settings):  # noqa: ANN001
    return settings.model_copy(update={"git_timeout": 4.0})


async def test_writers_are_not_blocked_while_git_hangs(app) -> None:  # noqa: ANN001
    alice = await make_caller(app, "acme", "alice", ("admin",))
    with HangingServer() as hanging:
        reg = await call_as(app, alice, "system_gitops_register_repository",
                            {"name": "slow", "repo_url": f"https://127.0.0.1:{hanging.port}/fleet.git"})
        assert reg.ok, reg.message
        order: list[str] = []

        async def sync() -> None:
            out = await call_as(app, alice, "system_gitops_sync_repository",
                                {"repository_id": reg.data["repository"]["id"]})
            order.append("sync")
            assert out.ok and out.data["sync_run"]["status"] == "failed"
            assert out.data["sync_run"]["error"]

        async def writer() -> None:
            # once git has connected, the sync is inside its fetch
            assert await anyio.to_thread.run_sync(hanging.connected.wait, 30)
            out = await call_as(app, alice, "system_put_template", {"name": "meanwhile", "spec": {}})
            assert out.ok, out.message
            order.append("write")

        async with anyio.create_task_group() as tg:
            tg.start_soon(sync)
            tg.start_soon(writer)
    # The write finished while git was still hanging (the fetch takes the whole 4 s timeout).
    assert order == ["write", "sync"]
