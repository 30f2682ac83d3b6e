"""Budgets of the fleet link: bytes per second a robot sends, feature requests per second it makes."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` units per second, at most `burst` saved up (rate 0: unlimited). `take(n)` spends n
    when there is enough; a single item larger than the burst passes once the bucket is full, so
    nothing is starved forever by its own size."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1.0))
        self._clock = clock
        self._tokens = self.burst
        self._t = clock()

    def _refill(self) -> None:
        now = self._clock()
        dt = now - self._t
        self._t = now
        if dt > 0:  # a clock that jumps back refills nothing
            self._tokens = min(self.burst, self._tokens + dt * self.rate)

    def take(self, n: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        self._refill()
        if self._tokens >= min(n, self.burst):
            self._tokens -= n  # may go negative for an item above the burst: paid back before the next
            return True
        return False
