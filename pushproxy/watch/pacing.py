"""Pacing of upstream connections: a global connect rate, the poll schedule, IDLE refreshes spread in time.

After an upstream restart every watcher reconnects at once; the rate limiter
spreads the new connections over time (``watch.connect_rate`` per second) so
the server's login processes are not overrun.  (The jittered reconnect
backoff, which keeps failed watchers from retrying in lockstep, is
:class:`pushproxy.retry.Backoff`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable

__all__ = ["SPREAD", "ConnectLimiter", "PollSchedule", "spread"]

SPREAD = 0.5  # a spread period lasts between (1 - SPREAD) and 1 times what it is drawn for


def spread(period: float, draw: Callable[[], float] = random.random) -> float:
    """How long the next period of a watcher's repeated chore lasts: ``period`` less a random part
    of up to :data:`SPREAD`, drawn afresh every time.  Used for the IDLE refresh (and the wait before
    a keep-alive NOOP without IDLE), ``watch.idle_refresh``, and the subscribed-mailbox listing.

    Watchers that connected together (a start, a takeover, everyone back after
    an upstream outage, at up to ``watch.connect_rate`` a second) would
    otherwise do it together, every period, for as long as they run.  Drawn
    over half the period, theirs are spread from the first one on, and none
    waits longer than ``period`` (for IDLE: what the server's or a NAT's idle
    limit allows).  At most twice the (tiny) exchanges of a fixed period.
    """
    return period * (1.0 - SPREAD * draw())


class ConnectLimiter:
    """The one gate every new upstream connection of the watchers goes through.

    - a token bucket: at most ``rate`` connections started per second (a burst of
      at most ``burst``, by default ``min(rate, 10)``);
    - at most ``in_flight`` connections being opened and logged in at once (by
      default ``2 x rate``, at least 4, at most 100): an upstream whose logins slow
      down slows the ramp instead of piling up half-open connections (4,000 in
      flight at ``connect_rate: 2000`` made 10,000 TLS watchers time out their
      handshakes and retry for minutes; 100 brought them up at the upstream's pace);
    - waiters are served by priority, highest first (the supervisor passes the
      account's last activity: the accounts that get mail soonest come back
      first), in arrival order among equals.

    :meth:`slot` holds a token and an in-flight place until the login ended;
    :meth:`acquire` only takes a token (no in-flight place).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        in_flight: int | None = None,
        on_grant: Callable[[], None] | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else min(rate, 10.0))
        self.max_in_flight = max(1, in_flight) if in_flight is not None else min(100, max(4, int(2 * rate)))
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._waiters: list[tuple[float, int, asyncio.Future[None], bool]] = []  # heap (-priority, seq, fut, holds)
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.in_flight = 0
        self.started = 0  # connections let through since start (tests, progress)
        self._on_grant = on_grant

    @property
    def queued(self) -> int:
        """Waiters not yet let through (cancelled ones may still be counted until they are skipped)."""
        return len(self._waiters)

    async def acquire(self, priority: float = 0.0) -> None:
        """Wait for a token (no in-flight place is held)."""
        await self._wait(priority, holds=False)

    @contextlib.asynccontextmanager
    async def slot(self, priority: float = 0.0) -> AsyncIterator[None]:
        """A token and an in-flight place, held while the block runs (open and log in inside it)."""
        await self._wait(priority, holds=True)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._pump()

    async def _wait(self, priority: float, *, holds: bool) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (-priority, next(self._seq), fut, holds))
        self._pump()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and holds:  # let through, then cancelled: give the place back
                self.in_flight -= 1
                self._pump()
            raise

    def _pump(self) -> None:
        """Let waiters through while tokens and in-flight places allow; else come back when a token is due."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            _, _, fut, holds = self._waiters[0]
            if fut.done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            if holds and self.in_flight >= self.max_in_flight:
                return  # a slot's end pumps again
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1.0:
                delay = (1.0 - self._tokens) / self.rate
                self._timer = asyncio.get_running_loop().call_later(delay, self._pump)
                return
            self._tokens -= 1.0
            heapq.heappop(self._waiters)
            if holds:
                self.in_flight += 1
            self.started += 1
            fut.set_result(None)
            if self._on_grant is not None:
                self._on_grant()


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
