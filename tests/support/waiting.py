"""Waiting in tests: on an observable with a deadline, and one short bounded quiet period.

A test that needs something to *happen* waits for it (``wait_for``): a metric on
the admin port, a log line, a store row, a stand-in's received count.  A test
that needs something *not* to happen first waits for an observable that proves
the system got past the point where it would have happened (best: a later
event that must come after it), and only then, if nothing orders the two,
holds the claim for one short quiet period (``assert_quiet``) instead of a
fixed sleep.

The sync forms poll from the test's thread (subprocess proxies, stand-ins in
their own threads); the ``async_`` forms yield to the running loop and accept
predicates that are coroutines (store reads).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["QUIET", "assert_quiet", "async_assert_quiet", "async_wait_for", "wait_for"]

QUIET = 0.3
"""The default quiet period (seconds): longer than one hop of any in-process or loopback step."""

Predicate = Callable[[], bool]
AsyncPredicate = Callable[[], bool | Awaitable[bool]]


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


def wait_for(
    pred: Predicate, timeout: float = 10.0, what: str | Callable[[], str] = "condition", interval: float = 0.05
) -> None:
    """Return as soon as ``pred()`` holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {_describe(what)}")
        time.sleep(interval)


def assert_quiet(
    pred: Predicate, period: float = QUIET, what: str | Callable[[], str] = "condition", interval: float = 0.05
) -> None:
    """``pred()`` holds now and keeps holding for ``period`` seconds (checked every ``interval``)."""
    deadline = time.monotonic() + period
    while True:
        if not pred():
            raise AssertionError(f"no longer true within the quiet period: {_describe(what)}")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


async def _holds(pred: AsyncPredicate) -> bool:
    value = pred()
    if inspect.isawaitable(value):
        value = await value
    return bool(value)


async def async_wait_for(
    pred: AsyncPredicate, timeout: float = 10.0, what: str | Callable[[], str] = "condition", interval: float = 0.02
) -> None:
    """``wait_for`` for coroutines: ``pred`` may return a bool or an awaitable of one."""
    deadline = time.monotonic() + timeout
    while not await _holds(pred):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {_describe(what)}")
        await asyncio.sleep(interval)


async def async_assert_quiet(
    pred: AsyncPredicate, period: float = QUIET, what: str | Callable[[], str] = "condition", interval: float = 0.02
) -> None:
    """``assert_quiet`` for coroutines: ``pred`` may return a bool or an awaitable of one."""
    deadline = time.monotonic() + period
    while True:
        if not await _holds(pred):
            raise AssertionError(f"no longer true within the quiet period: {_describe(what)}")
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(interval)
