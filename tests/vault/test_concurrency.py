"""Credentials written while a rotation runs are neither lost (overwritten) nor left behind (below target)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import anyio
import pytest
from pydantic import SecretStr
from sqlalchemy import update

from fleet_mcp.vault.credentials import CredentialStore
from fleet_mcp.vault.models import Credential
from fleet_mcp.vault.rotation import RotationEngine
from fleet_mcp.vault.transit import TransitBackend, TransitItemError
from tests.vault.vault_helpers import account, plaintexts_of, rows_of, seed

pytestmark = pytest.mark.anyio


async def test_writes_behind_and_ahead_of_the_cursor(sessionmaker, transit: TransitBackend, account) -> None:
    sm = sessionmaker
    expected: dict[str, bytes] = dict(await seed(sm, transit, account.id, 200))
    store = CredentialStore(transit)
    # A writer that encrypted before the rotation (at v1) and commits only after the cursor has passed.
    stale_ct = await transit.encrypt(b"stale-writer")
    first = True

    async def writer_at_first_batch(done: int, total: int, message: str) -> None:
        nonlocal first
        if not message.startswith("account") or not first:
            return
        first = False  # the cursor is now past cred-000049
        async with sm() as s, s.begin():
            await s.execute(
                update(Credential)
                .where(Credential.account_id == account.id, Credential.name == "cred-000010")
                .values(ciphertext=stale_ct, key_version=1)
            )
            for name, value in (("cred-000020", b"behind"), ("cred-000150", b"ahead"), ("late-new", b"new")):
                await store.store(s, account_id=account.id, name=name, kind="generic", secret=SecretStr(value.decode()))
        expected.update(
            {"cred-000010": b"stale-writer", "cred-000020": b"behind", "cred-000150": b"ahead", "late-new": b"new"}
        )

    job = await RotationEngine(sm, transit, batch_size=50).start(started_by="x", progress=writer_at_first_batch)

    assert job.status == "completed" and job.failed == 0
    assert job.rewrapped == 200 - 1 + 1  # cred-000150 was already on v2; the stale row was swept again
    assert job.total == 201
    assert {r.key_version for r in await rows_of(sm)} == {2}
    assert await plaintexts_of(sm, transit, account.id) == expected
    assert (await account_of(sm, account.id)).transit_key_version == 2


async def account_of(sm, account_id):  # noqa: ANN001, ANN201
    return await account(sm, account_id)


class WriterDuringRewrap(TransitBackend):
    """The real backend, plus a concurrent writer that commits a new secret for one row of the first batch
    while that batch is being rewrapped (between the engine's read and its write)."""

    def __init__(self, inner: TransitBackend, sm, account_id: int, name: str) -> None:  # noqa: ANN001
        self.inner, self.sm, self.account_id, self.name = inner, sm, account_id, name
        self.kind, self.key_name = inner.kind, inner.key_name
        self.fired = False

    async def rewrap_batch(self, ciphertexts: Sequence[str]) -> list[str | TransitItemError]:
        out = await self.inner.rewrap_batch(ciphertexts)
        if not self.fired:
            self.fired = True
            async with self.sm() as s, s.begin():
                await CredentialStore(self.inner).store(
                    s,
                    account_id=self.account_id,
                    name=self.name,
                    kind="generic",
                    secret=SecretStr("written-concurrently"),
                )
        return out

    async def ensure_key(self, *, session=None):  # noqa: ANN001, ANN201
        return await self.inner.ensure_key(session=session)

    async def read_key(self, *, session=None):  # noqa: ANN001, ANN201
        return await self.inner.read_key(session=session)

    async def rotate(self, *, session=None) -> int:  # noqa: ANN001
        return await self.inner.rotate(session=session)

    async def encrypt_batch(self, plaintexts):  # noqa: ANN001, ANN201
        return await self.inner.encrypt_batch(plaintexts)

    async def decrypt_batch(self, ciphertexts):  # noqa: ANN001, ANN201
        return await self.inner.decrypt_batch(ciphertexts)

    async def set_min_versions(self, *, min_decryption=None, min_encryption=None, session=None):  # noqa: ANN001, ANN201
        return await self.inner.set_min_versions(
            min_decryption=min_decryption, min_encryption=min_encryption, session=session
        )

    async def trim(self, min_available_version: int, *, session=None):  # noqa: ANN001, ANN201
        return await self.inner.trim(min_available_version, session=session)


async def test_compare_and_set_never_overwrites_a_concurrent_write(sessionmaker, transit, account) -> None:
    sm = sessionmaker
    expected = dict(await seed(sm, transit, account.id, 30))
    racing = WriterDuringRewrap(transit, sm, account.id, "cred-000005")
    job = await RotationEngine(sm, racing, batch_size=10).start(started_by="x")
    expected["cred-000005"] = b"written-concurrently"
    assert racing.fired
    assert (job.rewrapped, job.skipped, job.failed) == (29, 1, 0)
    assert await plaintexts_of(sm, transit, account.id) == expected
    assert {r.key_version for r in await rows_of(sm)} == {2}


async def test_random_writers_during_rotation(sessionmaker, local_transit, account, other_account) -> None:
    sm = sessionmaker
    rng = random.Random(6)
    expected = {
        account.id: dict(await seed(sm, local_transit, account.id, 150)),
        other_account.id: dict(await seed(sm, local_transit, other_account.id, 150)),
    }
    store = CredentialStore(local_transit)
    done = anyio.Event()
    wrote = anyio.Event()
    writes = 0

    async def writer() -> None:
        nonlocal writes
        while not done.is_set():
            acct = rng.choice(list(expected))
            name = rng.choice([*expected[acct], f"new-{writes}"])
            value = f"gen-{writes}"
            async with sm() as s, s.begin():
                await store.store(s, account_id=acct, name=name, kind="generic", secret=SecretStr(value))
            expected[acct][name] = value.encode()
            writes += 1
            wrote.set()
            await anyio.sleep(0)  # a yield to the rotation, not a wait

    async def a_write_between_batches(done_: int, total: int, message: str) -> None:
        # Between two batches the writer commits at least one write (no transaction is open here).
        nonlocal wrote
        wrote = anyio.Event()
        with anyio.fail_after(30):
            await wrote.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        job = await RotationEngine(sm, local_transit, batch_size=15).start(
            started_by="x", progress=a_write_between_batches
        )
        done.set()
    assert writes >= 5  # the writer really ran during the rotation
    assert job.status == "completed" and job.failed == 0
    assert {r.key_version for r in await rows_of(sm)} == {2}
    for acct, values in expected.items():
        assert await plaintexts_of(sm, local_transit, acct) == values


async def test_old_version_write_after_its_account_was_swept(
    sessionmaker, local_transit, account, other_account
) -> None:
    """A writer that encrypted before the rotation and committed after its account was finished (e.g. a
    writer from another server starved on locks) is caught by the final re-check across accounts."""
    sm = sessionmaker
    first = dict(await seed(sm, local_transit, account.id, 30))
    second = dict(await seed(sm, local_transit, other_account.id, 30))
    stale_ct = await local_transit.encrypt(b"late-old-version")
    fired = False

    async def late_writer(done: int, total: int, message: str) -> None:
        nonlocal fired
        if message.startswith("account globex") and not fired:
            fired = True  # acme is finished and its transit_key_version already moved
            async with sm() as s, s.begin():
                await s.execute(
                    update(Credential)
                    .where(Credential.account_id == account.id, Credential.name == "cred-000003")
                    .values(ciphertext=stale_ct, key_version=1)
                )

    job = await RotationEngine(sm, local_transit, batch_size=10).start(started_by="x", progress=late_writer)
    first["cred-000003"] = b"late-old-version"
    assert fired and job.status == "completed"
    assert {r.key_version for r in await rows_of(sm)} == {2}
    assert await plaintexts_of(sm, local_transit, account.id) == first
    assert await plaintexts_of(sm, local_transit, other_account.id) == second
