"""The watchers' connect gate: priority order and the bound on logins in flight (counted, not timed)."""

from __future__ import annotations

import asyncio

from pushproxy.watch.pacing import SPREAD, ConnectLimiter, spread


async def test_the_most_recently_active_go_first() -> None:
    limiter = ConnectLimiter(rate=1000.0, burst=1.0)
    order: list[float] = []

    async def connect(priority: float) -> None:
        async with limiter.slot(priority):
            order.append(priority)

    await limiter.acquire()  # the burst is spent: everyone below queues
    await asyncio.gather(*(connect(p) for p in (1.0, 5.0, 3.0, 5.0, 0.0)))
    assert order == [5.0, 5.0, 3.0, 1.0, 0.0]
    assert limiter.started == 6 and limiter.in_flight == 0


async def test_logins_in_flight_are_bounded() -> None:
    limiter = ConnectLimiter(rate=10_000.0, in_flight=3)
    most = 0
    release = asyncio.Event()

    async def login() -> None:
        nonlocal most
        async with limiter.slot():
            most = max(most, limiter.in_flight)
            await release.wait()

    tasks = [asyncio.ensure_future(login()) for _ in range(10)]
    while limiter.in_flight < 3:
        await asyncio.sleep(0.01)
    assert limiter.queued == 7  # the bucket had tokens: only the bound holds them back
    release.set()
    await asyncio.gather(*tasks)
    assert most == 3 and limiter.started == 10


async def test_a_waiter_cancelled_in_the_queue_or_after_its_turn_gives_its_place_back() -> None:
    limiter = ConnectLimiter(rate=10_000.0, in_flight=1)
    hold = asyncio.Event()

    async def first() -> None:
        async with limiter.slot():
            await hold.wait()

    running = asyncio.ensure_future(first())
    await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(_slot(limiter))
    await asyncio.sleep(0.01)
    queued.cancel()
    hold.set()
    await running
    assert limiter.in_flight == 0
    await asyncio.wait_for(_slot(limiter), 1)  # the cancelled waiter left no trace


async def _slot(limiter: ConnectLimiter) -> None:
    async with limiter.slot():
        pass


def test_spreads_fill_the_second_half_of_the_refresh_interval() -> None:
    """Never longer than watch.idle_refresh (a server's idle limit), never shorter than half of it, and
    drawn over that whole range: a herd of watchers refreshes spread, not at one moment."""
    assert spread(1500.0, lambda: 0.0) == 1500.0
    assert spread(1500.0, lambda: 1.0) == 1500.0 * (1 - SPREAD) == 750.0
    periods = [spread(1500.0, lambda i=i: i / 99) for i in range(100)]
    assert min(periods) == 750.0 and max(periods) == 1500.0
    buckets = [0] * 10  # ten equal slices of [750, 1500]: evenly used by evenly drawn numbers
    for p in periods:
        buckets[min(9, int((p - 750.0) / 75.0))] += 1
    assert max(buckets) <= 11, buckets
