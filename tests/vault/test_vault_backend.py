"""The Vault/OpenBao backend's own promises against a real server: auth, TLS, retries, batch halving."""

from __future__ import annotations

import pytest

from fleet_mcp.errors import PermissionDenied
from fleet_mcp.vault.transit import TransitUnavailable, ciphertext_version
from fleet_mcp.vault.transit.vault import VaultTransit
from tests.vault.bao_server import OpenBaoServer, free_port, need_bao, vault_transit

pytestmark = [pytest.mark.anyio, pytest.mark.openbao]


async def test_unreachable_vault_is_a_clear_error_after_bounded_retries() -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    t = VaultTransit(addr, token="x", max_attempts=3, backoff=0.01, backoff_max=0.02, timeout=2)
    with pytest.raises(TransitUnavailable) as exc:
        await t.rewrap_batch(["vault:v1:AAAA"])
    assert addr in exc.value.message and "after 3 attempts" in exc.value.message
    assert "resume" in (exc.value.hint or "")
    await t.close()


async def test_sealed_vault_is_unavailable_until_unsealed(openbao: OpenBaoServer) -> None:
    t = vault_transit(openbao, max_attempts=2, backoff=0.01)
    await t.ensure_key()
    ct = await t.encrypt(b"x")
    openbao.seal()
    try:
        with pytest.raises(TransitUnavailable, match="sealed"):
            await t.decrypt(ct)
    finally:
        openbao.unseal()
    assert await t.decrypt(ct) == b"x"  # a seal keeps the keys; only a dev restart loses them
    await t.close()


async def test_big_batches_halve_on_too_complex(openbao: OpenBaoServer) -> None:
    t = vault_transit(openbao, batch_size=1000)
    await t.ensure_key()
    cts = await t.encrypt_batch([i.to_bytes(2, "big") for i in range(1100)])
    assert t.batch_size == 250  # 1000 and 500 items exceed OpenBao's 1000-string JSON limit
    await t.rotate()
    out = await t.rewrap_batch(cts)
    assert [ciphertext_version(c) for c in out] == [2] * 1100  # type: ignore[arg-type]
    await t.close()


async def test_approle_login_and_policy(openbao: OpenBaoServer) -> None:
    root = openbao.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    key = "approle-pepper"
    root.sys.create_or_update_policy(
        name="pepper",
        policy=f"""
path "transit/keys/{key}" {{ capabilities = ["create", "read", "update"] }}
path "transit/keys/{key}/*" {{ capabilities = ["create", "read", "update"] }}
path "transit/encrypt/{key}" {{ capabilities = ["update"] }}
path "transit/decrypt/{key}" {{ capabilities = ["update"] }}
path "transit/rewrap/{key}" {{ capabilities = ["update"] }}
""",
    )
    root.auth.approle.create_or_update_approle("fleet", token_policies=["pepper"], token_ttl="10m")
    role_id = root.auth.approle.read_role_id("fleet")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("fleet")["data"]["secret_id"]
    t = VaultTransit(openbao.addr, role_id=role_id, secret_id=secret_id, key_name=key, max_attempts=2)
    assert (await t.ensure_key()).latest_version == 1
    assert await t.decrypt(await t.encrypt(b"via approle")) == b"via approle"
    assert secret_id not in repr(t) and role_id not in repr(t)
    other = VaultTransit(openbao.addr, role_id=role_id, secret_id=secret_id, key_name="not-allowed", max_attempts=2)
    with pytest.raises(PermissionDenied, match="denied"):
        await other.encrypt(b"x")
    await t.close()
    await other.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
async def test_tls_with_ca_file() -> None:
    server = OpenBaoServer(need_bao(), dev=True, tls=True)
    try:
        server.start()
        good = VaultTransit(server.addr, token="root", cacert=str(server.ca_file), key_name="tls", max_attempts=2)
        assert (await good.ensure_key()).latest_version == 1
        untrusted = VaultTransit(server.addr, token="root", key_name="tls", max_attempts=2, backoff=0.01)
        with pytest.raises(TransitUnavailable, match="SSLError"):
            await untrusted.read_key()
        skip = VaultTransit(server.addr, token="root", skip_verify=True, key_name="tls", max_attempts=2)
        assert (await skip.read_key()).latest_version == 1
        for t in (good, untrusted, skip):
            await t.close()
    finally:
        server.cleanup()


async def test_rate_limited_requests_are_retried_with_backoff(openbao: OpenBaoServer) -> None:
    """A rate-limit quota makes OpenBao answer 429; bounded retries with backoff ride it out."""
    root = openbao.client()
    impatient = vault_transit(openbao, key_name="rate-limited", max_attempts=1)
    patient = vault_transit(openbao, key_name="rate-limited", max_attempts=8, backoff=0.2, backoff_max=1.0)
    await patient.ensure_key()
    root.write_data("sys/quotas/rate-limit/pepper-test", data={"path": "transit/", "rate": 5, "interval": "1s"})
    try:
        refused = 0
        for _ in range(12):
            try:
                await impatient.encrypt(b"x")
            except TransitUnavailable as exc:
                assert "rate limit quota exceeded" in exc.message
                refused += 1
        assert refused > 0
        results = [await patient.encrypt(b"y") for _ in range(12)]
        assert all(ciphertext_version(c) == 1 for c in results)
    finally:
        root.adapter.delete("/v1/sys/quotas/rate-limit/pepper-test")
    await impatient.close()
    await patient.close()
