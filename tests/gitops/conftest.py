"""GitOps fixtures: real temporary git repositories and the options a service call needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_mcp.gitops.options import GitOpsOptions
from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo


@pytest.fixture
def fleet_repo(tmp_path: Path) -> FleetRepo:
    repo = FleetRepo(tmp_path / "fleet-src")
    repo.commit({"fleet.yaml": BASE_FLEET}, "initial fleet")
    return repo


@pytest.fixture
def options(tmp_path: Path) -> GitOpsOptions:
    return GitOpsOptions(cache_dir=tmp_path / "git-cache", allow_local_repos=True, git_timeout=20.0)


@pytest.fixture
def uow(sessionmaker):  # noqa: ANN001, ANN201
    """Run `fn(session)` the way the gate does: one transaction, the handler inside a savepoint that a
    FleetError rolls back (the error is re-raised after the commit)."""
    from fleet_mcp.errors import FleetError

    async def run(fn):  # noqa: ANN001, ANN202
        error = None
        async with sessionmaker() as session, session.begin():
            savepoint = await session.begin_nested()
            try:
                result = await fn(session)
            except FleetError as exc:
                error = exc
                await savepoint.rollback()
            else:
                await savepoint.commit()
        if error is not None:
            raise error
        return result

    return run
