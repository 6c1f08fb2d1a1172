"""One logged-in watcher connection: choose how to be told, catch up, wait, detect.

:class:`Detector` drives a :class:`~pushproxy.watch.tracker.MailboxTracker`
over a :class:`~pushproxy.watch.upstream.WatcherProtocol`: it sends the
commands the tracker needs (NOTIFY, STATUS, EXAMINE, UID FETCH), hands the
responses back, applies the outcomes (the events into the push pipeline,
then the watch state into the store), and waits in IDLE (or NOOP polling)
between detections.  See :mod:`pushproxy.watch.watcher` for the overall design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Protocol

from pushproxy.imap.commands import mailbox_arg
from pushproxy.imap.data import (
    MalformedResponse,
    Response,
    SelectInfo,
    StatusInfo,
    parse_enabled,
    parse_select,
    parse_status,
)
from pushproxy.imap.fetch import parse_fetch
from pushproxy.push.pipeline import PushPipeline
from pushproxy.watch.bodies import attach_bodies
from pushproxy.watch.detection import notify_set_command
from pushproxy.watch.idlers import ExtraIdler
from pushproxy.watch.pacing import PollSchedule, spread
from pushproxy.watch.tracker import MailboxTracker, Outcome
from pushproxy.watch.upstream import WatcherProtocol
from pushproxy.watch.upstream_types import CommandFailed, LoginCredentials

if TYPE_CHECKING:
    import ssl

    from pushproxy.config import Config
    from pushproxy.store.pending import MailboxStates
    from pushproxy.watch.pacing import ConnectLimiter

__all__ = ["NEW_MAIL_ITEMS", "Detector", "WatchedAccount"]

log = logging.getLogger("pushproxy.watch.watcher")

# What is fetched for new mail; the message itself is fetched after, for few small ones.
NEW_MAIL_ITEMS = b"UID FLAGS ENVELOPE"
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
        self._pipeline: PushPipeline = watcher.pipeline
        self.notify = False
        self.missing: set[str] = set()  # watched mailboxes that do not exist (yet)
        # A watched mailbox appeared after NOTIFY was set: Dovecot does not reliably report
        # mailboxes created after NOTIFY SET (even when it is sent again), so start afresh.
        self.reconnect_now = False
        self._first_hit: float | None = None
        self._select_info = SelectInfo()
        self._caught_up = False  # the state says "connected" only after the first catch-up
        self._idlers: list[ExtraIdler] = []
        self._reported: set[str] = set()  # mailboxes an extra IDLE connection reported a change in
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
            self.notify = await self._notify_set()
        can_idle = "IDLE" in caps
        if not self.notify and can_idle:
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
        method = "NOTIFY" if self.notify else ("IDLE" if can_idle else "poll")
        if self.schedule.mailboxes and method == "IDLE":
            method = "IDLE+poll"
        log.info(
            "watcher %s: connected (%s; %s)%s",
            self.account,
            method,
            ", ".join(self.spec.mailboxes),
            f"; IDLE connections: {1 + len(self._idlers)}" if self._idlers else "",
        )
        await self._settle()
        self._caught_up = True
        self._update_schedule()
        return await self._loop(can_idle)

    async def close(self) -> None:
        for idler in self._idlers:
            await idler.stop()
        self._idlers.clear()

    def _polled(self) -> list[str]:
        """Mailboxes nobody reports: without NOTIFY, those no IDLE connection watches; and missing ones."""
        if self.notify:
            return sorted(self.missing)
        idled: set[str] = set()
        if "IDLE" in self.conn.capabilities:
            idled = {self.spec.primary} | {i.mailbox for i in self._idlers if i.idling}
        return [box for box in self.spec.mailboxes if box not in idled or box in self.missing]

    def _update_schedule(self) -> None:
        polled = self._polled()
        self.schedule.set_mailboxes(polled, time.monotonic())
        if self._caught_up:
            lacking = not self.notify or "IDLE" not in self.conn.capabilities
            self.w.set_mode(polling=lacking and bool(polled))

    def _mark_missing(self, box: str, why: str, text: str) -> None:
        """``box`` cannot be watched (yet): poll it until it can; ``why`` is logged once (``%s`` box, text)."""
        if box not in self.missing:
            log.info("watcher %s: " + why, self.account, box, text)
        self.missing.add(box)
        self._update_schedule()

    def _mark_present(self, box: str) -> bool:
        """``box`` answered; True if it was missing until now."""
        if box not in self.missing:
            return False
        self.missing.discard(box)
        self._update_schedule()
        return True

    def _activity(self, box: str, when: float) -> None:
        """An extra IDLE connection saw something in ``box``: examine it (no STATUS needed first)."""
        self._reported.add(box)
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
            if await self._settle():
                self.schedule.activity(time.monotonic())
            if self.reconnect_now:
                return True
            next_list = self.w.next_list
            if next_list is not None and next_list <= time.monotonic() and await self.w.refresh_mailboxes(conn):
                log.info("watcher %s: reconnecting to watch the new set of mailboxes", self.account)
                return True
        await conn.logout(min(self._watch.command_timeout, _LOGOUT_TIMEOUT))
        return False

    # ------------------------------------------------------------------ detection

    async def _apply(self, outcome: Outcome) -> None:
        """Into the push pipeline first (at least once: its dedupe stage drops a repeat), then persist."""
        if outcome.events:
            self.w.mark_active()
        for event in outcome.events:
            self._pipeline.submit(event)
        if outcome.save is not None:
            await self.w.states.put_mailbox_state(outcome.save)  # never raises for an unreachable store

    async def _settle(self) -> bool:
        """Run the detection step for every marked mailbox; end with the primary selected.

        Returns True when something was found (activity: poll faster for a while).
        """
        primary, t = self.spec.primary, self.t
        found = False
        while t.dirty or t.selected != primary:
            if self.w.stopping:
                return found
            others = [box for box in t.dirty if box != primary]
            if others:
                box = others[0]
                found |= await self._check_other(box, t.dirty.pop(box))
                continue
            if t.selected != primary:
                trigger = t.dirty.pop(primary, None)
                if not await self._examine(primary):
                    t.dirty.pop(primary, None)
                    return found  # the primary mailbox does not exist (yet): IDLE unselected
                found |= await self._reconcile(primary, trigger)
                continue
            trigger = t.dirty.pop(primary)
            found |= await self._fetch_new(primary, trigger)
            outcome = t.flush_live(primary)
            found |= bool(outcome.events)
            await self._apply(outcome)
        return found

    async def _check_other(self, box: str, trigger: float | None) -> bool:
        hint = self.t.hints.pop(box, None)
        if box in self._reported:
            # An extra IDLE connection saw a change: STATUS would only confirm it (one round trip less).
            self._reported.discard(box)
            if await self._examine(box):
                return await self._reconcile(box, trigger)
            return False
        if hint is None or hint.uidvalidity is None or hint.uidnext is None:
            # Dovecot's NOTIFY reports omit UIDVALIDITY: one STATUS is cheaper than switching mailboxes.
            hint = await self._status(box)
            if hint is None:
                return False
        examine, outcome = self.t.on_status(box, hint)
        await self._apply(outcome)
        if examine and await self._examine(box):
            return await self._reconcile(box, trigger)
        return False

    async def _status(self, box: str) -> StatusInfo | None:
        items = b"UIDNEXT UIDVALIDITY MESSAGES" + (b" HIGHESTMODSEQ" if self.t.qresync else b"")
        result = await self.conn.command(b"STATUS " + mailbox_arg(box) + b" (" + items + b")")
        found: StatusInfo | None = None
        for resp in result.untagged:
            if resp.kind == "STATUS":
                with contextlib.suppress(MalformedResponse):
                    info = parse_status(resp)
                    if info.mailbox == box:
                        found = info
                        continue
            self.t.note(resp)
        if not result.ok:
            self._mark_missing(box, "cannot watch %s (yet): %s", result.status.text)
            return None
        if self._mark_present(box):
            if self.notify:
                log.info("watcher %s: %s exists now; reconnecting to include it in NOTIFY", self.account, box)
                self.reconnect_now = True
        return found

    async def _examine(self, box: str) -> bool:
        command = b"EXAMINE " + mailbox_arg(box) + self.t.examine_args(box)
        self.t.selecting()
        result = await self.conn.command(command)
        if not result.ok:
            # A failed SELECT/EXAMINE leaves no mailbox selected (RFC 9051 6.3.2).
            self._mark_missing(box, "cannot EXAMINE %s: %s", result.status.text)
            return False
        self._mark_present(box)
        select_data: list[Response] = []
        for resp in result.untagged:
            if resp.kind == "STATUS":
                self.t.note(resp)  # a NOTIFY report about another mailbox
            else:
                select_data.append(resp)
        self.t.selected_ok(box)
        self._select_info = parse_select(select_data)
        return True

    async def _reconcile(self, box: str, trigger: float | None) -> bool:
        info = self._select_info
        step, outcome = self.t.on_select(box, info, trigger)
        await self._apply(outcome)
        found = bool(outcome.events)
        if step == "probe":
            result = await self.conn.command(b"UID FETCH * (UID)")
            highest = 0
            for resp in result.untagged:
                if resp.kind == "FETCH":
                    with contextlib.suppress(MalformedResponse):
                        uid = parse_fetch(resp.raw).uid
                        highest = max(highest, uid or 0)
            modseq = None if info.nomodseq else info.highestmodseq
            await self._apply(self.t.fresh(box, info.uidvalidity or 0, highest + 1, modseq))
        elif step == "fetch":
            found |= await self._fetch_new(box, trigger, info.uidnext)
        return found

    async def _fetch_new(self, box: str, trigger: float | None, uidnext_hint: int | None = None) -> bool:
        start = self.t.fetch_from(box)
        if start is None:
            return False
        result = await self.conn.command(b"UID FETCH %d:* (" % start + NEW_MAIL_ITEMS + b")")
        if result.status.kind == "BAD":
            raise CommandFailed("UID FETCH", result.status)
        if not result.ok:
            for resp in result.untagged:
                self.t.note(resp)
            log.info("watcher %s: UID FETCH in %s refused: %s", self.account, box, result.status.text)
            return False
        outcome = self.t.on_fetch(box, result.untagged, trigger, uidnext_hint)
        if self.spec.bodies:
            await attach_bodies(self.conn, self.t, outcome)
        await self._apply(outcome)
        return bool(outcome.events)
