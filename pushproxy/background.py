"""One long-running task that its owner starts once and cancels (and awaits) when it stops.

For the loops that run as long as their owner does (an extension's
housekeeping, the loop-lag probe, the watchers' ramp progress): each is a
:class:`BackgroundTask` that defines :meth:`~BackgroundTask.run`.  The task
is kept, so it is never lost, and ``stop`` returns only once it has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod

__all__ = ["BackgroundTask"]


class BackgroundTask(ABC):
    _task: asyncio.Task[None] | None = None

    @abstractmethod
    async def run(self) -> None:
        """The loop; it runs until :meth:`stop` cancels it."""

    def start(self) -> None:
        """Run it (a second call while it runs does nothing)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        """Cancel it and wait until it has ended."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
