"""The HashiCorp Vault / OpenBao transit backend over hvac: one client per thread, bounded retries,
batch rewrap that inspects every item and halves the batch when the server finds the JSON too complex.

Two credentials, least privilege (policies shipped in `fleet_mcp/vault/policies/`): the runtime token
(encrypt, decrypt, rewrap, read the key's metadata) serves every call; the optional admin credential
(`admin_token` or `admin_role_id` + `admin_secret_id`) is used only to create, rotate, reconfigure and trim
the key. Without an admin credential the runtime one does everything (one all-powerful token).

Retries: idempotent calls (reads, encrypt/decrypt/rewrap, config, trim) are retried on server-side and
connection failures. A rotation is not idempotent: it is sent once; on a failure whose outcome is unknown
the key is read back and the result decided from its latest version (`rotate_to`)."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import hvac
import hvac.exceptions as hx
import requests
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.errors import ExternalError, InvalidArgument, NotFound, PermissionDenied
from fleet_mcp.vault.transit.base import KeyInfo, TransitBackend, TransitItemError, TransitUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRYABLE: tuple[type[BaseException], ...] = (
    hx.RateLimitExceeded,  # 429
    hx.InternalServerError,  # 500
    hx.BadGateway,  # 502
    hx.VaultDown,  # 503 (also: sealed, standby without forwarding)
    hx.PreconditionFailed,  # 412: a performance standby has not caught up yet
    hx.UnexpectedError,  # any other status
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)
_TOO_COMPLEX = "refused JSON input due to high complexity"


class _TooComplex(Exception):
    pass


def _vault_message(exc: BaseException) -> str:
    """hvac's message without the request URL suffix (which is noise in an error for a human)."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)
    text = str(exc)
    return text.split(", on ", 1)[0] if ", on " in text else text


class VaultTransit(TransitBackend):
    kind = "vault"

    def __init__(
        self,
        addr: str,
        *,
        token: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        approle_mount: str = "approle",
        admin_token: str | None = None,
        admin_role_id: str | None = None,
        admin_secret_id: str | None = None,
        namespace: str | None = None,
        cacert: str | None = None,
        skip_verify: bool = False,
        mount: str = "transit",
        key_name: str = "fleet-pepper",
        batch_size: int = 250,
        parallel: int = 4,
        timeout: float = 30.0,
        max_attempts: int = 6,
        backoff: float = 0.25,
        backoff_max: float = 8.0,
    ) -> None:
        if not addr:
            raise InvalidArgument("the vault transit backend needs an address", hint="set VAULT_ADDR")
        if not token and not (role_id and secret_id):
            raise InvalidArgument(
                "the vault transit backend needs a token or an AppRole role_id + secret_id",
                hint="set VAULT_TOKEN, or FLEET_MCP_VAULT_ROLE_ID and FLEET_MCP_VAULT_SECRET_ID",
            )
        self.addr = addr.rstrip("/")
        self.key_name = key_name
        self.mount = mount.strip("/")
        self.batch_size = max(1, batch_size)
        #: Chunks of one batch call in flight at once.
        self.parallel = max(1, parallel)
        self._token = token
        self._role_id = role_id
        self._secret_id = secret_id
        self._approle_mount = approle_mount
        self._admin_token = admin_token
        self._admin_role_id = admin_role_id
        self._admin_secret_id = admin_secret_id
        if admin_role_id and not admin_secret_id:
            raise InvalidArgument(
                "the vault admin AppRole needs both a role_id and a secret_id",
                hint="set FLEET_MCP_VAULT_ADMIN_ROLE_ID and FLEET_MCP_VAULT_ADMIN_SECRET_ID",
            )
        self._namespace = namespace
        self._verify: bool | str = cacert if cacert else not skip_verify
        self._timeout = timeout
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._local = threading.local()
        self._clients: list[hvac.Client] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        auth = "approle" if self._role_id else "token"
        admin = "approle" if self._admin_role_id else ("token" if self._admin_token else "runtime")
        return (
            f"VaultTransit(addr={self.addr!r}, mount={self.mount!r}, key={self.key_name!r}, auth={auth}, "
            f"admin_auth={admin})"
        )

    @property
    def has_admin_credential(self) -> bool:
        return bool(self._admin_token or self._admin_role_id)

    # -- plumbing ----------------------------------------------------------------------------------
    def _creds(self, admin: bool) -> tuple[str | None, str | None, str | None]:
        if admin and self.has_admin_credential:
            return self._admin_token, self._admin_role_id, self._admin_secret_id
        return self._token, self._role_id, self._secret_id

    def _client(self, admin: bool = False) -> hvac.Client:
        attr = "admin_client" if admin and self.has_admin_credential else "client"
        client: hvac.Client | None = getattr(self._local, attr, None)
        if client is None:
            token, role_id, secret_id = self._creds(admin)
            client = hvac.Client(
                url=self.addr,
                token=token,
                verify=self._verify,
                timeout=self._timeout,
                namespace=self._namespace,
            )
            if role_id and secret_id:
                self._login(client, admin)
            setattr(self._local, attr, client)
            with self._lock:
                self._clients.append(client)
        return client

    def _login(self, client: hvac.Client, admin: bool = False) -> None:
        _, role_id, secret_id = self._creds(admin)
        client.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=self._approle_mount)

    def _invoke(self, fn: Callable[[hvac.Client], T], admin: bool = False) -> T:
        client = self._client(admin)
        try:
            return fn(client)
        except hx.Forbidden:
            if not self._creds(admin)[1]:
                raise
            self._login(client, admin)  # the AppRole token may have expired: log in again once
            return fn(client)

    async def _call(self, what: str, fn: Callable[[hvac.Client], T], *, admin: bool = False, retry: bool = True) -> T:
        """Run one hvac call on a worker thread; retry server-side and connection failures with backoff
        (unless `retry` is False: a non-idempotent call is sent once). `admin`: with the admin credential."""
        delay = self._backoff
        last: BaseException | None = None
        attempts = self._max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return await anyio.to_thread.run_sync(self._invoke, fn, admin)
            except hx.InvalidRequest as exc:
                if _TOO_COMPLEX in str(exc):
                    raise _TooComplex() from None
                raise InvalidArgument(f"Vault refused {what}: {_vault_message(exc)}", key=self.key_name) from None
            except hx.Forbidden:
                which = "admin token (FLEET_MCP_VAULT_ADMIN_TOKEN or admin AppRole)" if (
                    admin and self.has_admin_credential
                ) else "runtime token (VAULT_TOKEN or AppRole)"
                raise PermissionDenied(
                    f"Vault denied {what} on {self.mount}/keys/{self.key_name} to the {which}",
                    hint="check that credential's policy for the transit key "
                    "(shipped examples: fleet_mcp/vault/policies/*.hcl)",
                ) from None
            except hx.Unauthorized:
                raise ExternalError(
                    f"Vault rejected the credentials for {what}",
                    hint="check VAULT_TOKEN or the AppRole settings",
                ) from None
            except hx.InvalidPath:
                raise NotFound(
                    f"Vault has no transit key {self.key_name!r} at mount {self.mount!r} ({what})",
                    hint="enable the transit engine at that mount and call ensure_key()",
                    key=self.key_name,
                ) from None
            except _RETRYABLE as exc:
                last = exc
                if attempt == attempts:
                    break
                log.warning(
                    "vault %s failed (attempt %d/%d): %s",
                    what,
                    attempt,
                    attempts,
                    type(exc).__name__,
                )
                await anyio.sleep(min(delay, self._backoff_max) * random.uniform(0.5, 1.0))
                delay *= 2
        reason = _vault_message(last) if isinstance(last, hx.VaultError) else type(last).__name__
        raise TransitUnavailable(
            f"Vault at {self.addr} is unreachable or failing ({what}: {reason}) after {attempts} attempt"
            f"{'s' if attempts != 1 else ''}",
            hint="check that Vault/OpenBao is running, unsealed and reachable; then retry or resume the job",
            addr=self.addr,
        )

    def _path(self, action: str) -> str:
        return f"/v1/{self.mount}/{action}/{self.key_name}"

    # -- key management ----------------------------------------------------------------------------
    async def ensure_key(self, *, session: AsyncSession | None = None) -> KeyInfo:
        try:
            return await self.read_key()
        except NotFound:
            pass
        # Creating an existing key changes nothing (Vault answers 204): safe to retry.
        await self._call(
            "create key",
            lambda c: c.adapter.post(f"/v1/{self.mount}/keys/{self.key_name}", json={"type": "aes256-gcm96"}),
            admin=True,
        )
        return await self.read_key()

    async def read_key(self, *, session: AsyncSession | None = None) -> KeyInfo:
        resp: Any = await self._call("read key", lambda c: c.adapter.get(f"/v1/{self.mount}/keys/{self.key_name}"))
        return _key_info(self.key_name, resp)

    async def rotate(self, *, session: AsyncSession | None = None) -> int:
        """One POST, never retried (each one adds a version). See `rotate_to` for a rotation that survives
        a lost answer."""
        await self._call(
            "rotate", lambda c: c.adapter.post(f"/v1/{self.mount}/keys/{self.key_name}/rotate"), admin=True, retry=False
        )
        return (await self.read_key()).latest_version

    async def rotate_to(self, target: int, *, session: AsyncSession | None = None) -> tuple[int, bool]:
        """At most one rotation to reach `target`. After a failed POST the outcome is unknown (the answer may
        have been lost after Vault rotated): read the key and decide. Rotated → adopt. Not rotated → send
        again, except after a timeout (the request may still be running on the server: pause instead, and a
        resume decides from the key)."""
        key = await self.read_key()
        if key.latest_version >= target:
            return key.latest_version, False
        self._check_behind(key, target)
        delay = self._backoff
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await self.rotate(), True
            except TransitUnavailable as exc:
                key = await self.read_key()  # retried: reads are idempotent
                if key.latest_version >= target:
                    log.warning("vault rotate answered an error but the key reached v%d: adopted", key.latest_version)
                    return key.latest_version, True
                if "Timeout" in exc.message or attempt == self._max_attempts:
                    raise
                await anyio.sleep(min(delay, self._backoff_max) * random.uniform(0.5, 1.0))
                delay *= 2
        raise AssertionError("unreachable")

    async def set_min_versions(
        self,
        *,
        min_decryption: int | None = None,
        min_encryption: int | None = None,
        session: AsyncSession | None = None,
    ) -> KeyInfo:
        body: dict[str, int] = {}
        if min_decryption is not None:
            body["min_decryption_version"] = min_decryption
        if min_encryption is not None:
            body["min_encryption_version"] = min_encryption
        if body:
            # hvac's own parameter check wrongly refuses min_encryption == min_decryption: post directly.
            await self._call(
                "update key config",
                lambda c: c.adapter.post(f"/v1/{self.mount}/keys/{self.key_name}/config", json=body),
                admin=True,
            )
        return await self.read_key()

    async def trim(self, min_available_version: int, *, session: AsyncSession | None = None) -> KeyInfo:
        await self._call(
            "trim",
            lambda c: c.adapter.post(
                f"/v1/{self.mount}/keys/{self.key_name}/trim",
                json={"min_available_version": min_available_version},
            ),
            admin=True,
        )
        return await self.read_key()

    # -- data --------------------------------------------------------------------------------------
    async def _batched(
        self, what: str, items: list[dict[str, str]], action: str, *, fail_400_per_item: bool
    ) -> list[dict[str, Any]]:
        """POST items in chunks of `batch_size`, up to `parallel` chunks at once (each on its own worker thread
        and connection, so the server works on them side by side); halve the chunk when the server finds it
        too complex, and send again from the first chunk it refused."""
        out: list[dict[str, Any]] = []
        i = 0
        while i < len(items):
            size = self.batch_size
            chunks = [items[j : j + size] for j in range(i, min(len(items), i + size * self.parallel), size)]
            answers: list[Any] = [None] * len(chunks)
            if len(chunks) == 1:
                await self._send(what, action, chunks[0], fail_400_per_item, answers, 0)
            else:
                async with anyio.create_task_group() as tg:
                    for k, chunk in enumerate(chunks):
                        tg.start_soon(self._send, what, action, chunk, fail_400_per_item, answers, k)
            for chunk, results in zip(chunks, answers, strict=True):
                if isinstance(results, _TooComplex):
                    if self.batch_size == 1:
                        raise InvalidArgument(f"Vault refused a single-item {what} as too complex") from None
                    if self.batch_size == size:
                        self.batch_size = max(1, size // 2)
                        log.info("vault %s: batch too complex, halving to %d", what, self.batch_size)
                    break
                if isinstance(results, BaseException):
                    raise results
                if len(results) != len(chunk):
                    raise ExternalError(f"Vault answered {len(results)} results for {len(chunk)} {what} items")
                out.extend(results)
                i += len(chunk)
        return out

    async def _send(
        self, what: str, action: str, chunk: list[dict[str, str]], per_item_400: bool, answers: list[Any], k: int
    ) -> None:
        """One chunk's request; its results or its exception go to answers[k] (raised from a task group,
        the exception would arrive wrapped in an ExceptionGroup)."""
        try:
            answers[k] = await self._call(what, lambda c: _post_batch(c, self._path(action), chunk, per_item_400))
        except Exception as exc:
            answers[k] = exc

    async def encrypt_batch(self, plaintexts: Sequence[bytes]) -> list[str]:
        import base64

        items = [{"plaintext": base64.b64encode(bytes(p)).decode("ascii")} for p in plaintexts]
        results = await self._batched("encrypt", items, "encrypt", fail_400_per_item=True)
        out: list[str] = []
        for r in results:
            if r.get("error"):
                raise ExternalError(f"Vault refused to encrypt an item: {r['error']}", key=self.key_name)
            out.append(r["ciphertext"])
        return out

    async def decrypt_batch(self, ciphertexts: Sequence[str]) -> list[bytes | TransitItemError]:
        import base64

        items = [{"ciphertext": c} for c in ciphertexts]
        results = await self._batched("decrypt", items, "decrypt", fail_400_per_item=True)
        return [
            TransitItemError(str(r["error"])) if r.get("error") else base64.b64decode(r.get("plaintext") or "")
            for r in results
        ]

    async def rewrap_batch(self, ciphertexts: Sequence[str]) -> list[str | TransitItemError]:
        items = [{"ciphertext": c} for c in ciphertexts]
        # Rewrap answers 200 even when items fail: every item's `error` must be looked at.
        results = await self._batched("rewrap", items, "rewrap", fail_400_per_item=True)
        return [TransitItemError(str(r["error"])) if r.get("error") else str(r["ciphertext"]) for r in results]

    async def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.adapter.close()
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass


def _post_batch(
    client: hvac.Client, path: str, chunk: list[dict[str, str]], per_item_400: bool
) -> list[dict[str, Any]]:
    try:
        resp: Any = client.adapter.post(path, json={"batch_input": chunk})
    except hx.InvalidRequest as exc:
        # Batch encrypt/decrypt answer 400 when any item fails; the per-item results are in the body.
        body = getattr(exc, "json", None)
        results = (body or {}).get("data", {}).get("batch_results") if isinstance(body, dict) else None
        if per_item_400 and isinstance(results, list) and len(results) == len(chunk):
            return results
        raise
    return list(resp["data"]["batch_results"])


def _key_info(name: str, resp: Any) -> KeyInfo:
    data = resp["data"]
    return KeyInfo(
        name=name,
        latest_version=int(data["latest_version"]),
        min_decryption_version=int(data["min_decryption_version"]),
        min_encryption_version=int(data.get("min_encryption_version") or 0),
        min_available_version=int(data.get("min_available_version") or 0),
        versions=sorted(int(k) for k in (data.get("keys") or {})),
    )
