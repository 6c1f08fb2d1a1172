"""Pacing of upstream connections: a global connect rate and the poll schedule.

After an upstream restart every watcher reconnects at once; the rate limiter
spreads the new connections over time (``watch.connect_rate`` per second) so
the server's login processes are not overrun.  (The jittered reconnect
backoff, which keeps failed watchers from retrying in lockstep, is
:class:`pushproxy.retry.Backoff`.)
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["ConnectLimiter", "PollSchedule"]


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


class PollSchedule:
    """When each polled mailbox is next due: soon after activity, slower while quiet.

    A mailbox is polled every ``fastest`` seconds after activity on the
    account (new mail anywhere, a notification, the start of a connection);
    each quiet poll doubles its interval, up to ``slowest``.  So the upstream
    load is at most one STATUS per polled mailbox per ``fastest`` seconds,
    and one per ``slowest`` seconds on a quiet account.
    """

    __slots__ = ("_due", "_interval", "fastest", "slowest")

    def __init__(self, fastest: float, slowest: float) -> None:
        self.slowest = max(0.01, slowest)
        self.fastest = max(0.01, min(fastest, self.slowest))
        self._due: dict[str, float] = {}
        self._interval: dict[str, float] = {}

    def set_mailboxes(self, boxes: list[str] | tuple[str, ...], now: float) -> None:
        """Poll exactly these (new ones start fast; gone ones are dropped)."""
        for box in list(self._due):
            if box not in boxes:
                del self._due[box]
                del self._interval[box]
        for box in boxes:
            if box not in self._due:
                self._interval[box] = self.fastest
                self._due[box] = now + self.fastest

    @property
    def mailboxes(self) -> list[str]:
        return list(self._due)

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def due(self, now: float) -> list[str]:
        """The mailboxes to poll now; each is rescheduled as if quiet (see :meth:`activity`)."""
        out = [box for box, when in self._due.items() if when <= now]
        for box in out:
            interval = min(self.slowest, self._interval[box] * 2)
            self._interval[box] = interval
            self._due[box] = now + interval
        return out

    def activity(self, now: float) -> None:
        """Something happened on the account: poll every mailbox soon again."""
        for box in self._due:
            self._interval[box] = self.fastest
            self._due[box] = min(self._due[box], now + self.fastest)
