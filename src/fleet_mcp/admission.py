"""Bounded concurrency: how many calls one process, and one principal, may have in progress at once. The
excess is refused at once with a clear "busy, retry after" error instead of queueing without limit."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator

from fleet_mcp.errors import Busy

#: What a refused caller is told to wait before retrying, in seconds.
RETRY_AFTER = 1.0


class Admission:
    def __init__(self, *, per_process: int, per_principal: int) -> None:
        self.per_process = per_process
        self.per_principal = per_principal
        self._total = 0
        self._by_principal: Counter[str] = Counter()
        #: Set when the process drains (SIGTERM): every new call is refused as busy, to be retried elsewhere.
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Calls in progress in this process."""
        return self._total

    async def wait_idle(self) -> None:
        """Return once no call is in progress."""
        await self._idle.wait()

    @contextlib.contextmanager
    def admit(self, principal: str) -> Iterator[None]:
        """Hold one slot for the duration of a call; Busy when the process or the principal is at its limit."""
        if self.draining:
            raise Busy("this server is shutting down and takes no new calls",
                       hint=f"retry after {RETRY_AFTER:g} s (another replica answers)", retry_after=RETRY_AFTER)
        if self._total >= self.per_process:
            raise Busy(f"the server has {self._total} calls in progress (its limit)",
                       hint=f"retry after {RETRY_AFTER:g} s", retry_after=RETRY_AFTER)
        if self._by_principal[principal] >= self.per_principal:
            raise Busy(f"{principal} has {self._by_principal[principal]} calls in progress (the per-principal "
                       "limit)", hint=f"wait for them to finish, or retry after {RETRY_AFTER:g} s",
                       retry_after=RETRY_AFTER)
        self._total += 1
        self._idle.clear()
        self._by_principal[principal] += 1
        try:
            yield
        finally:
            self._total -= 1
            if not self._total:
                self._idle.set()
            self._by_principal[principal] -= 1
            if not self._by_principal[principal]:
                del self._by_principal[principal]
