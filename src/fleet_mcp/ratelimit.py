"""A per-principal token bucket for invalid calls: each costs an audit row, so a caller that sends nothing
but invalid calls (with huge arguments) could otherwise grow the database as fast as it can send.

`InvalidCallLimiter.check(principal)` takes one token and returns None, or `RetryAfter` when the bucket is
empty. Memory is bounded: a few numbers per principal, for at most `max_principals` (least recently seen
forgotten first; principals are authenticated, so their number is bounded by the tokens an admin issued).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Defaults: a burst of 30 invalid calls, then one every 2 seconds (at most ~16 KiB stored per row).
BURST = 30
PER_SECOND = 0.5
MAX_PRINCIPALS = 10_000


@dataclass(frozen=True)
class RetryAfter:
    """The bucket is empty: retry after `seconds`. `first` is True for the first refusal of a streak."""

    seconds: int
    first: bool


@dataclass
class _Bucket:
    tokens: float
    at: float
    refused: int = 0  # refusals since the last call that was let through


class InvalidCallLimiter:
    def __init__(self, *, burst: int = BURST, per_second: float = PER_SECOND, max_principals: int = MAX_PRINCIPALS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or per_second <= 0 or max_principals < 1:
            raise ValueError("burst and max_principals must be >= 1 and per_second > 0")
        self.burst = burst
        self.per_second = per_second
        self.max_principals = max_principals
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, principal: str) -> RetryAfter | None:
        """Spend one invalid call of PRINCIPAL: None when allowed, else how long to wait."""
        now = self._clock()
        b = self._buckets.get(principal)
        if b is None:
            b = _Bucket(tokens=float(self.burst), at=now)
            self._buckets[principal] = b
            while len(self._buckets) > self.max_principals:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(principal)
            b.tokens = min(float(self.burst), b.tokens + max(0.0, now - b.at) * self.per_second)
            b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return None
        b.refused += 1
        return RetryAfter(seconds=max(1, math.ceil((1.0 - b.tokens) / self.per_second)), first=b.refused == 1)

    def take_refused(self, principal: str) -> int:
        """How many calls of PRINCIPAL were refused since the last one let through; resets the count."""
        b = self._buckets.get(principal)
        if b is None:
            return 0
        n, b.refused = b.refused, 0
        return n
