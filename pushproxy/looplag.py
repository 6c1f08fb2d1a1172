"""The event loop's lag: how late a short sleep wakes up, as a histogram and a rolling maximum.

Everything (sessions, watchers, pushes) shares one loop, so any callback that
runs long delays all of them.  :class:`LoopLagProbe` sleeps
:data:`INTERVAL` seconds at a time and records how much later than asked it
woke: ``pushproxy_loop_lag_seconds`` (histogram) and
``pushproxy_loop_lag_max_seconds`` (the largest in the last minute, what
``bench/scale.py`` reports as the longest stall).  Its own cost is four
wake-ups a second.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from pushproxy.background import BackgroundTask
from pushproxy.metrics import LOOP_LAG, LOOP_LAG_MAX

__all__ = ["INTERVAL", "LoopLagProbe"]

INTERVAL = 0.25
WINDOW = 60.0  # seconds the maximum looks back


class LoopLagProbe(BackgroundTask):
    def __init__(self) -> None:
        self._recent: deque[tuple[float, float]] = deque()  # (when, lag), decreasing lags

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(INTERVAL)
            now = time.monotonic()
            self.record(now, max(0.0, now - before - INTERVAL))

    def record(self, now: float, lag: float) -> None:
        LOOP_LAG.observe(lag)
        recent = self._recent
        while recent and recent[-1][1] <= lag:  # a monotone deque: the maximum is at the left
            recent.pop()
        recent.append((now, lag))
        while recent[0][0] < now - WINDOW:
            recent.popleft()
        LOOP_LAG_MAX.set(recent[0][1])
