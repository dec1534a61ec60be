"""Against a real OpenBao dev server: the shipped policies give the runtime token and the rotation token
exactly their jobs, fleet-mcp rotates with the pair, and a rotation whose answer is lost happens once."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet_mcp.db.base import Base
from fleet_mcp.db.engine import create_engine, make_sessionmaker
from fleet_mcp.db.models import AuditEntry
from fleet_mcp.errors import PermissionDenied
from fleet_mcp.vault.policies import POLICIES, policy_text
from fleet_mcp.vault.rotation import AUDIT_TOOL, RotationEngine
from fleet_mcp.vault.transit.vault import VaultTransit
from tests.vault.bao_server import OpenBaoServer
from tests.vault.faulty_proxy import AnswerLosingProxy
from tests.vault.vault_helpers import finalize_now, make_account, plaintexts_of, seed, trim_now

pytestmark = [pytest.mark.anyio, pytest.mark.openbao]


def tokens_for(bao: OpenBaoServer, key: str) -> dict[str, str]:
    """Load both shipped policies for `key` and mint one token per policy."""
    root = bao.client()
    out = {}
    for name in POLICIES:
        policy = f"{name}-{key}"
        root.sys.create_or_update_policy(policy, policy_text(name, key=key))
        out[name] = root.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"]
    return out


@pytest.fixture
async def db(tmp_path: Path):  # noqa: ANN201
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield make_sessionmaker(engine)
    await engine.dispose()


def test_shipped_policies_are_package_data() -> None:
    runtime = policy_text("fleet-mcp-runtime")
    rotation = policy_text("fleet-mcp-rotation", mount="kv/transit", key="k1")
    assert 'path "transit/decrypt/fleet-pepper"' in runtime and "rotate" not in runtime.split("path", 1)[1]
    assert 'path "kv/transit/keys/k1/rotate"' in rotation and "decrypt/" not in rotation


async def test_runtime_token_cannot_manage_the_key_and_rotation_token_cannot_use_it(openbao: OpenBaoServer) -> None:
    key = f"pepper-{uuid.uuid4().hex[:10]}"
    tokens = tokens_for(openbao, key)
    runtime = VaultTransit(openbao.addr, token=tokens["fleet-mcp-runtime"], key_name=key, max_attempts=2)
    admin_only = VaultTransit(openbao.addr, token=tokens["fleet-mcp-rotation"], key_name=key, max_attempts=2)
    with pytest.raises(PermissionDenied, match="create key"):
        await runtime.ensure_key()  # the runtime token cannot even create it
    await admin_only.ensure_key()
    ct = await runtime.encrypt(b"s3cret")
    assert await runtime.decrypt(ct) == b"s3cret"
    assert (await runtime.rewrap_batch([ct]))[0].startswith("vault:v1:")  # type: ignore[union-attr]
    for what, change in (
        ("rotate", runtime.rotate()),
        ("update key config", runtime.set_min_versions(min_decryption=1)),
        ("trim", runtime.trim(1)),
    ):
        with pytest.raises(PermissionDenied, match=what) as exc:
            await change
        assert "runtime token" in exc.value.message
    for what, use in (
        ("decrypt", admin_only.decrypt_batch([ct])),
        ("encrypt", admin_only.encrypt_batch([b"x"])),
        ("rewrap", admin_only.rewrap_batch([ct])),
    ):
        with pytest.raises(PermissionDenied, match=what):
            await use
    assert await admin_only.rotate() == 2  # what it is for
    for t in (runtime, admin_only):
        await t.close()


async def test_rotation_finalize_and_trim_work_with_the_token_pair(openbao: OpenBaoServer, db) -> None:  # noqa: ANN001
    key = f"pepper-{uuid.uuid4().hex[:10]}"
    tokens = tokens_for(openbao, key)
    transit = VaultTransit(
        openbao.addr,
        token=tokens["fleet-mcp-runtime"],
        admin_token=tokens["fleet-mcp-rotation"],
        key_name=key,
        max_attempts=2,
    )
    assert "admin_auth=token" in repr(transit) and tokens["fleet-mcp-rotation"] not in repr(transit)
    await transit.ensure_key()  # created with the rotation token
    acme = await make_account(db, "acme")
    expected = await seed(db, transit, acme, 120)
    job = await RotationEngine(db, transit, batch_size=50).start(started_by="acme/ops")
    assert (job.status, job.from_version, job.to_version, job.rewrapped) == ("completed", 1, 2, 120)
    assert await plaintexts_of(db, transit, acme) == expected
    assert not (await finalize_now(db, transit)).refused
    trimmed = await trim_now(db, transit)
    assert trimmed.min_available_version == 2 and trimmed.deleted_versions == [1]
    await transit.close()


async def test_a_rotation_whose_answer_is_lost_rotates_the_key_once(openbao: OpenBaoServer, db) -> None:  # noqa: ANN001
    """OpenBao rotates, the answer never arrives (connection reset): the job must read the key and adopt the
    new version, not send the POST again (each POST adds a version)."""
    key = f"pepper-{uuid.uuid4().hex[:10]}"
    proxy = AnswerLosingProxy(openbao.port, f"/transit/keys/{key}/rotate".encode(), drop=1)
    transit = VaultTransit(proxy.addr, token=openbao.token, key_name=key, max_attempts=4, backoff=0.01)
    try:
        await transit.ensure_key()
        acme = await make_account(db, "acme")
        await seed(db, transit, acme, 10)
        job = await RotationEngine(db, transit, batch_size=5).start(started_by="acme/ops")
        assert proxy.dropped == 1 and proxy.forwarded_matching == 1  # sent once, never again
        latest = (await transit.read_key()).latest_version
        assert (latest, job.to_version, job.status, job.rewrapped) == (2, 2, "completed", 10)
        async with db() as s:
            rotated = (
                await s.execute(
                    select(AuditEntry.detail).where(AuditEntry.tool == AUDIT_TOOL, AuditEntry.outcome == "rotated")
                )
            ).scalar_one()
        assert rotated["target_version"] == 2 and rotated["to_version"] == 2
    finally:
        await transit.close()
        proxy.close()
