"""The detection logic of one account's watcher, without I/O: responses in, events and state out.

:class:`MailboxTracker` knows the stored state of every watched mailbox
(UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ), which mailboxes need a look
(``dirty``, with the time of the notification that asked for it) and what
the server said in between.  The watcher performs the commands the tracker
asks for (STATUS, EXAMINE, UID FETCH) and hands their responses back; each
step returns an :class:`Outcome`: the events to emit, then the state to
persist (emit first: at-least-once into the dispatcher, which dedups; store
right after: a restart does not emit again).

Rules (the correctness core of push):

- first sight of a mailbox records its state and emits nothing;
- a changed UIDVALIDITY resets the state and emits nothing (no flood of
  pushes for a rebuilt mailbox), unless the mailbox had no messages under the
  old one: then what it holds now is new and is pushed (GNU imap4d gives an
  empty mbox folder a new UIDVALIDITY at its first message).  "No messages"
  is known from the stored state (UIDNEXT 1: no UID was ever given) or from
  what this watcher saw (STATUS MESSAGES 0, EXAMINE's EXISTS 0) under the old
  UIDVALIDITY;
- new mail is what ``UID FETCH <stored UIDNEXT>:*`` returns with a UID at
  least the stored UIDNEXT (``n:*`` also returns the last message when its
  UID is below ``n``); messages already ``\\Seen`` are passed over;
- with QRESYNC, and only for mailboxes whose subscribers want changes,
  VANISHED and flag FETCHes become Expunge / FlagChange events
  (:mod:`pushproxy.watch.changes`), and HIGHESTMODSEQ is stored so a
  reconnect catches up on what it missed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pushproxy.events import MailEvent, MessageInfo, NewMail
from pushproxy.imap.data import MalformedResponse, Response, SelectInfo, StatusInfo, parse_status, parse_vanished
from pushproxy.imap.fetch import FetchItems, parse_fetch
from pushproxy.store.base import MailboxState
from pushproxy.watch.changes import LiveChanges, caught_up, change_events
from pushproxy.watch.spec import WatchSpec

__all__ = ["MAX_MESSAGES_PER_EVENT", "MailboxTracker", "NewMessages", "Outcome", "new_messages"]

log = logging.getLogger("pushproxy.watch.watcher")


# A NewMail carries at most this many (the newest) messages: after a long
# outage thousands may have arrived.  Large enough that a Web Push burst at the
# cap never fits its bounded pushes even in the compact form (it becomes one
# SYNC: nothing is cut silently; see webpush/payload.py MAX_NEW_MAIL_PUSHES).
MAX_MESSAGES_PER_EVENT = 2000


@dataclass(frozen=True, slots=True)
class NewMessages:
    messages: tuple[MessageInfo, ...]  # unseen new messages, ascending UID, at most MAX_MESSAGES_PER_EVENT
    uidnext: int  # the UIDNEXT to remember after these
    seen_skipped: int = 0
    count: int = 0  # new messages in all (seen or not, before the cap)


def new_messages(fetched: Iterable[FetchItems], from_uid: int, uidnext_hint: int | None = None) -> NewMessages:
    """Which of the fetched messages are new since ``from_uid`` (the stored UIDNEXT)."""
    by_uid: dict[int, tuple[tuple[str, ...] | None, bytes | None]] = {}
    for item in fetched:
        if item.uid is None or item.uid < from_uid:
            continue
        flags, envelope = by_uid.get(item.uid, (None, None))
        by_uid[item.uid] = (
            item.flags if item.flags is not None else flags,
            item.envelope if item.envelope is not None else envelope,
        )
    uidnext = max(from_uid, uidnext_hint or 0, max(by_uid, default=0) + 1)
    fresh: list[MessageInfo] = []
    skipped = 0
    for uid in sorted(by_uid):
        flags, envelope = by_uid[uid]
        info = MessageInfo(uid=uid, flags=flags or (), envelope=envelope)
        if info.seen:
            skipped += 1
            continue
        fresh.append(info)
    return NewMessages(tuple(fresh[-MAX_MESSAGES_PER_EVENT:]), uidnext, skipped, len(by_uid))


@dataclass(slots=True)
class Outcome:
    events: list[MailEvent] = field(default_factory=list)
    save: MailboxState | None = None  # persist after emitting the events


class MailboxTracker:
    """What one account's watcher knows; pure (the caller does the I/O)."""

    __slots__ = (
        "_empty",
        "_live",
        "_modseq",
        "account",
        "dirty",
        "hints",
        "qresync",
        "selected",
        "spec",
        "states",
    )

    def __init__(self, account: str, spec: WatchSpec, *, qresync: bool = False) -> None:
        self.account = account
        self.spec = spec
        self.qresync = qresync
        self.states: dict[str, MailboxState | None] = {}
        self.dirty: dict[str, float | None] = {}  # mailbox -> monotonic time of its first notification
        self.hints: dict[str, StatusInfo] = {}
        self.selected: str | None = None
        self._live = LiveChanges()  # QRESYNC: expunges and flag changes of the selected mailbox
        self._modseq: int | None = None
        self._empty: dict[str, int] = {}  # mailbox -> the UIDVALIDITY under which it was last seen empty

    # ------------------------------------------------------------------ setup

    def load(self, box: str, state: MailboxState | None) -> None:
        """The stored state of a watched mailbox (at connect); it needs a look."""
        self.states[box] = state
        self.dirty[box] = None

    def wants_changes(self, box: str | None) -> bool:
        return box is not None and box in self.spec.changes and self.qresync

    # ------------------------------------------------------------------ notifications

    def mark(self, box: str | None, when: float | None) -> None:
        if box is None or box not in self.spec:
            return
        if self.dirty.get(box) is None:
            self.dirty[box] = when

    def interesting(self, resp: Response) -> bool:
        """Does this unsolicited response call for the detection step?"""
        kind = resp.kind
        if kind in ("EXISTS", "STATUS", "BYE"):
            return True
        if kind in ("VANISHED", "FETCH"):
            return self.wants_changes(self.selected)
        return kind == "OK" and resp.code == "NOTIFICATIONOVERFLOW"

    def note(self, resp: Response, now: float | None = None) -> None:
        """Record what an untagged response means; ``now``: when it arrived."""
        if now is None:
            now = time.monotonic()
        kind = resp.kind
        try:
            if kind == "EXISTS":
                self.mark(self.selected, now)
            elif kind == "STATUS":
                info = parse_status(resp)
                if info.mailbox in self.spec:
                    self.hints[info.mailbox] = info
                    self.mark(info.mailbox, now)
            elif kind == "VANISHED":
                earlier, uids = parse_vanished(resp)
                if not earlier and self.qresync:
                    self._live.vanished.extend(uids)
                    self.mark(self.selected, now)
            elif kind == "FETCH":
                self._note_fetch(parse_fetch(resp.raw), now)
            elif kind == "OK":
                if resp.code == "NOTIFICATIONOVERFLOW":
                    for box in self.spec.mailboxes:
                        self.mark(box, now)
                elif resp.code == "HIGHESTMODSEQ" and resp.code_arg.isdigit():
                    self._modseq = max(self._modseq or 0, int(resp.code_arg))
        except MalformedResponse as exc:
            log.debug("watcher %s: unreadable %s response ignored (%s)", self.account, kind, exc)

    def _note_fetch(self, item: FetchItems, now: float) -> None:
        if item.uid is None:
            return  # without QRESYNC a flag update names only a sequence number: nothing to report
        box = self.selected
        state = self.states.get(box) if box is not None else None
        if item.modseq is not None:
            self._modseq = max(self._modseq or 0, item.modseq)
        if state is not None and item.uid >= state.uidnext:
            self.mark(box, now)  # a new message announced by its FETCH
        elif item.flags is not None and self.qresync:
            self._live.flags[item.uid] = item.flags
            self.mark(box, now)

    # ------------------------------------------------------------------ detection steps

    def on_status(self, box: str, hint: StatusInfo) -> tuple[bool, Outcome]:
        """After STATUS (or a NOTIFY STATUS): must the mailbox be examined?"""
        state = self.states.get(box)
        if hint.uidvalidity is None or hint.uidnext is None:
            return True, Outcome()
        if state is not None and state.uidvalidity != hint.uidvalidity and self._was_empty(box, state):
            return True, self._restart_empty(box, hint.uidvalidity)
        if state is None or state.uidvalidity != hint.uidvalidity:
            return False, self.fresh(box, hint.uidvalidity, hint.uidnext, hint.highestmodseq, hint.messages)
        self._seen_count(box, state.uidvalidity, hint.messages)
        if hint.uidnext > state.uidnext:
            return True, Outcome()
        changed = (
            self.wants_changes(box)
            and hint.highestmodseq is not None
            and state.highestmodseq is not None
            and hint.highestmodseq > state.highestmodseq
        )
        return changed, Outcome()

    def examine_args(self, box: str) -> bytes:
        """What to add to ``EXAMINE box``: QRESYNC parameters when changes are wanted and known."""
        state = self.states.get(box)
        if self.wants_changes(box) and state is not None and state.highestmodseq:
            return b" (QRESYNC (%d %d))" % (state.uidvalidity, state.highestmodseq)
        return b""

    def selecting(self) -> None:
        """A new mailbox is being selected: live changes of the old one are dropped (QRESYNC catches up)."""
        self.selected = None
        self._live.clear()
        self._modseq = None

    def selected_ok(self, box: str) -> None:
        self.selected = box

    def on_select(self, box: str, info: SelectInfo, trigger: float | None) -> tuple[str, Outcome]:
        """After EXAMINE: ``"fetch"`` (new mail to fetch), ``"probe"`` (UIDNEXT unknown) or ``"done"``."""
        state = self.states.get(box)
        uidvalidity = info.uidvalidity or 0
        if state is not None and state.uidvalidity != uidvalidity and self._was_empty(box, state):
            self._modseq = None if info.nomodseq else info.highestmodseq
            return "fetch", self._restart_empty(box, uidvalidity)
        if state is None or state.uidvalidity != uidvalidity:
            if info.uidnext is None:
                return "probe", Outcome()
            modseq = None if info.nomodseq else info.highestmodseq
            return "done", self.fresh(box, uidvalidity, info.uidnext, modseq, info.exists)
        self._seen_count(box, uidvalidity, info.exists)
        out = Outcome()
        if self.wants_changes(box) and (info.vanished or info.changed):
            out.events += change_events(self.account, box, *caught_up(info, state.uidnext), trigger)
        self._modseq = None if info.nomodseq else info.highestmodseq
        if info.uidnext is None or info.uidnext > state.uidnext:
            return "fetch", out
        out.save = self._modseq_save(box)
        return "done", out

    def fresh(
        self, box: str, uidvalidity: int, uidnext: int, modseq: int | None, messages: int | None = None
    ) -> Outcome:
        """First sight or a new UIDVALIDITY (of a mailbox that had messages): record the state, emit nothing."""
        old = self.states.get(box)
        if old is not None:
            log.info("watcher %s: UIDVALIDITY of %s changed; state reset without pushes", self.account, box)
        state = MailboxState(self.account, box, uidvalidity, uidnext, modseq, time.time())
        self.states[box] = state
        self._seen_count(box, uidvalidity, messages)
        return Outcome(save=state)

    def _was_empty(self, box: str, state: MailboxState) -> bool:
        """Did the mailbox have no messages under the stored UIDVALIDITY?"""
        return state.uidnext <= 1 or self._empty.get(box) == state.uidvalidity

    def _seen_count(self, box: str, uidvalidity: int, messages: int | None) -> None:
        if messages == 0:
            self._empty[box] = uidvalidity
        elif messages is not None:
            self._empty.pop(box, None)

    def _restart_empty(self, box: str, uidvalidity: int) -> Outcome:
        """A new UIDVALIDITY of a mailbox that was empty: everything in it is new, from UID 1."""
        log.info("watcher %s: UIDVALIDITY of %s changed while it was empty; its messages are new", self.account, box)
        self._empty.pop(box, None)
        state = MailboxState(self.account, box, uidvalidity, 1, None, time.time())
        self.states[box] = state
        return Outcome(save=state)

    def fetch_from(self, box: str) -> int | None:
        """The UID to fetch new mail from (the stored UIDNEXT); None without a state."""
        state = self.states.get(box)
        return state.uidnext if state is not None else None

    def on_fetch(
        self, box: str, responses: Iterable[Response], trigger: float | None, uidnext_hint: int | None = None
    ) -> Outcome:
        """After ``UID FETCH <uidnext>:*``: a NewMail for the unseen new messages, the new UIDNEXT."""
        state = self.states.get(box)
        if state is None:
            return Outcome()
        fetched: list[FetchItems] = []
        now = time.monotonic()
        for resp in responses:
            if resp.kind != "FETCH":
                self.note(resp, now)
                continue
            try:
                item = parse_fetch(resp.raw)
            except MalformedResponse as exc:
                log.debug("watcher %s: unreadable FETCH ignored (%s)", self.account, exc)
                continue
            if item.uid is not None and item.uid >= state.uidnext:
                fetched.append(item)
            else:
                self._note_fetch(item, now)
        found = new_messages(fetched, state.uidnext, uidnext_hint)
        out = Outcome()
        if found.messages:
            detected = trigger if trigger is not None else time.monotonic()
            # detected_at carries the notification time; the dispatcher observes
            # EVENT_DISPATCH_LATENCY once, for watcher and ox events alike.
            out.events.append(
                NewMail(self.account, box, found.messages, detected_at=detected, uidvalidity=state.uidvalidity)
            )
        if found.count:
            log.debug(
                "watcher %s: %s: %d new (%d already seen), UIDNEXT %d -> %d",
                self.account,
                box,
                found.count,
                found.seen_skipped,
                state.uidnext,
                found.uidnext,
            )
        if found.uidnext != state.uidnext or self._modseq_changed(box):
            out.save = self._put(box, state.uidvalidity, found.uidnext)
        return out

    def flush_live(self, box: str) -> Outcome:
        """Expunges and flag changes seen while IDLE in the selected mailbox."""
        out = Outcome()
        if self._live:
            vanished, flags = self._live.take()
            if box in self.spec.changes:
                out.events += change_events(self.account, box, vanished, flags, None)
        out.save = self._modseq_save(box)
        return out

    # ------------------------------------------------------------------ internals

    def _modseq_changed(self, box: str) -> bool:
        state = self.states.get(box)
        return (
            box == self.selected
            and box in self.spec.changes
            and state is not None
            and self._modseq is not None
            and self._modseq != state.highestmodseq
        )

    def _modseq_save(self, box: str) -> MailboxState | None:
        state = self.states.get(box)
        if state is not None and self._modseq_changed(box):
            return self._put(box, state.uidvalidity, state.uidnext)
        return None

    def _put(self, box: str, uidvalidity: int, uidnext: int) -> MailboxState:
        old = self.states.get(box)
        modseq = old.highestmodseq if old is not None else None
        if box == self.selected and self._modseq is not None:
            modseq = self._modseq
        state = MailboxState(self.account, box, uidvalidity, uidnext, modseq, time.time())
        self.states[box] = state
        return state
