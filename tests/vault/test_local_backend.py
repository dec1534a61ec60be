"""The embedded backend's own promises: the master key file, wrapped key versions, several processes."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import anyio
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from fleet_mcp.errors import ExternalError, InvalidArgument
from fleet_mcp.settings import Settings
from fleet_mcp.vault.models import TransitKeyVersion
from fleet_mcp.vault.transit import build_transit, load_or_create_master_key
from fleet_mcp.vault.transit.local import LocalTransit
from fleet_mcp.vault.transit.vault import VaultTransit
from tests.vault.vault_helpers import rotate_key, set_min

pytestmark = pytest.mark.anyio


def test_master_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "master.key"
    old = os.umask(0)  # even a permissive umask must not widen the file
    try:
        key = load_or_create_master_key(path)
    finally:
        os.umask(old)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64decode(path.read_text()) == key
    assert load_or_create_master_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temp file left behind


def test_master_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    load_or_create_master_key(path)
    path.chmod(0o644)
    with pytest.raises(InvalidArgument, match="readable or writable by group or others") as exc:
        load_or_create_master_key(path)
    assert "chmod 600" in (exc.value.hint or "")
    path.chmod(0o600)
    path.write_text(base64.b64encode(b"short").decode())
    with pytest.raises(InvalidArgument, match="has 5 bytes"):
        load_or_create_master_key(path)


async def test_build_transit_from_settings(tmp_path: Path, sessionmaker) -> None:
    s = Settings(data_dir=tmp_path / "d", transit="local")
    backend = build_transit(s, sessionmaker)
    assert isinstance(backend, LocalTransit) and backend.key_name == "fleet-pepper"
    assert s.effective_master_key_file.exists()
    given = base64.b64encode(os.urandom(32)).decode()
    backend2 = build_transit(
        Settings(data_dir=tmp_path / "e", master_key=SecretStr(given), pepper_key="p2"), sessionmaker
    )
    assert isinstance(backend2, LocalTransit) and backend2.key_name == "p2"
    assert not (tmp_path / "e" / "master.key").exists()
    with pytest.raises(InvalidArgument, match="address"):
        build_transit(Settings(transit="vault", vault_addr=None), sessionmaker)
    v = build_transit(
        Settings(
            transit="vault",
            vault_addr="https://vault.example:8200",
            vault_token="t0k",
            transit_mount="kv-transit",
            rotation_batch_size=100,
        ),
        sessionmaker,
    )
    assert isinstance(v, VaultTransit) and v.mount == "kv-transit" and v.batch_size == 100
    assert "t0k" not in repr(v)
    for b in (backend, backend2, v):
        await b.close()


async def test_key_versions_are_stored_wrapped(sessionmaker, local_transit: LocalTransit) -> None:
    await rotate_key(local_transit)
    async with sessionmaker() as s:
        rows = (await s.execute(select(TransitKeyVersion).order_by(TransitKeyVersion.version))).scalars().all()
    assert [r.version for r in rows] == [1, 2]
    assert all(len(r.wrapped_key) == 12 + 32 + 16 for r in rows)
    assert rows[0].wrapped_key != rows[1].wrapped_key
    assert "wrapped" not in repr(local_transit) and "cached_versions" in repr(local_transit)


async def test_wrong_master_key_is_a_clear_error(sessionmaker, local_transit: LocalTransit) -> None:
    ct = await local_transit.encrypt(b"x")
    other = LocalTransit(sessionmaker, os.urandom(32))
    with pytest.raises(ExternalError, match="master key cannot unwrap version 1"):
        await other.decrypt(ct)
    await other.close()


async def test_processes_sharing_the_database_agree(sessionmaker, master_key: bytes) -> None:
    a = LocalTransit(sessionmaker, master_key)
    b = LocalTransit(sessionmaker, master_key)
    await a.ensure_key()
    await b.ensure_key()
    old = await b.encrypt(b"old")  # b caches version 1
    assert await rotate_key(a) == 2
    fresh = await b.encrypt(b"fresh")
    assert fresh.startswith("vault:v2:")  # b did not keep encrypting with its cached latest
    assert await b.decrypt(await a.encrypt(b"from-a")) == b"from-a"
    await set_min(a, min_decryption=2)
    [res] = await b.decrypt_batch([old])
    assert not isinstance(res, bytes) and res.too_old  # b enforces a's policy change at once
    await a.close()
    await b.close()


async def test_missing_master_key_is_refused_while_a_keyring_exists(engine, settings: Settings) -> None:  # noqa: ANN001
    """A deleted master key file must not be silently replaced: the new key could unwrap nothing."""
    from fleet_mcp.app import App

    first = App(settings)
    await first.start(migrate_db=False)
    assert (await first.transit.read_key()).latest_version == 1
    await first.close()
    key_file = settings.effective_master_key_file
    key_file.unlink()

    second = App(settings)
    with pytest.raises(ExternalError) as exc:
        await second.start(migrate_db=False)
    await second.close()
    message = exc.value.message
    assert str(key_file) in message and "unreadable" in message and "'fleet-pepper'" in message
    assert "FLEET_MCP_MASTER_KEY" in (exc.value.hint or "")
    assert not key_file.exists()  # nothing generated that would hide the problem at the next start


async def test_keyring_changes_happen_in_the_callers_unit_of_work(sessionmaker, local_transit: LocalTransit) -> None:
    """Rotate, policy changes and trim write in the session they are given (commit or roll back with it);
    without one they refuse; encrypt and decrypt never wait for the caller's write lock."""
    from fleet_mcp.vault.transit.local import KeyringWriteOutsideUnitOfWork

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with sessionmaker() as s, s.begin():
            assert await local_transit.rotate(session=s) == 2
            assert (await local_transit.read_key(session=s)).latest_version == 2
            raise Abort
    assert (await local_transit.read_key()).latest_version == 1  # rolled back with the caller
    for change in (
        local_transit.rotate(),
        local_transit.set_min_versions(min_decryption=1),
        local_transit.trim(1),
    ):
        with pytest.raises(KeyringWriteOutsideUnitOfWork):
            await change
    with anyio.fail_after(30):  # a write transaction of their own would wait for this one's lock forever
        async with sessionmaker() as s, s.begin():
            await s.execute(select(TransitKeyVersion.id).limit(1))  # the unit of work holds the write lock
            ct = await local_transit.encrypt(b"inside")
            assert await local_transit.decrypt(ct) == b"inside"
            assert await local_transit.rotate(session=s) == 2
            await local_transit.set_min_versions(min_decryption=2, min_encryption=2, session=s)
    info = await local_transit.read_key()
    assert (info.latest_version, info.min_decryption_version) == (2, 2)
    assert await local_transit.decrypt(await local_transit.encrypt(b"after")) == b"after"
