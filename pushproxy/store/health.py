"""Is the store reachable right now?  One shared answer, one WARNING per outage, one INFO at its end.

The parts that must go on while the store is away (the watchers' mailbox
state, the push ledger, the lease rounds, the registration view the senders
read) report what their store calls did: :meth:`StoreHealth.failed` with the
:class:`~pushproxy.store.base.StoreUnavailable` they caught, and
:meth:`StoreHealth.succeeded`.  While the store is down they stop waiting on
it (each call would otherwise wait for its own deadline: 15 s when packets to
PostgreSQL vanish) and keep what they must write in memory; a probe pings the
store every :data:`PROBE_INTERVAL` and, once it answers, runs the recovery
steps in the order they were registered (re-assert the leases, write back the
claims, then the mailbox state, then the events held meanwhile) before the
store counts as up again.  ``pushproxy_store_up`` is 1 or 0 accordingly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from pushproxy import metrics
from pushproxy.store.errors import StoreUnavailable

log = logging.getLogger("pushproxy.store")

PROBE_INTERVAL = 1.0  # seconds between pings while the store is away
PROBE_TIMEOUT = 5.0

Recovery = Callable[[], Awaitable[None]]


class StoreHealth:
    def __init__(
        self, ping: Callable[[], Awaitable[bool]], probe_interval: float = PROBE_INTERVAL, *, quiet: bool = False
    ) -> None:
        self._ping = ping
        # quiet: the back end logs its own fault episodes (SQLite, pushproxy.store.errors); only the
        # gauge and the recovery here, not a second WARNING / INFO.
        self._quiet = quiet
        self._interval = probe_interval
        self._up = True
        self._down_since = 0.0
        self._reason = ""
        self._said = False  # the outage going on was logged (see failed)
        self._recoveries: list[tuple[str, Recovery]] = []
        self._probe: asyncio.Task[None] | None = None
        self._late: asyncio.Task[None] | None = None
        self._recovering = False
        self.outages = 0  # since start (tests)
        self.returned = asyncio.Event()  # set while up
        self.returned.set()
        metrics.STORE_UP.set(1)

    @property
    def up(self) -> bool:
        """False from the first failure until the store answered and every recovery step ran."""
        return self._up

    def on_recovered(self, name: str, step: Recovery) -> None:
        """Run ``step`` when the store answers again, after the steps registered before it."""
        self._recoveries.append((name, step))

    def failed(self, exc: BaseException | str) -> None:
        """A store call failed because the store cannot be reached (StoreUnavailable, a deadline)."""
        if not self._up:
            return
        self._up = False
        self._down_since = time.monotonic()
        self._reason = _describe(exc)
        self.outages += 1
        self.returned.clear()
        metrics.STORE_UP.set(0)
        # A deadline of a caller's own (a state write, a lease round) never reached the back end's
        # fault log: said here even when quiet, or the node runs "away" with no line at all (seen
        # at 19,000 watchers when the SQLite writer fell behind the watchers' state writes).
        self._said = not self._quiet or isinstance(exc, TimeoutError)
        if not self._said:
            log.debug("store unavailable (%s)", self._reason)
        else:
            log.warning(
                "store unavailable (%s): watchers go on, pushes go out unclaimed while this node's leases "
                "are valid, state and claims are kept in memory until it is back",
                self._reason,
            )
        self._start_probe()

    def succeeded(self) -> None:
        """A store call worked: the store is back (its recovery runs from the probe)."""
        if not self._up and not self._recovering:
            self._start_probe(at_once=True)

    def observe(self, ok: bool) -> None:
        """The result of a ping (readiness)."""
        if ok:
            self.succeeded()
        else:
            self.failed("ping failed")

    def _start_probe(self, at_once: bool = False) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probing(at_once))

    async def _probing(self, at_once: bool) -> None:
        first = at_once
        while not self._up:
            if not first:
                await asyncio.sleep(self._interval)
            first = False
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    ok = await self._ping()
            except Exception:  # a ping reports; anything else: still away
                ok = False
            if ok and await self._recover():
                return

    async def _recover(self) -> bool:
        """Every recovery step, in order; False (still down) if one of them found the store away again."""
        self._recovering = True
        try:
            for name, step in self._recoveries:
                try:
                    await step()
                except (StoreUnavailable, TimeoutError) as exc:
                    log.debug("store: recovery step %s: %s; retrying", name, _describe(exc))
                    return False
                except Exception:  # a bug in one step must not keep the node "down" forever
                    log.exception("store: recovery step %s failed", name)
        finally:
            self._recovering = False
        self._up = True
        self.returned.set()
        metrics.STORE_UP.set(1)
        # What was kept in memory while the last steps ran (their parts were still in memory mode).
        self._late = asyncio.ensure_future(self._second_pass())
        log.log(
            logging.INFO if self._said else logging.DEBUG,
            "store available again after %.1f s (%s); what was kept in memory is written",
            time.monotonic() - self._down_since,
            self._reason,
        )
        return True

    async def _second_pass(self) -> None:
        for name, step in self._recoveries:
            try:
                await step()
            except (StoreUnavailable, TimeoutError) as exc:
                self.failed(exc)
                return
            except Exception:
                log.exception("store: recovery step %s failed", name)

    async def close(self) -> None:
        for task in (self._probe, self._late):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _describe(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    text = str(exc)
    return text if text else type(exc).__name__
