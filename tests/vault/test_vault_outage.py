"""OpenBao stopped mid-rotation: the job pauses with a clear error and resumes after a restart.

A dev server keeps its keys in memory and loses them on restart, so this test runs a real server on raft
storage in a temp dir (initialised and unsealed by the fixture): stopping it is a real outage, and after
the restart (and unseal) the same keys are back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_mcp.db.base import Base
from fleet_mcp.db.engine import create_engine, make_sessionmaker
from fleet_mcp.errors import Busy
from fleet_mcp.vault.rotation import RotationEngine, get_job
from tests.vault.bao_server import OpenBaoServer, need_bao, vault_transit
from tests.vault.vault_helpers import account, finalize_now, make_account, plaintexts_of, rows_of, seed

pytestmark = [pytest.mark.anyio, pytest.mark.openbao]


@pytest.fixture
def persistent_openbao() -> Iterator[OpenBaoServer]:
    server = OpenBaoServer(need_bao(), dev=False)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


async def test_openbao_stopped_mid_rotation_pauses_then_resumes(
    persistent_openbao: OpenBaoServer, tmp_path: Path
) -> None:
    bao = persistent_openbao
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sm = make_sessionmaker(engine)
    transit = vault_transit(bao, key_name="fleet-pepper", max_attempts=3, backoff=0.05, backoff_max=0.1, timeout=3)
    await transit.ensure_key()
    acme, globex = await make_account(sm, "acme"), await make_account(sm, "globex")
    expected = {acme: await seed(sm, transit, acme, 180), globex: await seed(sm, transit, globex, 120)}
    batches = 0

    async def stop_vault_after_two_batches(done: int, total: int, message: str) -> None:
        nonlocal batches
        if message.startswith("account"):
            batches += 1
            if batches == 2:
                bao.stop(hard=True)

    job = await RotationEngine(sm, transit, batch_size=50).start(
        started_by="ops", progress=stop_vault_after_two_batches
    )

    assert job.status == "paused"
    assert job.error is not None and f"Vault at {bao.addr} is unreachable" in job.error
    assert f"job_id={job.id}" in job.error  # says how to continue
    # Two batches were committed before the outage; the page being rewrapped meanwhile may have made it too.
    assert job.rewrapped in (100, 150) and job.to_version == 2
    assert sum(1 for r in await rows_of(sm) if r.key_version == 2) == job.rewrapped
    with pytest.raises(Busy):
        await finalize_now(sm, transit)

    bao.start()  # same storage: unsealed with the same key, the transit key is back
    resumed = await RotationEngine(sm, transit, batch_size=50).resume(job.id)

    assert resumed.status == "completed" and resumed.error is None
    assert (resumed.rewrapped, resumed.failed) == (300, 0)
    assert {r.key_version for r in await rows_of(sm)} == {2}
    for acct_id, values in expected.items():
        assert await plaintexts_of(sm, transit, acct_id) == values
        assert (await account(sm, acct_id)).transit_key_version == 2
    async with sm() as s:
        assert (await get_job(s, job.id)).status == "completed"
    assert not (await finalize_now(sm, transit)).refused
    await transit.close()
    await engine.dispose()
