"""The watchers' ramp, as an operator follows it: one log line every few seconds and gauges.

Whenever watchers are waiting for the connect gate or logging in (start,
restart, a failover takeover, everyone reconnecting after an upstream
outage), :class:`RampProgress` logs every :data:`EVERY` seconds

    watchers: 3,400/10,000 up (210 logins in flight, 6,390 queued, 49.8 logins/s)

and once the ramp is over ``watchers: all 10,000 up (ramp of 201 s)``.  The
figures are the supervisor's counters (kept incrementally) and the connect
gate's: the check is O(1), whatever the number of watchers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pushproxy import metrics
from pushproxy.background import BackgroundTask
from pushproxy.watch.pacing import ConnectLimiter
from pushproxy.watch.watcher import STATES

__all__ = ["EVERY", "RampProgress", "WatcherCensus"]

log = logging.getLogger("pushproxy.watch.supervisor")

EVERY = 5.0  # seconds between progress lines


class WatcherCensus:
    """The supervisor's watchers by state, kept incrementally, and the gauges that show them."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = dict.fromkeys(STATES, 0)

    def add(self, state: str) -> None:
        self._count(state, +1)

    def remove(self, state: str) -> None:
        self._count(state, -1)

    def moved(self, old: str, new: str) -> None:
        self._count(old, -1)  # the gauge of the state it left too, not only the count
        self._count(new, +1)

    def by_state(self) -> dict[str, int]:
        """Watchers by state (every state present, zeros included)."""
        return dict(self._counts)

    def up_and_wanted(self) -> tuple[int, int]:
        counts = self._counts
        up = counts["idle"] + counts["polling"]
        return up, sum(counts.values()) - counts["auth_failed"] - counts["stopped"]

    def _count(self, state: str, delta: int) -> None:
        self._counts[state] = self._counts.get(state, 0) + delta
        metrics.WATCHERS.labels(state).set(self._counts[state])
        up, wanted = self.up_and_wanted()
        metrics.WATCHERS_UP.set(up)
        metrics.WATCHERS_WANTED.set(wanted)


class RampProgress(BackgroundTask):
    def __init__(self, limiter: ConnectLimiter, counts: Callable[[], tuple[int, int]], every: float = EVERY) -> None:
        """``counts()``: (watchers up, watchers wanted)."""
        self._limiter = limiter
        self._counts = counts
        self._every = every
        self._ramp_started: float | None = None
        self._started_at_ramp = 0
        self._last = 0.0
        self._last_started = 0
        metrics.WATCHERS_LOGINS_IN_FLIGHT.set_function(lambda: limiter.in_flight)
        metrics.WATCHERS_CONNECT_QUEUE.set_function(lambda: limiter.queued)

    def _busy(self) -> bool:
        up, wanted = self._counts()
        return up < wanted and (self._limiter.queued > 0 or self._limiter.in_flight > 0)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        up, wanted = self._counts()
        started = self._limiter.started
        if self._busy():
            if self._ramp_started is None:
                self._ramp_started, self._started_at_ramp = now - self._every, started
                self._last, self._last_started = now - self._every, started
            rate = (started - self._last_started) / max(1e-6, now - self._last)
            self._last, self._last_started = now, started
            log.info(
                "watchers: %s/%s up (%d logins in flight, %d queued, %.1f logins/s)",
                f"{up:,}",
                f"{wanted:,}",
                self._limiter.in_flight,
                self._limiter.queued,
                rate,
            )
        elif self._ramp_started is not None:
            log.info(
                "watchers: %s/%s up (ramp of %.0f s, %d logins)",
                f"{up:,}",
                f"{wanted:,}",
                now - self._ramp_started,
                started - self._started_at_ramp,
            )
            self._ramp_started = None
