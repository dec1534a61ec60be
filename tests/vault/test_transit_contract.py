"""One contract, two backends: the local keyring must behave like a real OpenBao transit key."""

from __future__ import annotations

import base64
import re

import pytest

from fleet_mcp.errors import InvalidArgument
from fleet_mcp.vault.transit import (
    CiphertextRejected,
    TransitBackend,
    TransitItemError,
    ciphertext_version,
)
from tests.vault.vault_helpers import rotate_key, set_min, trim_key

pytestmark = pytest.mark.anyio

CT_RE = re.compile(r"^vault:v(\d+):([A-Za-z0-9+/]+={0,2})$")


def raw(ct: str) -> bytes:
    m = CT_RE.match(ct)
    assert m, ct
    return base64.b64decode(m.group(2))


def tamper(ct: str) -> str:
    prefix, body = ct.rsplit(":", 1)
    data = bytearray(base64.b64decode(body))
    data[-1] ^= 0x01
    return f"{prefix}:{base64.b64encode(bytes(data)).decode()}"


async def test_new_key_and_idempotent_ensure(contract_transit: TransitBackend) -> None:
    info = await contract_transit.read_key()
    assert (
        info.latest_version,
        info.min_decryption_version,
        info.min_encryption_version,
        info.min_available_version,
    ) == (1, 1, 0, 0)
    assert info.versions == [1]
    again = await contract_transit.ensure_key()
    assert again.latest_version == 1


async def test_roundtrip_format_and_randomized(contract_transit: TransitBackend) -> None:
    plaintexts = [b"hunter2", b"", bytes(range(256)), "päss wörd".encode()]
    cts = await contract_transit.encrypt_batch(plaintexts)
    for pt, ct in zip(plaintexts, cts, strict=True):
        assert ciphertext_version(ct) == 1
        assert len(raw(ct)) == 12 + len(pt) + 16
    assert await contract_transit.decrypt_batch(cts) == plaintexts
    again = await contract_transit.encrypt_batch(plaintexts)
    assert set(again).isdisjoint(cts)  # fresh nonce every time
    assert await contract_transit.decrypt(await contract_transit.encrypt(b"one")) == b"one"


async def test_rotate_rewrap_and_rewrap_is_not_byte_idempotent(contract_transit: TransitBackend) -> None:
    t = contract_transit
    v1 = await t.encrypt_batch([b"a", b"b"])
    assert await rotate_key(t) == 2
    info = await t.read_key()
    assert info.latest_version == 2 and info.versions == [1, 2]
    assert ciphertext_version(await t.encrypt(b"c")) == 2
    assert await t.decrypt_batch(v1) == [b"a", b"b"]  # old versions still decrypt
    v2 = await t.rewrap_batch(v1)
    assert all(isinstance(c, str) and ciphertext_version(c) == 2 for c in v2)
    assert await t.decrypt_batch(v2) == [b"a", b"b"]
    # Rewrapping a ciphertext already at the latest version yields new bytes at the same version.
    v2b = await t.rewrap_batch(v2)
    assert v2b != v2 and [ciphertext_version(c) for c in v2b] == [2, 2]
    assert await t.rewrap(v1[0]) != v2[0]


async def test_batch_items_fail_alone(contract_transit: TransitBackend) -> None:
    t = contract_transit
    good = await t.encrypt(b"good")
    batch = [
        good,
        "garbage",
        "vault:v1:AAAA",
        "vault:v9:" + base64.b64encode(b"x" * 40).decode(),
        tamper(good),
        "vault:vX:AAAA",
        "vault:v1:!!!",
        "",
        good,
    ]
    for results in (await t.decrypt_batch(batch), await t.rewrap_batch(batch)):
        assert len(results) == len(batch)
        ok = [i for i, r in enumerate(results) if not isinstance(r, TransitItemError)]
        assert ok == [0, 8]
        msgs = [r.message for r in results if isinstance(r, TransitItemError)]
        for expected, got in zip(
            [
                "no prefix",
                "invalid ciphertext length",
                "version is too new",
                "message authentication failed",
                "version number could not be decoded",
                "could not decode base64",
                "missing ciphertext",
            ],
            msgs,
            strict=True,
        ):
            assert expected in got
    with pytest.raises(CiphertextRejected, match="authentication failed"):
        await t.decrypt(tamper(good))


async def test_min_decryption_version_rules(contract_transit: TransitBackend) -> None:
    t = contract_transit
    old = await t.encrypt(b"old")
    await rotate_key(t)
    with pytest.raises(InvalidArgument, match="latest key version is 2"):
        await set_min(t, min_decryption=3)
    with pytest.raises(InvalidArgument, match="negative"):
        await set_min(t, min_decryption=-1)
    info = await set_min(t, min_decryption=2)
    assert info.min_decryption_version == 2 and info.versions == [2]
    [res] = await t.decrypt_batch([old])
    assert isinstance(res, TransitItemError) and res.too_old
    assert "disallowed by policy (too old)" in res.message
    [res] = await t.rewrap_batch([old])
    assert isinstance(res, TransitItemError) and res.too_old
    with pytest.raises(CiphertextRejected, match="too old"):
        await t.decrypt(old)
    # Before a trim the old version still exists: lowering the minimum makes it readable again.
    await set_min(t, min_decryption=1)
    assert await t.decrypt(old) == b"old"


async def test_min_encryption_version_rules(contract_transit: TransitBackend) -> None:
    t = contract_transit
    await rotate_key(t)
    with pytest.raises(InvalidArgument, match="latest key version is 2"):
        await set_min(t, min_encryption=3)
    await set_min(t, min_decryption=2)
    with pytest.raises(InvalidArgument, match="greater than or equal to min decryption version"):
        await set_min(t, min_encryption=1)
    info = await set_min(t, min_decryption=2, min_encryption=2)
    assert (info.min_decryption_version, info.min_encryption_version) == (2, 2)
    # Raising min_decryption above min_encryption is refused too.
    await rotate_key(t)
    with pytest.raises(InvalidArgument, match="greater than or equal"):
        await set_min(t, min_decryption=3)


async def test_trim_rules_and_irreversibility(contract_transit: TransitBackend) -> None:
    t = contract_transit
    old = await t.encrypt(b"old")
    await rotate_key(t)
    await rotate_key(t)
    with pytest.raises(InvalidArgument, match="minimum encryption version is not set"):
        await trim_key(t, 2)
    await set_min(t, min_decryption=2, min_encryption=2)
    with pytest.raises(InvalidArgument, match="should be positive"):
        await trim_key(t, 0)
    with pytest.raises(InvalidArgument, match="greater than"):
        await trim_key(t, 3)  # above min_encryption (and min_decryption)
    info = await trim_key(t, 2)
    assert info.min_available_version == 2 and info.versions == [2, 3]
    with pytest.raises(InvalidArgument, match="decremented"):
        await trim_key(t, 1)
    with pytest.raises(InvalidArgument, match="less th"):
        await set_min(t, min_decryption=1)  # version 1 is gone for good
    with pytest.raises(CiphertextRejected, match="too old"):
        await t.decrypt(old)
    fresh = await t.encrypt(b"new")
    assert ciphertext_version(fresh) == 3 and await t.decrypt(fresh) == b"new"


async def test_large_batches(contract_transit: TransitBackend) -> None:
    t = contract_transit
    pts = [i.to_bytes(4, "big") * 8 for i in range(1200)]
    cts = await t.encrypt_batch(pts)
    await rotate_key(t)
    wrapped = await t.rewrap_batch(cts)
    assert all(isinstance(c, str) and ciphertext_version(c) == 2 for c in wrapped)
    assert await t.decrypt_batch(wrapped) == pts
