"""The rotation engine on both databases and both transit backends: rewrap all, progress, audit, finalize."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError

from fleet_mcp import audit
from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import AuditEntry
from fleet_mcp.errors import Busy, Conflict, InvalidArgument
from fleet_mcp.vault import lease, rotation
from fleet_mcp.vault.credentials import CredentialStore
from fleet_mcp.vault.models import Credential, RotationFailure, RotationJob
from fleet_mcp.vault.rotation import RotationEngine
from fleet_mcp.vault.transit import CiphertextRejected, TransitBackend
from tests.vault.vault_helpers import account, finalize_now, make_account, plaintexts_of, rows_of, seed, trim_now

pytestmark = pytest.mark.anyio


async def test_rotation_rewraps_every_account(sessionmaker, transit: TransitBackend, account, other_account) -> None:
    sm = sessionmaker
    a = await seed(sm, transit, account.id, 230)
    b = await seed(sm, transit, other_account.id, 75)
    empty_id = await make_account(sm, "initech")
    seen: list[tuple[int, int, str]] = []

    async def progress(done: int, total: int, message: str) -> None:
        seen.append((done, total, message))

    job = await RotationEngine(sm, transit, batch_size=50).start(started_by="acme/admin", progress=progress)

    assert job.status == "completed"
    assert (job.from_version, job.to_version) == (1, 2)
    assert (job.total, job.rewrapped, job.failed, job.skipped) == (305, 305, 0, 0)
    assert job.batches == 5 + 2
    assert job.skipped_accounts == ["initech"]
    assert {p.name: p.status for p in job.accounts} == {"acme": "done", "globex": "done", "initech": "skipped"}
    assert all(r.key_version == 2 for r in await rows_of(sm))
    assert await plaintexts_of(sm, transit, account.id) == a
    assert await plaintexts_of(sm, transit, other_account.id) == b
    for acct_id in (account.id, other_account.id, empty_id):
        acct = await account_of(sm, acct_id)
        assert acct.transit_key_version == 2 and acct.transit_key_rotated_at is not None
    # Progress only goes up and ends at the total.
    dones = [d for d, _, _ in seen]
    assert dones == sorted(dones) and dones[-1] == 305 and seen[-1][1] == 305
    # One audit row per committed batch, and the chain holds.
    async with sm() as s:
        batches = (
            await s.execute(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.tool == rotation.AUDIT_TOOL, AuditEntry.outcome == "batch_committed")
            )
        ).scalar_one()
        assert batches == job.batches
        assert (await audit.verify(s)).ok
        status = await CredentialStore(transit).pepper_status(s)
    assert status.ciphertexts_by_version == {"2": 305}
    assert status.accounts_by_version == {"2": 3}
    assert status.latest_version == 2 and status.below_latest == 0


async def account_of(sm, account_id: int):  # noqa: ANN001, ANN201
    return await account(sm, account_id)


async def test_second_rotation_while_one_is_active_is_busy(sessionmaker, local_transit, account) -> None:
    engine = RotationEngine(sessionmaker, local_transit)
    pending = await engine.start(started_by="a", run=False)
    assert pending.status == "pending"
    with pytest.raises(Busy, match=f"rotation job {pending.id}"):
        await engine.start(started_by="b")
    async with sessionmaker() as s, s.begin():
        await s.execute(update(RotationJob).where(RotationJob.id == pending.id).values(status="paused"))
    with pytest.raises(Busy):
        await engine.start(started_by="b")
    done = await engine.resume(pending.id)
    assert done.status == "completed"
    with pytest.raises(Conflict, match="completed"):
        await engine.resume(pending.id)
    again = await engine.start(started_by="b")
    assert again.status == "completed" and again.to_version == 3


async def test_unrewrappable_ciphertext_is_recorded_and_finalize_waits(
    sessionmaker, transit, account, other_account
) -> None:
    sm = sessionmaker
    a = await seed(sm, transit, account.id, 40)
    await seed(sm, transit, other_account.id, 10)
    old_ct = (await rows_of(sm, account.id))[0].ciphertext
    # One row whose ciphertext is damaged (tag flipped): no backend can rewrap it.
    async with sm() as s, s.begin():
        victim = (
            await s.execute(
                select(Credential).where(Credential.account_id == account.id, Credential.name == "cred-000007")
            )
        ).scalar_one()
        raw = bytearray(base64.b64decode(victim.ciphertext.split(":", 2)[2]))
        raw[-1] ^= 1
        victim.ciphertext = "vault:v1:" + base64.b64encode(bytes(raw)).decode()

    job = await RotationEngine(sm, transit, batch_size=16).start(started_by="ops")

    assert job.status == "completed_with_failures"
    assert (job.rewrapped, job.failed) == (49, 1)
    assert [(e.name, e.key_version) for e in job.errors] == [("cred-000007", 1)]
    assert "authentication failed" in job.errors[0].error
    progress = {p.name: p.status for p in job.accounts}
    assert progress == {"acme": "done_with_failures", "globex": "done"}
    assert (await account_of(sm, account.id)).transit_key_version == 1  # not all its rows are on v2
    assert (await account_of(sm, other_account.id)).transit_key_version == 2
    async with sm() as s:
        assert (await s.execute(select(func.count()).select_from(RotationFailure))).scalar_one() == 1

    refused = await finalize_now(sm, transit)
    assert refused.refused and refused.remaining_below == 1 and refused.min_decryption_version == 1
    assert "1 stored ciphertexts are still below v2" in refused.message
    with pytest.raises(InvalidArgument):
        await trim_now(sm, transit, min_available_version=2)  # not finalized yet

    async with sm() as s, s.begin():
        await CredentialStore(transit).delete(s, account_id=account.id, name="cred-000007")
    done = await finalize_now(sm, transit)
    assert not done.refused and done.min_decryption_version == 2 and done.remaining_below == 0
    # Exactly what Vault does with an old ciphertext after min_decryption_version moved past it.
    with pytest.raises(CiphertextRejected, match=r"disallowed by policy \(too old\)"):
        await transit.decrypt(old_ct)
    plain = await plaintexts_of(sm, transit, account.id)
    assert plain == {k: v for k, v in a.items() if k != "cred-000007"}
    async with sm() as s:
        report = await CredentialStore(transit).verify(s)
    assert (report.checked, report.ok, report.failed) == (49, 49, 0)

    trimmed = await trim_now(sm, transit)
    assert trimmed.min_available_version == 2 and trimmed.deleted_versions == [1]
    assert "irreversible" in trimmed.warning and "unreadable" in trimmed.warning
    assert (await transit.read_key()).min_available_version == 2


async def test_finalize_refuses_while_rotation_is_active(sessionmaker, local_transit, account) -> None:
    await seed(sessionmaker, local_transit, account.id, 3)
    job = await RotationEngine(sessionmaker, local_transit).start(started_by="x", run=False)
    with pytest.raises(Busy, match=f"rotation job {job.id}"):
        await finalize_now(sessionmaker, local_transit)


async def test_rotate_without_reencrypt_leaves_rows(sessionmaker, local_transit, account) -> None:
    await seed(sessionmaker, local_transit, account.id, 5)
    job = await RotationEngine(sessionmaker, local_transit).start(started_by="x", reencrypt_existing=False)
    assert job.status == "completed" and job.to_version == 2 and job.rewrapped == 0
    assert {r.key_version for r in await rows_of(sessionmaker)} == {1}
    assert (await account_of(sessionmaker, account.id)).transit_key_version == 1
    result = await finalize_now(sessionmaker, local_transit)
    assert result.refused and result.remaining_below == 5


async def test_resume_continues_from_the_cursor(sessionmaker, local_transit, account, other_account) -> None:
    sm = sessionmaker
    a = await seed(sm, local_transit, account.id, 60)
    b = await seed(sm, local_transit, other_account.id, 30)
    engine = RotationEngine(sm, local_transit, batch_size=20)

    class Stop(Exception):
        pass

    calls = 0

    async def stop_after_two_batches(done: int, total: int, message: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # rotated + 2 batches committed
            raise Stop()

    with pytest.raises(Stop):
        await engine.start(started_by="x", progress=stop_after_two_batches)
    async with sm() as s:
        job = (await s.execute(select(RotationJob))).scalar_one()
    assert job.status == "paused" and "internal error (Stop)" in (job.error or "")
    assert job.rewrapped == 40 and job.cursor_account_id is None  # still in the table-wide sweep
    landed = sum(1 for r in await rows_of(sm, account.id) if r.key_version == 2)
    assert landed == 40  # counters and rows moved together

    resumed = await rotation.resume_interrupted(sm, local_transit)
    assert [j.status for j in resumed] == ["completed"]
    assert resumed[0].rewrapped == 90 and resumed[0].batches == 5
    assert await plaintexts_of(sm, local_transit, account.id) == a
    assert await plaintexts_of(sm, local_transit, other_account.id) == b


async def test_running_job_of_a_live_process_is_not_taken_over(sessionmaker, local_transit, account) -> None:
    import os

    engine = RotationEngine(sessionmaker, local_transit)
    job = await engine.start(started_by="x", run=False)
    live_owner = f"{lease._HOST}:{os.getppid()}:feedface"
    dead_owner = f"{lease._HOST}:999999999:feedface"
    async with sessionmaker() as s, s.begin():
        await s.execute(
            update(RotationJob)
            .where(RotationJob.id == job.id)
            .values(status="running", owner=live_owner, heartbeat_at=utcnow())
        )
    with pytest.raises(Busy, match="running in process"):
        await engine.resume(job.id)
    async with sessionmaker() as s, s.begin():
        await s.execute(update(RotationJob).where(RotationJob.id == job.id).values(owner=dead_owner))
    assert (await engine.resume(job.id)).status == "completed"


async def test_failed_batch_commit_pauses_with_only_committed_progress(
    sessionmaker, local_transit, account, other_account
) -> None:
    """A batch whose transaction fails (here a trigger refuses the job's third progress save) leaves no
    trace: the paused job's counters and cursor are those of the last committed batch, matching the rows."""
    sm = sessionmaker
    a = await seed(sm, local_transit, account.id, 70)
    b = await seed(sm, local_transit, other_account.id, 30)
    async with sm() as s, s.begin():
        conn = await s.connection()
        if conn.dialect.name == "sqlite":
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_third BEFORE UPDATE OF batches ON rotation_jobs WHEN NEW.batches = 3 "
                "BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
            )
        else:
            await conn.exec_driver_sql(
                "CREATE FUNCTION refuse_third() RETURNS trigger AS $$ BEGIN IF NEW.batches = 3 THEN "
                "RAISE EXCEPTION 'refused by test trigger'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_third BEFORE UPDATE ON rotation_jobs FOR EACH ROW EXECUTE FUNCTION refuse_third()"
            )
    engine = RotationEngine(sm, local_transit, batch_size=20)
    try:
        await engine.start(started_by="x")
    except DBAPIError:
        pass  # not a database outage: the engine pauses the job and re-raises
    async with sm() as s:
        job = (await s.execute(select(RotationJob))).scalar_one()
    assert job.status == "paused" and job.owner is None
    assert (job.rewrapped, job.batches, job.cursor_account_id) == (40, 2, None)  # in the table-wide sweep
    landed = sorted(r.id for r in await rows_of(sm, account.id) if r.key_version == 2)
    assert len(landed) == 40 and job.cursor_row_id == landed[-1]
    assert job.account_progress[str(account.id)]["rewrapped"] == 40

    async with sm() as s, s.begin():
        await s.execute(
            text("DROP TRIGGER refuse_third" + ("" if s.get_bind().dialect.name == "sqlite" else " ON rotation_jobs"))
        )
    done = await engine.resume(job.id)
    assert done.status == "completed" and (done.rewrapped, done.failed, done.skipped) == (100, 0, 0)
    assert {r.key_version for r in await rows_of(sm)} == {2}
    assert await plaintexts_of(sm, local_transit, account.id) == a
    assert await plaintexts_of(sm, local_transit, other_account.id) == b
    async with sm() as s:
        assert (await audit.verify(s)).ok


async def test_trim_refuses_while_anything_old_remains(sessionmaker, transit, account) -> None:  # noqa: ANN001
    """Trim is the one irreversible step: refused while a stored row is below the trim point (here a row put
    back from a restore after finalize) and while a declared backup needs an older version."""
    sm = sessionmaker
    await seed(sm, transit, account.id, 6)
    old_row = (await rows_of(sm, account.id))[0]
    job = await RotationEngine(sm, transit, batch_size=4).start(started_by="ops")
    assert job.status == "completed"
    assert not (await finalize_now(sm, transit)).refused
    async with sm() as s, s.begin():  # a row restored from an old backup, still on v1
        s.add(Credential(account_id=account.id, name="restored", kind="generic", ciphertext=old_row.ciphertext,
                         key_version=1, meta={}))
    with pytest.raises(Conflict, match="1 stored ciphertexts are below v2"):
        await trim_now(sm, transit)
    async with sm() as s, s.begin():
        await CredentialStore(transit).delete(s, account_id=account.id, name="restored")
    with pytest.raises(Conflict, match="a declared backup still needs key version v1"):
        await trim_now(sm, transit, backup_min_version=1)
    assert (await transit.read_key()).min_available_version == 0  # nothing was deleted
    trimmed = await trim_now(sm, transit, backup_min_version=2)
    assert trimmed.deleted_versions == [1]
