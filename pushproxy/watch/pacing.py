"""Pacing of upstream connections: reconnect backoff and a global connect rate.

After an upstream restart every watcher reconnects at once; the rate limiter
spreads the new connections over time (``watch.connect_rate`` per second) so
the server's login processes are not overrun, and the jittered backoff keeps
failed watchers from retrying in lockstep.
"""

from __future__ import annotations

import asyncio
import random
import time

__all__ = ["Backoff", "ConnectLimiter"]


class Backoff:
    """Exponential backoff with "equal jitter": each delay is in [d/2, d], d doubling up to the max."""

    __slots__ = ("_attempt", "maximum", "minimum")

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = max(0.0, minimum)
        self.maximum = max(self.minimum, maximum)
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.minimum * (2**self._attempt)) if self.minimum > 0 else 0.0
        self._attempt = min(self._attempt + 1, 64)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt


class ConnectLimiter:
    """At most ``rate`` acquisitions per second (a token bucket with a small burst)."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else min(rate, 10.0))
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        # The lock queues waiters fairly (FIFO), so a ramp-up of thousands stays ordered.
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
