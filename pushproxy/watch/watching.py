"""One logged-in watcher connection: choose how to be told, catch up, wait, detect.

:class:`Detector` drives a :class:`~pushproxy.watch.tracker.MailboxTracker`
over a :class:`~pushproxy.watch.upstream.WatcherProtocol`: it chooses how
upstream tells it of new mail (NOTIFY, IDLE -- with extra IDLE connections
for other mailboxes -- or polling, for what nobody reports), waits in IDLE (or
NOOP polling), hands what arrives (``EXISTS``, a NOTIFY ``STATUS``) to the
tracker, which marks the mailbox, and then runs the detection step,
:meth:`~pushproxy.watch.checks.MailboxChecks.settle` (the commands the
tracker asks for, the outcomes into the push pipeline and the store).  See
:mod:`pushproxy.watch.watcher` for the overall design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Protocol

from pushproxy.imap.data import MalformedResponse, Response, parse_enabled, parse_status
from pushproxy.push.pipeline import PushPipeline
from pushproxy.watch.checks import MailboxChecks
from pushproxy.watch.idlers import ExtraIdler
from pushproxy.watch.pacing import PollSchedule, spread
from pushproxy.watch.spec import notify_set_command
from pushproxy.watch.tracker import MailboxTracker
from pushproxy.watch.upstream import WatcherProtocol
from pushproxy.watch.upstream_types import LoginCredentials

if TYPE_CHECKING:
    import ssl

    from pushproxy.config import Config
    from pushproxy.watch.checks import MailboxStates
    from pushproxy.watch.pacing import ConnectLimiter

__all__ = ["Detector", "WatchedAccount"]

log = logging.getLogger("pushproxy.watch.watcher")

_MIN_INTERVAL = 0.2  # seconds; a smaller watch.poll_interval / idle_refresh would spin
_LOGOUT_TIMEOUT = 5.0


class WatchedAccount(Protocol):
    """What a :class:`Detector` needs of its account's :class:`~pushproxy.watch.watcher.Watcher`."""

    account: str

    @property
    def config(self) -> Config: ...
    @property
    def tls_context(self) -> ssl.SSLContext | None: ...
    @property
    def limiter(self) -> ConnectLimiter: ...
    @property
    def states(self) -> MailboxStates: ...
    @property
    def pipeline(self) -> PushPipeline: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def wake_event(self) -> asyncio.Event: ...
    @property
    def next_list(self) -> float | None: ...

    def set_mode(self, polling: bool) -> None: ...
    def mark_active(self) -> None: ...
    async def refresh_mailboxes(self, conn: WatcherProtocol) -> bool: ...


class Detector:
    def __init__(
        self, watcher: WatchedAccount, conn: WatcherProtocol, tracker: MailboxTracker, creds: LoginCredentials
    ) -> None:
        self.w = watcher
        self.conn = conn
        self.t = tracker
        self.account = watcher.account
        self.spec = tracker.spec
        self._creds = creds
        self._watch = watcher.config.watch
        self.checks = MailboxChecks(self.account, conn, tracker, watcher.pipeline, watcher.states, self)
        self._notify = False
        self.missing: set[str] = set()  # watched mailboxes that do not exist (yet)
        self._reconnect_now = False
        self._first_hit: float | None = None
        self._caught_up = False  # the state says "connected" only after the first catch-up
        self._idlers: list[ExtraIdler] = []
        slowest = max(_MIN_INTERVAL, self._watch.poll_interval)
        self.schedule = PollSchedule(max(_MIN_INTERVAL, self._watch.poll_interval_active), slowest)

    # ------------------------------------------------------------------ setup

    async def run(self) -> bool:
        conn, caps = self.conn, self.conn.capabilities
        if "QRESYNC" in caps and "ENABLE" in caps:
            result = await conn.command(b"ENABLE QRESYNC")
            self.t.qresync = result.ok and any("QRESYNC" in parse_enabled(r) for r in result.untagged)
        if self.spec.changes and not self.t.qresync:
            log.info("watcher %s: upstream lacks QRESYNC; expunges and flag changes are not reported", self.account)
        if "NOTIFY" in caps:
            self._notify = await self._notify_set()
        can_idle = "IDLE" in caps
        if not self._notify and can_idle:
            extra = max(0, self._watch.idle_connections - 1)
            for box in self.spec.others[:extra]:
                idler = ExtraIdler(
                    self.account,
                    box,
                    self._creds,
                    config=self.w.config,
                    tls_context=self.w.tls_context,
                    limiter=self.w.limiter,
                    on_activity=self._activity,
                    on_change=self._update_schedule,
                )
                self._idlers.append(idler)
                idler.start()
        for box in self.spec.mailboxes:
            self.t.load(box, await self.w.states.get_mailbox_state(self.account, box))
        self._update_schedule()
        method = "NOTIFY" if self._notify else ("IDLE" if can_idle else "poll")
        if self.schedule.mailboxes and method == "IDLE":
            method = "IDLE+poll"
        log.info(
            "watcher %s: connected (%s; %s)%s",
            self.account,
            method,
            ", ".join(self.spec.mailboxes),
            f"; IDLE connections: {1 + len(self._idlers)}" if self._idlers else "",
        )
        await self.checks.settle()
        self._caught_up = True
        self._update_schedule()
        return await self._loop(can_idle)

    async def close(self) -> None:
        for idler in self._idlers:
            await idler.stop()
        self._idlers.clear()

    def _polled(self) -> list[str]:
        """Mailboxes nobody reports: without NOTIFY, those no IDLE connection watches; and missing ones."""
        if self._notify:
            return sorted(self.missing)
        idled: set[str] = set()
        if "IDLE" in self.conn.capabilities:
            idled = {self.spec.primary} | {i.mailbox for i in self._idlers if i.idling}
        return [box for box in self.spec.mailboxes if box not in idled or box in self.missing]

    def _update_schedule(self) -> None:
        polled = self._polled()
        self.schedule.set_mailboxes(polled, time.monotonic())
        if self._caught_up:
            lacking = not self._notify or "IDLE" not in self.conn.capabilities
            self.w.set_mode(polling=lacking and bool(polled))

    # ------------------------------------------------------------------ what the checks tell (WatchingConnection)

    @property
    def stopping(self) -> bool:
        return self.w.stopping

    @property
    def notify(self) -> bool:
        return self._notify

    def mark_active(self) -> None:
        self.w.mark_active()

    def reconnect(self) -> None:
        self._reconnect_now = True

    def mark_missing(self, box: str, why: str, text: str) -> None:
        """``box`` cannot be watched (yet): poll it until it can; ``why`` is logged once (``%s`` box, text)."""
        if box not in self.missing:
            log.info("watcher %s: " + why, self.account, box, text)
        self.missing.add(box)
        self._update_schedule()

    def mark_present(self, box: str) -> bool:
        """``box`` answered; True if it was missing until now."""
        if box not in self.missing:
            return False
        self.missing.discard(box)
        self._update_schedule()
        return True

    def _activity(self, box: str, when: float) -> None:
        """An extra IDLE connection saw something in ``box``: examine it (no STATUS needed first)."""
        self.checks.change_reported(box)
        self.t.mark(box, when)
        self.w.wake_event.set()

    async def _notify_set(self) -> bool:
        command = notify_set_command(self.spec, self.t.qresync)
        result = await self.conn.command(command)
        if not result.ok:
            log.info("watcher %s: NOTIFY refused (%s); IDLE instead", self.account, result.status.text)
            return False
        for resp in result.untagged:
            self.t.note(resp)
        return True

    # ------------------------------------------------------------------ waiting

    def _interesting(self, resp: Response) -> bool:
        hit = self.t.interesting(resp)
        if hit and resp.kind == "STATUS":
            try:
                hit = parse_status(resp).mailbox in self.spec
            except MalformedResponse:
                hit = False
        if hit and self._first_hit is None:
            self._first_hit = time.monotonic()
        return hit

    async def _loop(self, can_idle: bool) -> bool:
        conn, wake = self.conn, self.w.wake_event
        refresh = max(_MIN_INTERVAL, self._watch.idle_refresh)
        while not self.w.stopping:
            now = time.monotonic()
            deadline = now + spread(refresh)  # spread: not every watcher of a ramp at once
            next_poll = self.schedule.next_due()
            if next_poll is not None:
                deadline = min(deadline, next_poll)
            next_list = self.w.next_list
            if next_list is not None:
                deadline = min(deadline, next_list)
            self._first_hit = None
            if can_idle:
                responses = await conn.idle(deadline, wake, self._interesting)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.0, deadline - time.monotonic()))
                responses = [] if self.w.stopping else (await conn.command(b"NOOP")).untagged
            if self.w.stopping:
                break
            wake.clear()
            when = self._first_hit if self._first_hit is not None else time.monotonic()
            for resp in responses:
                self.t.note(resp, when)
            for box in self.schedule.due(time.monotonic()):
                self.t.dirty.setdefault(box, None)
            if await self.checks.settle():
                self.schedule.activity(time.monotonic())
            if self._reconnect_now:
                return True
            next_list = self.w.next_list
            if next_list is not None and next_list <= time.monotonic() and await self.w.refresh_mailboxes(conn):
                log.info("watcher %s: reconnecting to watch the new set of mailboxes", self.account)
                return True
        await conn.logout(min(self._watch.command_timeout, _LOGOUT_TIMEOUT))
        return False
