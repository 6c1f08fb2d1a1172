"""An extension's periodic round (expiring registrations, setting its gauge): one owned task.

A round's cost on the loop must not grow with what is stored (issue 23):
deletions go in batches (:func:`pushproxy.store.batches.in_batches`, ``store.housekeeping_batch``
rows each, the loop's other work in between) and gauges are counted by the
database, never by reading every registration.

Started in the extension's ``start`` and stopped in its ``stop``.  A round
that hits a store outage waits for the next one quietly (the store logs each
outage once); any other exception is the extension's bug and goes through the
one error policy (:func:`pushproxy.extensions.safecall.guarded`: one line,
one count) before the next round runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pushproxy.background import BackgroundTask
from pushproxy.extensions.safecall import guarded
from pushproxy.store.base import StoreUnavailable

__all__ = ["Housekeeping"]

log = logging.getLogger("pushproxy.extensions")


class Housekeeping(BackgroundTask):
    """``round()`` now and then every ``interval`` seconds, until :meth:`stop`."""

    def __init__(self, extension: str, round: Callable[[], Awaitable[object]], interval: float = 60.0) -> None:
        self.extension = extension
        self.interval = interval
        self._round = round

    async def run(self) -> None:
        while True:
            try:
                with guarded(self.extension, "housekeeping", passthrough=(StoreUnavailable,)):
                    await self._round()
            except StoreUnavailable as exc:
                log.debug("%s housekeeping postponed: %s", self.extension, exc.reason)
            await asyncio.sleep(self.interval)
