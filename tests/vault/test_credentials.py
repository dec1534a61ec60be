"""The credential store: write-only secrets, metadata-only listings, internal kinds, seal/unseal, verify."""

from __future__ import annotations

import json

import anyio
import pytest
from pydantic import SecretStr
from sqlalchemy import select, text

from fleet_mcp.errors import Conflict, InvalidArgument, NotFound
from fleet_mcp.federation.keys import KeySealer
from fleet_mcp.vault.credentials import CredentialKeySealer, CredentialStore
from fleet_mcp.vault.models import Credential
from fleet_mcp.vault.transit import TransitBackend, ciphertext_version
from tests.vault.vault_helpers import rotate_key

pytestmark = pytest.mark.anyio
SECRET = "s3cr3t-hunter2-🔑"


async def test_store_is_write_only_and_upserts(sessionmaker, transit: TransitBackend, account) -> None:
    store = CredentialStore(transit)
    async with sessionmaker() as s, s.begin():
        first = await store.store(
            s,
            account_id=account.id,
            name="github",
            kind="git_https",
            secret=SecretStr(SECRET),
            metadata={"username": "bot", "host": "github.com"},
        )
    dumped = first.model_dump_json()
    assert SECRET not in dumped and "ciphertext" not in dumped
    assert first.key_version == 1 and first.kind == "git_https" and not first.internal
    async with sessionmaker() as s:
        row = (await s.execute(select(Credential).where(Credential.id == first.id))).scalar_one()
        assert ciphertext_version(row.ciphertext) == 1
        assert SECRET.encode() not in row.ciphertext.encode() and SECRET not in repr(row)
        assert await store.get_plaintext(s, account.id, "github") == SECRET.encode()

    await rotate_key(transit)
    async with sessionmaker() as s, s.begin():
        second = await store.store(
            s,
            account_id=account.id,
            name="github",
            kind="git_https",
            secret=SecretStr("new-value"),
            metadata={"username": "bot2"},
        )
    assert second.id == first.id and second.key_version == 2
    assert second.created_at == first.created_at and second.updated_at >= first.updated_at
    async with sessionmaker() as s:
        assert await store.get_plaintext(s, account.id, "github") == b"new-value"
        listed = await store.list(s, account_id=account.id)
    assert [(c.name, c.metadata) for c in listed] == [("github", {"username": "bot2"})]


async def test_validation(sessionmaker, local_transit, account) -> None:
    store = CredentialStore(local_transit)
    async with sessionmaker() as s, s.begin():
        with pytest.raises(InvalidArgument, match="unknown credential kind"):
            await store.store(s, account_id=account.id, name="x", kind="ca_private_key", secret=SecretStr("v"))
        with pytest.raises(InvalidArgument, match="invalid credential name"):
            await store.store(s, account_id=account.id, name="../etc", kind="generic", secret=SecretStr("v"))
        with pytest.raises(InvalidArgument, match="looks like a secret"):
            await store.store(
                s,
                account_id=account.id,
                name="x",
                kind="generic",
                secret=SecretStr("v"),
                metadata={"nested": {"password": "oops"}},
            )
        with pytest.raises(InvalidArgument, match="empty"):
            await store.store(s, account_id=account.id, name="x", kind="generic", secret=SecretStr(""))
        with pytest.raises(NotFound):
            await store.delete(s, account_id=account.id, name="missing")


async def test_internal_kinds_are_hidden_and_protected(sessionmaker, local_transit, account, other_account) -> None:
    store = CredentialStore(local_transit)
    async with sessionmaker() as s, s.begin():
        await store.store(s, account_id=account.id, name="api", kind="api_key", secret=SecretStr("k"))
        cid = await store.seal(s, account.id, "ca/root", "ca_private_key", b"\x00PRIVATE KEY BYTES\xff")
    async with sessionmaker() as s, s.begin():
        assert [c.name for c in await store.list(s, account_id=account.id)] == ["api"]
        both = await store.list(s, account_id=account.id, include_internal=True)
        assert {c.name: c.internal for c in both} == {"api": False, "ca/root": True}
        assert await store.list(s, account_id=account.id, kind="api_key") == [both[0]]
        assert await store.list(s, account_id=other_account.id, include_internal=True) == []
        assert await store.unseal(s, cid) == b"\x00PRIVATE KEY BYTES\xff"
        with pytest.raises(NotFound):
            await store.delete(s, account_id=account.id, name="ca/root")
        with pytest.raises(Conflict, match="internal"):
            await store.store(s, account_id=account.id, name="ca/root", kind="generic", secret=SecretStr("x"))
        with pytest.raises(InvalidArgument, match="user kind"):
            await store.seal(s, account.id, "k", "generic", b"x")


async def test_key_sealer_adapter_matches_federation_protocol(sessionmaker, local_transit, account) -> None:
    sealer = CredentialKeySealer(local_transit)
    assert isinstance(sealer, KeySealer)
    async with sessionmaker() as s, s.begin():
        r1 = await sealer.seal(s, account.id, b"key-one", label="intermediate")
        r2 = await sealer.seal(s, account.id, b"key-two", label="intermediate")
    assert r1 != r2 and r1.startswith("credential:")
    async with sessionmaker() as s:
        assert await sealer.unseal(s, r1) == b"key-one"
        assert await sealer.unseal(s, r2) == b"key-two"
        rows = (await s.execute(select(Credential).where(Credential.internal.is_(True)))).scalars().all()
    assert {r.kind for r in rows} == {"ca_private_key"} and len(rows) == 2


async def test_verify_counts_failures_without_secrets(sessionmaker, transit, account, other_account) -> None:
    store = CredentialStore(transit)
    async with sessionmaker() as s, s.begin():
        for i in range(5):
            await store.store(s, account_id=account.id, name=f"c{i}", kind="generic", secret=SecretStr(f"v{i}"))
        await store.store(s, account_id=other_account.id, name="o", kind="generic", secret=SecretStr("ov"))
        row = (await s.execute(select(Credential).where(Credential.name == "c3"))).scalar_one()
        row.ciphertext = row.ciphertext[:-6] + ("AAAA==" if not row.ciphertext.endswith("AAAA==") else "BBBB==")
    async with sessionmaker() as s:
        mine = await store.verify(s, account_id=account.id)
        everyone = await store.verify(s)
    assert (mine.checked, mine.ok, mine.failed) == (5, 4, 1)
    assert [f.name for f in mine.failures] == ["c3"]
    assert (everyone.checked, everyone.failed) == (6, 1)
    assert "v3" not in json.dumps(mine.model_dump(mode="json"))


async def test_encrypt_while_the_caller_holds_the_sqlite_write_lock(
    sessionmaker, local_transit, account, db_url
) -> None:
    """On SQLite every transaction takes the write lock; the keyring must still be readable from inside one."""
    store = CredentialStore(local_transit)
    with anyio.fail_after(20):  # a deadlock would otherwise wait for the 30 s busy timeout
        async with sessionmaker() as s, s.begin():
            await s.execute(text("UPDATE accounts SET name = name"))  # holds the lock on SQLite
            stored = await store.store(s, account_id=account.id, name="in-txn", kind="generic", secret=SecretStr("x"))
            assert await store.get_plaintext(s, account.id, "in-txn") == b"x"
    assert stored.key_version == 1
