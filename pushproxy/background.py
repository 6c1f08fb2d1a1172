"""Tasks with an owner: nothing its owner starts in the background is lost or outlives it unnoticed.

- :class:`BackgroundTask`: one long-running task that its owner starts once and
  cancels (and awaits) when it stops -- the loops that run as long as their
  owner does (an extension's housekeeping, the loop-lag probe, the watchers'
  ramp progress), each defining :meth:`~BackgroundTask.run`.  ``stop`` returns
  only once it has ended.
- :class:`TaskSet`: the short tasks an owner spawns (a session telling the
  extensions of a command's OK, Web Push's verification pushes), kept until
  done -- the event loop alone keeps only a weak reference to a task -- and a
  failure logged once by the owner's logger; ``close`` cancels and awaits what
  is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["BackgroundTask", "TaskSet"]

T = TypeVar("T")


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


class TaskSet:
    """The tasks an owner spawned, each kept until it is done; a failure is one ERROR line of ``log``."""

    def __init__(self, log: logging.Logger, failed: str = "background task failed") -> None:
        self._log = log
        self._failed = failed
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error(self._failed, exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    async def close(self) -> None:
        """Cancel what is still running and wait until it has ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
