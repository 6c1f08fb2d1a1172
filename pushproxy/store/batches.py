"""Periodic sweeps of the store in batches: what a sweep costs the loop does not grow with what is stored.

Expiring registrations and pruning the push ledger delete by a condition, at
most ``store.housekeeping_batch`` rows per statement, with the loop's other
work in between (issue 23: no periodic work that is O(N) in one go).  The
condition is what makes an interrupted sweep resume: rows a failed batch did
not delete still match and go with the next sweep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["in_batches"]


async def in_batches(step: Callable[[int], Awaitable[int]], batch: int) -> int:
    """``step(batch)`` (one batch: how many rows it did) until a batch comes back short; the total."""
    total = 0
    while True:
        done = await step(batch)
        total += done
        if done < batch:
            return total
        await asyncio.sleep(0)  # the loop's other work, between two batches
