"""The running application: settings, database, transit backend, policy, and the stdio caller."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fleet_mcp import audit, principals
from fleet_mcp.admission import Admission
from fleet_mcp.db import migrate
from fleet_mcp.db.engine import create_engine, is_sqlite, make_sessionmaker
from fleet_mcp.db.uow import UnitOfWork, WriteLock, unit_of_work
from fleet_mcp.keyring import load_key_ring
from fleet_mcp.principals import Caller
from fleet_mcp.settings import Settings

if TYPE_CHECKING:
    from fleet_mcp.gate import Gate
    from fleet_mcp.policy.watcher import PolicyHolder
    from fleet_mcp.vault.transit.base import TransitBackend

log = logging.getLogger(__name__)


class App:
    """Built once per process from Settings; owns the engine and long-lived backends."""

    #: The policy in force; set by start().
    policy: PolicyHolder

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.sessionmaker: async_sessionmaker[AsyncSession] | None = None
        #: For work that never writes (token checks, approval summaries, read-only tools): a separate engine
        #: that refuses writes; on SQLite its transactions do not take the write lock.
        self.read_sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._read_engine: AsyncEngine | None = None
        #: Group commit of audit rows that join no other write (read-only calls, refusals).
        self.audit_writer: audit.AuditWriter | None = None
        self.transit: TransitBackend | None = None
        self.stdio_caller: Caller | None = None
        self.stateless_http = False
        #: Who holds a unit of work; on SQLite also the process's single-writer queue.
        self.write_lock = WriteLock(serialize=is_sqlite(settings.effective_database_url))
        self._gate: Gate | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._request_state_keys: list[bytes] | None = None
        #: Set when `serve --federation-listen` runs this instance's federation endpoint (identity, URL).
        self.federation_identity: Any = None
        self.federation_endpoint: str | None = None
        #: Bounded concurrency per process and per principal (excess refused as busy).
        self.admission = Admission(per_process=settings.max_concurrent_calls,
                                   per_principal=settings.max_concurrent_calls_per_principal)
        #: Set when a draining server has waited for its calls and jobs: open event streams end.
        self.drained = asyncio.Event()
        self._started = False

    @property
    def gate(self) -> Gate:
        """The one gate of this process: every tool call, from any client or job, passes it."""
        if self._gate is None:
            from fleet_mcp.gate import Gate

            self._gate = Gate(self)
        return self._gate

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """One write transaction (see fleet_mcp.db.uow): commits when the block ends, then runs its
        after-commit hooks. Everything that writes opens one of these; nothing opens one inside another."""
        assert self.sessionmaker is not None, "App.start() first"
        async with unit_of_work(self.sessionmaker, self.write_lock) as uow:
            yield uow

    def request_state_keys(self) -> list[bytes]:
        """Keys that seal the state of in-client approvals between rounds (protocol 2026-07-28). Replicas
        behind one load balancer share them through `request_state_key_file` (so an answer may reach any
        replica); without the file each process seals under a key of its own."""
        if self._request_state_keys is None:
            path = self.settings.request_state_key_file
            self._request_state_keys = load_key_ring(path) if path is not None else [os.urandom(32)]
        return self._request_state_keys

    @property
    def draining(self) -> bool:
        """Whether this process is shutting down (SIGTERM): not ready, no new calls, its jobs stop at the
        next batch boundary and release their lease."""
        return self.admission.draining

    def begin_drain(self) -> None:
        self.admission.draining = True

    @property
    def background_jobs(self) -> int:
        """Background work (jobs) still running in this process."""
        return len(self._background)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run background work launched by a committed call (a job); `drain` waits for it, `close` cancels
        what is left (leased jobs resume elsewhere or on the next start)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def drain(self) -> None:
        """Wait until the background work launched so far (and any it launched) has finished."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    async def start(self, *, migrate_db: bool = True) -> App:
        if self._started:
            return self
        s = self.settings
        url = s.effective_database_url
        await anyio.to_thread.run_sync(self._prepare_storage, url, migrate_db)
        # Keyed argument digests: one key per deployment, set before any call.
        audit.set_digest_key(await anyio.to_thread.run_sync(audit.digest_key_for, s))
        self.engine = create_engine(url, write_lock=self.write_lock)
        self.sessionmaker = make_sessionmaker(self.engine)
        self._read_engine = create_engine(url, readonly=True)
        self.read_sessionmaker = make_sessionmaker(self._read_engine)
        self.audit_writer = audit.AuditWriter(self.engine, self.write_lock)
        self.policy = self._load_policy()
        self.transit = transit = self._build_transit()
        async with self.unit_of_work() as uow:
            session = uow.session
            await transit.ensure_key(session=session)  # a local keyring is created in this unit of work
            await audit.ensure_head(session)
            acct = await principals.ensure_account(session, s.account)
            await principals.ensure_principal(session, acct, s.principal, s.role_list)
            self.stdio_caller = Caller(
                name=s.principal, account_id=acct.id, account_name=acct.name, roles=tuple(s.role_list), via="stdio"
            )
        self._started = True
        return self

    def _prepare_storage(self, url: str, migrate_db: bool) -> None:
        """Data dir (0700), migrations, and a SQLite file readable by its owner only."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if migrate_db:
            migrate.upgrade(url)
        if is_sqlite(url):
            db_file = Path(url.split("///", 1)[1])
            if db_file.exists():
                os.chmod(db_file, 0o600)

    def _load_policy(self) -> PolicyHolder:
        from fleet_mcp.policy.watcher import PolicyHolder
        from fleet_mcp.registry import catalog

        return PolicyHolder(self.settings.policy, catalog())

    def _build_transit(self) -> TransitBackend:
        from fleet_mcp.vault.transit import build_transit

        assert self.sessionmaker is not None
        return build_transit(self.settings, self.sessionmaker)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        if self.transit is not None:
            await self.transit.close()
        if self._read_engine is not None:
            await self._read_engine.dispose()
        if self.engine is not None:
            await self.engine.dispose()
        self._started = False
