"""Federation fixtures: a service with an in-memory key sealer and a unit-of-work runner like the gate's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fleet_mcp.errors import FleetError
from fleet_mcp.federation.keys import MemoryKeySealer
from fleet_mcp.federation.service import FederationService


@pytest.fixture
def svc() -> FederationService:
    return FederationService(MemoryKeySealer())


@pytest.fixture
def uow(sessionmaker) -> Callable[..., Awaitable[Any]]:  # noqa: ANN001
    """Run `fn(session)` in one unit of work the way the gate does (handler inside a savepoint, commit at the
    end). A FleetError rolls the savepoint back unless it carries `keep_changes` (failed-accept counters),
    in which case its writes are kept; the error is re-raised after the commit."""

    async def run(fn: Callable[[Any], Awaitable[Any]]) -> Any:
        error: FleetError | None = None
        async with sessionmaker() as session, session.begin():
            savepoint = await session.begin_nested()
            try:
                result = await fn(session)
            except FleetError as exc:
                error = exc
                if getattr(exc, "keep_changes", False):
                    await savepoint.commit()
                else:
                    await savepoint.rollback()
            else:
                await savepoint.commit()
        if error is not None:
            raise error
        return result

    return run
