"""The embedded transit backend: a versioned AES-256-GCM keyring in the database, wrapped by a master key.

It keeps Vault's rules (min decryption/encryption versions, trim) and its ciphertext format, and owns
its transactions: like an external Vault, a key change commits on its own, whatever the caller's unit
of work does. Unwrapped key versions are cached in memory; the key's settings are re-read on every call
so several processes sharing the database agree on the latest version and the policy.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import anyio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Select, delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from fleet_mcp.db import sqlite_inline
from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import ExternalError, InvalidArgument, NotFound
from fleet_mcp.vault.models import TransitKeyConfig, TransitKeyVersion
from fleet_mcp.vault.transit.base import TOO_OLD, KeyInfo, TransitBackend, TransitItemError
from fleet_mcp.vault.transit.ciphertext import PREFIX

_NONCE = 12
_TAG = 16
#: Batches at least this long are rewrapped on a worker thread (a thread hop costs about 50 rows).
_THREAD_AT = 256


class _Config(NamedTuple):
    latest: int
    min_dec: int
    min_enc: int
    min_avail: int


class LocalTransit(TransitBackend):
    kind = "local"

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        master_key: bytes,
        *,
        key_name: str = "fleet-pepper",
    ) -> None:
        if len(master_key) != 32:
            raise InvalidArgument("the local transit master key must be 32 bytes")
        self._sm = sessionmaker
        self._master = AESGCM(master_key)
        self.key_name = key_name
        self._keys: dict[int, AESGCM] = {}
        self._reader: AsyncEngine | None = None
        self._own_reader = False
        self._conn: AsyncConnection | None = None  # SQLite: one autocommit reader connection, reused
        self._conn_lock = anyio.Lock()
        t = TransitKeyConfig
        self._config_stmt = select(
            t.latest_version, t.min_decryption_version, t.min_encryption_version, t.min_available_version
        ).where(t.name == key_name)

    def __repr__(self) -> str:
        return f"LocalTransit(key={self.key_name!r}, cached_versions={sorted(self._keys)})"

    # -- storage -----------------------------------------------------------------------------------
    def _reader_engine(self) -> AsyncEngine:
        """An engine for lock-free reads. On SQLite the app's engine opens every transaction IMMEDIATE
        (taking the write lock); reading the keyring must not wait for a caller's open unit of work."""
        if self._reader is not None:
            return self._reader
        bind = self._sm.kw.get("bind")
        if not isinstance(bind, AsyncEngine):
            raise ExternalError("the local transit needs a sessionmaker bound to an AsyncEngine")
        url = bind.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            # Autocommit reads only: nothing to roll back when a connection returns to the pool. The same
            # driver as the app's engine (which may run statements inline instead of on a thread per
            # connection); the driver's `timeout` covers a busy database.
            reader = create_async_engine(
                url, pool_reset_on_return=None, **sqlite_inline.engine_options(url, sqlite_inline.driver_of(bind))
            )
            self._reader, self._own_reader = reader, True
        else:
            self._reader = bind
        return self._reader

    async def _read(self, stmt: Select[Any, Any] | Select[Any, Any, Any, Any]) -> list[Any]:
        engine = self._reader_engine()
        keep = self._own_reader or engine.dialect.name == "postgresql"
        if not keep:
            async with engine.connect() as conn:
                return list((await conn.execute(stmt)).all())
        # One connection kept for these reads, which run once per batch call: a pool checkout (with its
        # pre-ping) and a BEGIN/ROLLBACK pair cost more than the query. On PostgreSQL it is in autocommit
        # mode; a kept connection that went stale is replaced once.
        async with self._conn_lock:
            while True:
                fresh = self._conn is None
                if self._conn is None:
                    conn = await engine.connect()
                    if not self._own_reader:
                        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    self._conn = conn
                try:
                    return list((await self._conn.execute(stmt)).all())
                except Exception as exc:
                    conn, self._conn = self._conn, None
                    await conn.close()
                    if fresh or not isinstance(exc, DBAPIError):
                        raise

    async def _config(self) -> _Config:
        rows = await self._read(self._config_stmt)
        row = rows[0] if rows else None
        if row is None:
            raise NotFound(
                f"transit key {self.key_name!r} does not exist",
                hint="call ensure_key() at start",
                key=self.key_name,
            )
        return _Config(*row)

    async def _load(self, versions: set[int]) -> None:
        missing = versions - self._keys.keys()
        if not missing:
            return
        t = TransitKeyVersion
        rows = await self._read(
            select(t.version, t.wrapped_key).where(t.key_name == self.key_name, t.version.in_(missing))
        )
        for version, wrapped in rows:
            self._keys[version] = AESGCM(self._unwrap(version, bytes(wrapped)))

    def _aad(self, version: int) -> bytes:
        return f"fleet-mcp transit key {self.key_name} v{version}".encode()

    def _wrap(self, version: int, key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._master.encrypt(nonce, key, self._aad(version))

    def _unwrap(self, version: int, wrapped: bytes) -> bytes:
        try:
            return self._master.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], self._aad(version))
        except InvalidTag:
            raise ExternalError(
                f"the master key cannot unwrap version {version} of transit key {self.key_name!r}",
                hint="the master key file or setting is not the one this database's keyring was created with",
                key=self.key_name,
                version=version,
            ) from None

    def _info(self, cfg: _Config) -> KeyInfo:
        return KeyInfo(
            name=self.key_name,
            latest_version=cfg.latest,
            min_decryption_version=cfg.min_dec,
            min_encryption_version=cfg.min_enc,
            min_available_version=cfg.min_avail,
            versions=list(range(cfg.min_dec, cfg.latest + 1)),
        )

    # -- key management ----------------------------------------------------------------------------
    async def ensure_key(self) -> KeyInfo:
        try:
            return await self.read_key()
        except NotFound:
            pass
        try:
            async with self._sm() as s, s.begin():
                s.add(
                    TransitKeyConfig(
                        name=self.key_name,
                        latest_version=1,
                        min_decryption_version=1,
                        min_encryption_version=0,
                        min_available_version=0,
                    )
                )
                await s.flush()
                s.add(
                    TransitKeyVersion(
                        key_name=self.key_name, version=1, wrapped_key=self._wrap(1, AESGCM.generate_key(256))
                    )
                )
        except IntegrityError:  # created concurrently by another process
            pass
        return await self.read_key()

    async def read_key(self) -> KeyInfo:
        return self._info(await self._config())

    async def rotate(self) -> int:
        t = TransitKeyConfig
        key = AESGCM.generate_key(256)
        async with self._sm() as s, s.begin():
            new = (
                await s.execute(
                    update(t)
                    .where(t.name == self.key_name)
                    .values(latest_version=t.latest_version + 1, updated_at=utcnow())
                    .returning(t.latest_version)
                )
            ).scalar_one_or_none()
            if new is None:
                raise NotFound(f"transit key {self.key_name!r} does not exist", key=self.key_name)
            s.add(TransitKeyVersion(key_name=self.key_name, version=new, wrapped_key=self._wrap(new, key)))
        self._keys[new] = AESGCM(key)
        return new

    async def _locked_config(self, s: AsyncSession) -> TransitKeyConfig:
        cfg = (
            await s.execute(select(TransitKeyConfig).where(TransitKeyConfig.name == self.key_name).with_for_update())
        ).scalar_one_or_none()
        if cfg is None:
            raise NotFound(f"transit key {self.key_name!r} does not exist", key=self.key_name)
        return cfg

    @asynccontextmanager
    async def _unit(self, session: AsyncSession | None) -> AsyncIterator[AsyncSession]:
        """Our own transaction, or (when given) a savepoint in the caller's unit of work."""
        if session is None:
            async with self._sm() as s, s.begin():
                yield s
        else:
            async with session.begin_nested():
                yield session

    async def set_min_versions(
        self,
        *,
        min_decryption: int | None = None,
        min_encryption: int | None = None,
        session: AsyncSession | None = None,
    ) -> KeyInfo:
        def refuse(msg: str) -> InvalidArgument:
            return InvalidArgument(msg, key=self.key_name)

        async with self._unit(session) as s:
            cfg = await self._locked_config(s)
            latest, avail = cfg.latest_version, cfg.min_available_version
            min_dec, min_enc = cfg.min_decryption_version, cfg.min_encryption_version
            if min_decryption is not None:
                if min_decryption < 0:
                    raise refuse("min decryption version cannot be negative")
                if min_decryption > latest:
                    raise refuse(
                        f"cannot set min decryption version of {min_decryption}, latest key version is {latest}"
                    )
                min_dec = max(min_decryption, 1)  # 0 means "all versions", as in Vault
                if min_dec < avail:
                    raise refuse("min decryption version should not be less than min available version")
            if min_encryption is not None:
                if min_encryption < 0:
                    raise refuse("min encryption version cannot be negative")
                if min_encryption > latest:
                    raise refuse(
                        f"cannot set min encryption version of {min_encryption}, latest key version is {latest}"
                    )
                if avail > 0 and min_encryption < avail:
                    raise refuse("min encryption version should not be less than min available version")
                min_enc = min_encryption
            if min_enc > 0 and min_enc < min_dec:
                raise refuse(
                    f"cannot set min encryption/decryption values; min encryption version of {min_enc} "
                    f"must be greater than or equal to min decryption version of {min_dec}"
                )
            cfg.min_decryption_version, cfg.min_encryption_version = min_dec, min_enc
            cfg.updated_at = utcnow()
            result = _Config(latest, min_dec, min_enc, avail)
        return self._info(result)

    async def trim(self, min_available_version: int, *, session: AsyncSession | None = None) -> KeyInfo:
        n = min_available_version

        def refuse(msg: str) -> InvalidArgument:
            return InvalidArgument(msg, key=self.key_name)

        async with self._unit(session) as s:
            cfg = await self._locked_config(s)
            if n <= 0:
                raise refuse("minimum available version should be positive")
            if n < cfg.min_available_version:
                raise refuse("minimum available version cannot be decremented")
            if cfg.min_encryption_version == 0:
                raise refuse("minimum available version cannot be set when minimum encryption version is not set")
            if n > cfg.min_encryption_version:
                raise refuse("minimum available version cannot be greater than minimum encryption version")
            if n > cfg.min_decryption_version:
                raise refuse("minimum available version cannot be greater than minimum decryption version")
            await s.execute(
                delete(TransitKeyVersion).where(
                    TransitKeyVersion.key_name == self.key_name, TransitKeyVersion.version < n
                )
            )
            cfg.min_available_version = n
            cfg.updated_at = utcnow()
            result = _Config(cfg.latest_version, cfg.min_decryption_version, cfg.min_encryption_version, n)
        for v in [v for v in self._keys if v < n]:
            del self._keys[v]
        return self._info(result)

    # -- data --------------------------------------------------------------------------------------
    async def _keys_for(self, cfg: _Config) -> dict[int, AESGCM]:
        """Every version that may decrypt (usually two), loaded once and then served from memory."""
        await self._load(set(range(max(cfg.min_dec, 1), cfg.latest + 1)))
        return self._keys

    async def encrypt_batch(self, plaintexts: Sequence[bytes]) -> list[str]:
        cfg = await self._config()
        aes = (await self._keys_for(cfg))[cfg.latest]
        prefix = f"{PREFIX}{cfg.latest}:"
        rnd = os.urandom(_NONCE * len(plaintexts))
        b2a = binascii.b2a_base64
        out: list[str] = []
        for i, pt in enumerate(plaintexts):
            nonce = rnd[i * _NONCE : (i + 1) * _NONCE]
            out.append(prefix + b2a(nonce + aes.encrypt(nonce, bytes(pt), None), newline=False).decode("ascii"))
        return out

    async def decrypt_batch(self, ciphertexts: Sequence[str]) -> list[bytes | TransitItemError]:
        cfg = await self._config()
        return _open_all(ciphertexts, cfg, await self._keys_for(cfg))

    async def rewrap_batch(self, ciphertexts: Sequence[str]) -> list[str | TransitItemError]:
        cfg = await self._config()
        keys = await self._keys_for(cfg)
        if len(ciphertexts) < _THREAD_AT:
            return _rewrap_all(ciphertexts, cfg, keys)
        # A rotation's page: on a worker thread, so the event loop keeps driving the database meanwhile.
        return await anyio.to_thread.run_sync(_rewrap_all, ciphertexts, cfg, dict(keys))

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
        if self._own_reader and self._reader is not None:
            await self._reader.dispose()
        self._reader = None
        self._own_reader = False
        self._keys.clear()


def _rewrap_all(ciphertexts: Sequence[str], cfg: _Config, keys: dict[int, AESGCM]) -> list[str | TransitItemError]:
    """Decrypt, then encrypt under the latest version: the plaintexts never leave this function."""
    plaintexts = _open_all(ciphertexts, cfg, keys)
    enc = keys[cfg.latest]
    prefix = f"{PREFIX}{cfg.latest}:"
    rnd = os.urandom(_NONCE * len(plaintexts))
    b2a = binascii.b2a_base64
    out: list[str | TransitItemError] = []
    for i, pt in enumerate(plaintexts):
        if isinstance(pt, TransitItemError):
            out.append(pt)
            continue
        nonce = rnd[i * _NONCE : (i + 1) * _NONCE]
        out.append(prefix + b2a(nonce + enc.encrypt(nonce, pt, None), newline=False).decode("ascii"))
    return out


def _open_all(ciphertexts: Sequence[str], cfg: _Config, keys: dict[int, AESGCM]) -> list[bytes | TransitItemError]:
    """Decrypt many ciphertexts: a tight loop for well-formed ones (the rotation's hot path); anything
    unusual falls back to `_parse`/`_open`, which name the problem the way Vault does."""
    a2b = binascii.a2b_base64
    lo, hi = cfg.min_dec, cfg.latest
    out: list[bytes | TransitItemError] = []
    # The `vault:vN:` prefix of the last good ciphertext, its length and key: a page is usually all one
    # version, so most items skip parsing the version.
    last, cut, last_key = "\0", 0, None
    for ct in ciphertexts:
        if ct.startswith(last):
            try:
                raw = a2b(ct[cut:], strict_mode=True)
                assert last_key is not None
                out.append(last_key.decrypt(raw[:_NONCE], raw[_NONCE:], None))
                continue
            except Exception:  # noqa: S110 - the paths below report what is wrong
                pass
        try:
            if ct.startswith(PREFIX):
                head, sep, body = ct[len(PREFIX) :].partition(":")
                version = int(head)
                if sep and lo <= version <= hi and version > 0:
                    raw = a2b(body, strict_mode=True)
                    out.append(keys[version].decrypt(raw[:_NONCE], raw[_NONCE:], None))
                    last, last_key = f"{PREFIX}{head}:", keys[version]
                    cut = len(last)
                    continue
        except Exception:  # noqa: S110 - the slow path below reports what is wrong
            pass
        parsed = _parse(ct, cfg)
        out.append(parsed if isinstance(parsed, TransitItemError) else _open(keys, *parsed))
    return out


def _parse(ct: str, cfg: _Config) -> tuple[int, bytes] | TransitItemError:
    """Split a ciphertext the way Vault does, with Vault's error texts."""
    if not ct:
        return TransitItemError("missing ciphertext to decrypt")
    if not ct.startswith(PREFIX):
        return TransitItemError("invalid ciphertext: no prefix")
    parts = ct.split(":", 2)
    if len(parts) != 3:
        return TransitItemError("invalid ciphertext: wrong number of fields")
    try:
        version = int(parts[1][1:])
    except ValueError:
        return TransitItemError("invalid ciphertext: version number could not be decoded")
    if version == 0:
        version = 1
    if version < cfg.min_dec:
        return TransitItemError(TOO_OLD)
    if version > cfg.latest:
        return TransitItemError("invalid ciphertext: version is too new")
    try:
        raw = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError):
        return TransitItemError("invalid ciphertext: could not decode base64")
    if len(raw) < _NONCE:
        return TransitItemError("invalid ciphertext length")
    return version, raw


def _open(keys: dict[int, AESGCM], version: int, raw: bytes) -> bytes | TransitItemError:
    aes = keys.get(version)
    if aes is None:
        return TransitItemError("invalid ciphertext: key version not found")
    if len(raw) < _NONCE + _TAG:
        return TransitItemError("cipher: message authentication failed")
    try:
        return aes.decrypt(raw[:_NONCE], raw[_NONCE:], None)
    except InvalidTag:
        return TransitItemError("cipher: message authentication failed")
