"""One account's upstream watcher: a single IMAP connection turning changes into events.

Per connection (after login):

1. ``ENABLE QRESYNC`` when offered (UIDs in expunge / flag-change responses,
   HIGHESTMODSEQ to catch up on changes; only used for mailboxes whose
   subscribers want changes).
2. With NOTIFY (RFC 5465): ``NOTIFY SET (selected (MessageNew MessageExpunge
   [FlagChange])) (mailboxes (<others>) (MessageNew MessageExpunge
   [FlagChange]))``: the selected mailbox reports EXISTS/FETCH/VANISHED, the
   others ``* STATUS`` responses.  Fetch attributes are not requested: any
   notification only triggers the detection step below, which is the same
   for every path and so correct for all of them.
   Without NOTIFY: IDLE on the primary mailbox (INBOX if watched) and poll the
   others with STATUS every ``watch.poll_interval``.  Without IDLE: NOOP every
   ``poll_interval``.
3. Catch up: every watched mailbox is compared with the stored state, so mail
   that arrived while disconnected (or while the proxy was down) produces its
   events, once.
4. IDLE on the primary mailbox (EXAMINEd, i.e. read-only: the watcher never
   changes flags), re-issued every ``watch.idle_refresh``.

Detection of new mail in a mailbox (the correctness core): the stored
(UIDVALIDITY, UIDNEXT) is compared with the server's; ``UID FETCH
<stored UIDNEXT>:* (UID FLAGS ENVELOPE)`` returns the candidates, of which
:func:`~pushproxy.watch.detection.new_messages` keeps those with UID >= the
stored UIDNEXT that are not ``\\Seen``; one NewMail is emitted, then the new
UIDNEXT is stored (emit first: at-least-once into the dispatcher, which
dedups; store right after: a restart does not emit again).  First sight of a
mailbox records its state and emits nothing; a changed UIDVALIDITY resets the
state and emits nothing (no flood of pushes for a rebuilt mailbox).

Dovecot note: the watcher is one more IMAP connection of the user from the
proxy's address, so it counts against ``mail_max_userip_connections``
(default 10) together with the user's own sessions through the proxy, which
all come from that same address.  Raise the limit on the upstream server
accordingly (e.g. to 20 or more).

States: ``connecting`` (connect, login, catch-up), ``idle`` (connected; the
server pushes every watched mailbox: NOTIFY, or IDLE with only one mailbox),
``polling`` (connected; some mailboxes are only polled), ``backoff`` (waiting
to reconnect), ``auth_failed`` (upstream refused the credentials: waiting for
the user's next successful login), ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Literal

from pushproxy import metrics
from pushproxy.config import Config
from pushproxy.events import Expunge, FlagChange, MailEvent, NewMail
from pushproxy.store.base import MailboxState, Store
from pushproxy.watch.connection import (
    AuthenticationFailed,
    CommandFailed,
    ImapConnection,
    UpstreamError,
)
from pushproxy.watch.credentials import CredentialProvider
from pushproxy.watch.detection import WatchSpec, new_messages
from pushproxy.watch.imapwire import (
    FetchItems,
    MalformedResponse,
    SelectInfo,
    StatusInfo,
    classify,
    mailbox_arg,
    parse_fetch,
    parse_select,
    parse_status,
    parse_vanished,
    response_code,
)
from pushproxy.watch.pacing import Backoff, ConnectLimiter

__all__ = ["STATES", "Watcher", "WatcherState"]

log = logging.getLogger(__name__)

WatcherState = Literal["connecting", "idle", "polling", "backoff", "auth_failed", "stopped"]
STATES: tuple[WatcherState, ...] = ("connecting", "idle", "polling", "backoff", "auth_failed", "stopped")

StateCallback = Callable[["Watcher", WatcherState, WatcherState], None]

_STABLE_AFTER = 30.0  # a connection that lived this long resets the backoff
_LOGOUT_TIMEOUT = 5.0
_MIN_POLL_INTERVAL = 0.2  # seconds; a smaller watch.poll_interval would spin
_TRANSIENT = (UpstreamError, OSError, TimeoutError, MalformedResponse)


class Watcher:
    """Watches the mailboxes of one account over one upstream connection."""

    def __init__(
        self,
        account: str,
        spec: WatchSpec,
        *,
        config: Config,
        store: Store,
        credentials: CredentialProvider,
        emit: Callable[[MailEvent], None],
        limiter: ConnectLimiter,
        tls_context: ssl.SSLContext | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        self.account = account
        self.spec = spec
        self._config = config
        self._watch = config.watch
        self._store = store
        self._credentials = credentials
        self._emit_cb = emit
        self._limiter = limiter
        self._tls = tls_context
        self._on_state = on_state
        self.state: WatcherState = "connecting"
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._backoff = Backoff(self._watch.backoff_min, self._watch.backoff_max)
        self._conn: ImapConnection | None = None
        # per-connection state
        self._states: dict[str, MailboxState | None] = {}
        self._selected: str | None = None
        self._select_info: SelectInfo | None = None
        self._dirty: dict[str, float | None] = {}  # mailbox -> monotonic time of its first notification
        self._hints: dict[str, StatusInfo] = {}
        self._notify = False
        self._qresync = False
        self._polling = False
        self._missing: set[str] = set()  # watched mailboxes that do not exist (yet)
        # A watched mailbox appeared after NOTIFY was set: Dovecot does not reliably report
        # mailboxes created after NOTIFY SET (even when it is sent again), so start afresh.
        self._reconnect_now = False
        self._live_vanished: list[int] = []
        self._live_flags: dict[int, tuple[str, ...]] = {}
        self._live_modseq: int | None = None
        self._first_hit: float | None = None  # when the response that ended the current IDLE arrived
        self.connections = 0  # successful logins, for tests and the bench

    # ------------------------------------------------------------------ control

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def mark_auth_failed(self) -> None:
        """Known to be refused upstream (a stale stored credential): wait for a new login, do not start."""
        self._set_state("auth_failed")

    def poke(self) -> None:
        """Retry now if waiting in backoff (e.g. new credentials arrived)."""
        if self.state == "backoff":
            self._backoff.reset()
            self._wake.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """LOGOUT and end (bounded by ``timeout``; then the task is cancelled)."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done() and (self._conn is None or self.state == "connecting"):
            # Nothing to log out of (waiting in backoff or for a connect slot, or still
            # logging in): end at once rather than wait for the wait to end.
            task.cancel()
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except Exception as exc:  # the task logged its own failure
                log.debug("watcher %s ended with %s", self.account, _describe(exc))
        if self._conn is not None:
            self._conn.abort()
            self._conn = None
        if self.state != "auth_failed":
            self._set_state("stopped")

    def _set_state(self, state: WatcherState) -> None:
        old = self.state
        if old == state:
            return
        self.state = state
        if self._on_state is not None:
            self._on_state(self, old, state)

    # ------------------------------------------------------------------ main loop

    async def _run(self) -> None:
        try:
            while not self._stopping:
                self._wake.clear()
                creds = await self._credentials.get(self.account)
                if creds is None:
                    status = await self._credentials.status(self.account)
                    log.info("watcher %s: no usable credentials (%s); waiting for the next login", self.account, status)
                    self._set_state("auth_failed" if status == "failed" else "stopped")
                    return
                self._set_state("connecting")
                await self._limiter.acquire()
                if self._stopping:
                    break
                connected_at: float | None = None
                try:
                    conn = await ImapConnection.open(
                        self._config.upstream, self._tls, command_timeout=self._watch.command_timeout
                    )
                    self._conn = conn
                    async with asyncio.timeout(self._watch.command_timeout * 2):
                        await conn.login(creds)
                    connected_at = time.monotonic()
                    self.connections += 1
                    await self._session(conn)
                except AuthenticationFailed as exc:
                    log.warning("watcher %s: %s; stopped until the user logs in again", self.account, exc)
                    await self._credentials.mark_failed(self.account)
                    self._set_state("auth_failed")
                    return
                except _TRANSIENT as exc:
                    if not self._stopping:
                        log.info("watcher %s: upstream connection failed: %s", self.account, _describe(exc))
                except Exception:
                    if not self._stopping:
                        log.exception("watcher %s: unexpected error", self.account)
                finally:
                    if self._conn is not None:
                        self._conn.abort()
                        self._conn = None
                if self._stopping:
                    break
                if self._reconnect_now:
                    self._reconnect_now = False
                    continue
                if connected_at is not None and time.monotonic() - connected_at >= _STABLE_AFTER:
                    self._backoff.reset()
                delay = self._backoff.next()
                self._set_state("backoff")
                metrics.WATCHER_RECONNECTS.inc()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            if self.state != "auth_failed":
                self._set_state("stopped")

    async def _session(self, conn: ImapConnection) -> None:
        self._reset_session()
        caps = conn.capabilities
        if "QRESYNC" in caps and "ENABLE" in caps:
            result = await conn.command(b"ENABLE QRESYNC", check=False)
            self._qresync = result.status.status == b"OK" and any(
                b"QRESYNC" in r.upper() for r in result.untagged if classify(r) == "ENABLED"
            )
        if self.spec.changes and not self._qresync:
            log.info("watcher %s: upstream lacks QRESYNC; expunges and flag changes are not reported", self.account)
        if "NOTIFY" in caps:
            self._notify = await self._notify_set(conn)
        can_idle = "IDLE" in caps
        self._polling = not can_idle or (not self._notify and bool(self.spec.others))

        for box in self.spec.mailboxes:
            self._states[box] = await self._store.get_mailbox_state(self.account, box)
            self._dirty[box] = None
        await self._settle(conn)
        self._set_state("polling" if self._polling else "idle")

        poll_interval = max(_MIN_POLL_INTERVAL, self._watch.poll_interval)
        next_poll = time.monotonic() + poll_interval
        while not self._stopping:
            deadline = time.monotonic() + max(_MIN_POLL_INTERVAL, self._watch.idle_refresh)
            if self._polling or self._missing:
                deadline = min(deadline, next_poll)
            else:
                next_poll = time.monotonic() + poll_interval
            self._first_hit = None
            if can_idle:
                responses = await conn.idle(deadline, self._wake, self._interesting)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - time.monotonic()))
                responses = [] if self._stopping else (await conn.command(b"NOOP")).untagged
            if self._stopping:
                break
            self._wake.clear()
            when = self._first_hit if self._first_hit is not None else time.monotonic()
            for resp in responses:
                self._note(resp, when)
            if time.monotonic() >= next_poll:
                # Polled: the other mailboxes without NOTIFY; with NOTIFY, those that did
                # not exist when it was set (they are added to NOTIFY once they do).
                for box in self.spec.others if self._polling else sorted(self._missing):
                    self._dirty.setdefault(box, None)
                next_poll = time.monotonic() + poll_interval
            await self._settle(conn)
            if self._reconnect_now:
                break
        await conn.logout(min(self._watch.command_timeout, _LOGOUT_TIMEOUT))

    def _reset_session(self) -> None:
        self._states.clear()
        self._selected = None
        self._select_info = None
        self._dirty.clear()
        self._hints.clear()
        self._notify = self._qresync = self._polling = self._reconnect_now = False
        self._missing.clear()
        self._live_vanished.clear()
        self._live_flags.clear()
        self._live_modseq = None

    async def _notify_set(self, conn: ImapConnection) -> bool:
        spec = self.spec
        events = b"MessageNew MessageExpunge"
        selected_events = events + (b" FlagChange" if spec.changes and self._qresync else b"")
        command = b"NOTIFY SET (selected (" + selected_events + b"))"
        if spec.others:
            boxes = b" ".join(mailbox_arg(box) for box in spec.others)
            other_events = events + (b" FlagChange" if spec.changes & set(spec.others) and self._qresync else b"")
            command += b" (mailboxes (" + boxes + b") (" + other_events + b"))"
        result = await conn.command(command, check=False)
        if result.status.status != b"OK":
            log.info(
                "watcher %s: NOTIFY refused (%s); polling instead",
                self.account,
                result.line.decode("utf-8", "replace").strip()[:120],
            )
            return False
        for resp in result.untagged:
            self._note(resp)
        return True

    # ------------------------------------------------------------------ notifications

    def _interesting(self, resp: bytes) -> bool:
        """Does this unsolicited response (read during IDLE) call for the detection step?"""
        kind = classify(resp)
        hit = False
        if kind in ("EXISTS", "STATUS", "BYE"):
            hit = True
        elif kind in ("VANISHED", "FETCH"):
            hit = self._selected in self.spec.changes and self._qresync
        elif kind == "OK":
            code = response_code(resp)
            hit = code is not None and code[0] == "NOTIFICATIONOVERFLOW"
        if hit and self._first_hit is None:
            self._first_hit = time.monotonic()
        return hit

    def _mark(self, box: str | None, when: float | None) -> None:
        if box is None or box not in self.spec:
            return
        if self._dirty.get(box) is None:
            self._dirty[box] = when

    def _note(self, resp: bytes, now: float | None = None) -> None:
        """Record what an unsolicited response means; ``now``: when it arrived."""
        if now is None:
            now = time.monotonic()
        kind = classify(resp)
        if kind == "EXISTS":
            self._mark(self._selected, now)
        elif kind == "STATUS":
            try:
                info = parse_status(resp)
            except MalformedResponse:
                return
            if info is not None and info.mailbox in self.spec:
                self._hints[info.mailbox] = info
                self._mark(info.mailbox, now)
        elif kind == "VANISHED":
            try:
                parsed = parse_vanished(resp)
            except MalformedResponse:
                return
            if parsed is not None and not parsed[0] and self._qresync:
                self._live_vanished.extend(parsed[1])
                self._mark(self._selected, now)
        elif kind == "FETCH":
            self._note_fetch(resp, now)
        elif kind == "OK":
            code = response_code(resp)
            if code is None:
                return
            if code[0] == "NOTIFICATIONOVERFLOW":
                for box in self.spec.mailboxes:
                    self._mark(box, now)
            elif code[0] == "HIGHESTMODSEQ" and code[1].isdigit():
                self._live_modseq = max(self._live_modseq or 0, int(code[1]))

    def _note_fetch(self, resp: bytes, now: float) -> None:
        try:
            item = parse_fetch(resp)
        except MalformedResponse:
            return
        if item is None or item.uid is None:
            return  # without QRESYNC a flag update names only a sequence number: nothing to report
        box = self._selected
        state = self._states.get(box) if box is not None else None
        if item.modseq is not None:
            self._live_modseq = max(self._live_modseq or 0, item.modseq)
        if state is not None and item.uid >= state.uidnext:
            self._mark(box, now)  # a new message announced by its FETCH
        elif item.flags is not None and self._qresync:
            self._live_flags[item.uid] = item.flags
            self._mark(box, now)

    # ------------------------------------------------------------------ detection

    async def _settle(self, conn: ImapConnection) -> None:
        """Run the detection step for every marked mailbox; end with the primary selected."""
        primary = self.spec.primary
        while self._dirty or self._selected != primary:
            if self._stopping:
                return
            others = [box for box in self._dirty if box != primary]
            if others:
                box = others[0]
                trigger = self._dirty.pop(box)
                await self._check_other(conn, box, trigger)
                continue
            if self._selected != primary:
                trigger = self._dirty.pop(primary, None)
                if not await self._examine(conn, primary):
                    self._dirty.pop(primary, None)
                    return  # the primary mailbox does not exist (yet): IDLE unselected
                await self._reconcile_selected(conn, primary, trigger)
                continue
            trigger = self._dirty.pop(primary)
            await self._fetch_new(conn, primary, trigger)
            await self._flush_live_changes(primary)

    async def _check_other(self, conn: ImapConnection, box: str, trigger: float | None) -> None:
        hint = self._hints.pop(box, None)
        if hint is None or hint.uidvalidity is None or hint.uidnext is None:
            # Dovecot's NOTIFY reports omit UIDVALIDITY: one STATUS is cheaper than switching mailboxes.
            hint = await self._status(conn, box)
            if hint is None:
                return
        if not await self._needs_examine(box, hint):
            return
        if await self._examine(conn, box):
            await self._reconcile_selected(conn, box, trigger)

    async def _status(self, conn: ImapConnection, box: str) -> StatusInfo | None:
        items = b"UIDNEXT UIDVALIDITY MESSAGES" + (b" HIGHESTMODSEQ" if self._qresync else b"")
        result = await conn.command(b"STATUS " + mailbox_arg(box) + b" (" + items + b")", check=False)
        found: StatusInfo | None = None
        for resp in result.untagged:
            if classify(resp) == "STATUS":
                info = parse_status(resp)
                if info is not None and info.mailbox == box:
                    found = info
                    continue
            self._note(resp)
        if result.status.status != b"OK":
            if box not in self._missing:
                log.info("watcher %s: cannot watch %s (yet): %s", self.account, box, _text(result.line))
            self._missing.add(box)
            return None
        if box in self._missing:
            self._missing.discard(box)
            if self._notify:
                log.info("watcher %s: %s exists now; reconnecting to include it in NOTIFY", self.account, box)
                self._reconnect_now = True
        return found

    async def _needs_examine(self, box: str, hint: StatusInfo) -> bool:
        state = self._states.get(box)
        if hint.uidvalidity is None or hint.uidnext is None:
            return True
        if state is None or state.uidvalidity != hint.uidvalidity:
            await self._save_fresh(box, hint.uidvalidity, hint.uidnext, hint.highestmodseq, reset=state is not None)
            return False
        if hint.uidnext > state.uidnext:
            return True
        wants_changes = box in self.spec.changes and self._qresync
        return bool(
            wants_changes
            and hint.highestmodseq is not None
            and state.highestmodseq is not None
            and hint.highestmodseq > state.highestmodseq
        )

    async def _examine(self, conn: ImapConnection, box: str) -> bool:
        state = self._states.get(box)
        command = b"EXAMINE " + mailbox_arg(box)
        if self._qresync and box in self.spec.changes and state is not None and state.highestmodseq:
            command += b" (QRESYNC (%d %d))" % (state.uidvalidity, state.highestmodseq)
        self._flush_live_state()
        result = await conn.command(command, check=False)
        if result.status.status != b"OK":
            # A failed SELECT/EXAMINE leaves no mailbox selected (RFC 9051 6.3.2).
            self._selected = None
            self._select_info = None
            if box not in self._missing:
                log.info("watcher %s: cannot EXAMINE %s: %s", self.account, box, _text(result.line))
            self._missing.add(box)
            return False
        self._missing.discard(box)
        select_data: list[bytes] = []
        for resp in result.untagged:
            if classify(resp) == "STATUS":
                self._note(resp)  # a NOTIFY report about another mailbox
            else:
                select_data.append(resp)
        self._selected = box
        self._select_info = parse_select(select_data)
        return True

    def _flush_live_state(self) -> None:
        """Live changes belong to the selected mailbox; switching drops them (QRESYNC catches up)."""
        self._live_vanished.clear()
        self._live_flags.clear()
        self._live_modseq = None

    async def _reconcile_selected(self, conn: ImapConnection, box: str, trigger: float | None) -> None:
        info = self._select_info
        assert info is not None
        state = self._states.get(box)
        uidvalidity = info.uidvalidity or 0
        if state is None or state.uidvalidity != uidvalidity:
            uidnext = info.uidnext if info.uidnext is not None else await self._probe_uidnext(conn)
            modseq = None if info.nomodseq else info.highestmodseq
            await self._save_fresh(box, uidvalidity, uidnext, modseq, reset=state is not None)
            return
        if box in self.spec.changes and self._qresync and (info.vanished or info.changed):
            self._emit_changes(
                box,
                [u for u in info.vanished if u < state.uidnext],
                {f.uid: f.flags for f in info.changed if f.uid is not None and f.uid < state.uidnext and f.flags},
                trigger,
            )
        self._live_modseq = None if info.nomodseq else info.highestmodseq
        if info.uidnext is None or info.uidnext > state.uidnext:
            await self._fetch_new(conn, box, trigger, info.uidnext)
        else:
            await self._save_modseq(box)

    async def _probe_uidnext(self, conn: ImapConnection) -> int:
        """UIDNEXT when SELECT did not say it: highest UID + 1."""
        result = await conn.command(b"UID FETCH * (UID)", check=False)
        highest = 0
        for resp in result.untagged:
            item = parse_fetch(resp)
            if item is not None and item.uid is not None:
                highest = max(highest, item.uid)
        return highest + 1

    async def _fetch_new(
        self, conn: ImapConnection, box: str, trigger: float | None, uidnext_hint: int | None = None
    ) -> None:
        state = self._states.get(box)
        if state is None:
            return
        result = await conn.command(b"UID FETCH %d:* (UID FLAGS ENVELOPE)" % state.uidnext, check=False)
        if result.status.status == b"BAD":
            raise CommandFailed("UID FETCH", result.status, result.line)
        fetched: list[FetchItems] = []
        for resp in result.untagged:
            item = parse_fetch(resp) if classify(resp) == "FETCH" else None
            if item is None:
                self._note(resp)
            elif item.uid is not None and item.uid >= state.uidnext:
                fetched.append(item)
            else:
                self._note_fetch(resp, time.monotonic())
        if result.status.status != b"OK":
            log.info("watcher %s: UID FETCH in %s refused: %s", self.account, box, _text(result.line))
            return
        found = new_messages(fetched, state.uidnext, uidnext_hint)
        if found.messages:
            detected = trigger if trigger is not None else time.monotonic()
            # detected_at carries the notification time; the dispatcher observes
            # EVENT_DISPATCH_LATENCY once, for watcher and ox events alike.
            self._emit(NewMail(self.account, box, found.messages, detected_at=detected))
        if found.uidnext != state.uidnext or self._modseq_changed(box):
            await self._put_state(box, state.uidvalidity, found.uidnext)

    # ------------------------------------------------------------------ changes (QRESYNC)

    async def _flush_live_changes(self, box: str) -> None:
        if not (self._live_vanished or self._live_flags):
            await self._save_modseq(box)
            return
        vanished, flags = list(self._live_vanished), dict(self._live_flags)
        self._live_vanished.clear()
        self._live_flags.clear()
        if box in self.spec.changes:
            self._emit_changes(box, vanished, flags, None)
        await self._save_modseq(box)

    def _emit_changes(
        self, box: str, vanished: list[int], flags: Mapping[int, tuple[str, ...] | None], trigger: float | None
    ) -> None:
        detected = trigger if trigger is not None else time.monotonic()
        if vanished:
            self._emit(Expunge(self.account, box, tuple(sorted(set(vanished))), detected_at=detected))
        changes = tuple((uid, f) for uid, f in sorted(flags.items()) if f is not None and uid not in vanished)
        if changes:
            self._emit(FlagChange(self.account, box, changes, detected_at=detected))

    def _modseq_changed(self, box: str) -> bool:
        state = self._states.get(box)
        return (
            box == self._selected
            and box in self.spec.changes
            and state is not None
            and self._live_modseq is not None
            and self._live_modseq != state.highestmodseq
        )

    async def _save_modseq(self, box: str) -> None:
        state = self._states.get(box)
        if state is not None and self._modseq_changed(box):
            await self._put_state(box, state.uidvalidity, state.uidnext)

    # ------------------------------------------------------------------ state

    async def _save_fresh(self, box: str, uidvalidity: int, uidnext: int, modseq: int | None, *, reset: bool) -> None:
        if reset:
            log.info("watcher %s: UIDVALIDITY of %s changed; state reset without pushes", self.account, box)
        state = MailboxState(self.account, box, uidvalidity, uidnext, modseq, time.time())
        await self._store.put_mailbox_state(state)
        self._states[box] = state

    async def _put_state(self, box: str, uidvalidity: int, uidnext: int) -> None:
        old = self._states.get(box)
        modseq = old.highestmodseq if old is not None else None
        if box == self._selected and self._live_modseq is not None:
            modseq = self._live_modseq
        state = MailboxState(self.account, box, uidvalidity, uidnext, modseq, time.time())
        await self._store.put_mailbox_state(state)
        self._states[box] = state

    def _emit(self, event: MailEvent) -> None:
        try:
            self._emit_cb(event)
        except Exception:
            log.exception("watcher %s: event consumer failed", self.account)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").strip()[:160]
