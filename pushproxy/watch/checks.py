"""The detection step of one watcher connection: look at the marked mailboxes, hand the outcomes on.

:meth:`MailboxChecks.settle` runs after every wake-up of the connection
(:class:`~pushproxy.watch.watching.Detector`): for each mailbox the
:class:`~pushproxy.watch.tracker.MailboxTracker` marked (an ``EXISTS``, a
NOTIFY ``STATUS``, a poll that is due) it sends the commands the tracker asks
for -- STATUS, EXAMINE, ``UID FETCH <stored UIDNEXT>:*`` and, for a few small
new messages, their bodies -- hands the responses back, and applies each
:class:`~pushproxy.watch.tracker.Outcome`: its events into the push pipeline
(:meth:`pushproxy.push.pipeline.PushPipeline.submit`), then the mailbox
state into :class:`MailboxStates`.  It ends with the primary mailbox selected, for IDLE.

The bodies: asked for by the account's watch spec (``WatchSpec.bodies``, for
WebPush, which sends a new message whole when the push fits), fetched with
``BINARY.PEEK[]`` where upstream has BINARY, else ``BODY.PEEK[]`` (never
setting ``\\Seen``), as a partial fetch: a longer message comes back cut at
the limit and is left out.  A refused fetch (e.g. ``[UNKNOWN-CTE]``) leaves the
push with the envelope only.

:class:`MailboxStates`: the node's watchers' UIDVALIDITY/UIDNEXT/MODSEQ per mailbox (each connection
loads them at its start, its checks save them), written to the store in group commits: the writes that
arrive while one commits share the next transaction (a ramp of hundreds of watchers a second is a few
commits, not one fsync each, which queued past :data:`WRITE_WAIT` and read as an outage).  While the store
is away the latest state of each watched mailbox stays in memory (bounded by this node's watchers): a
reconnecting watcher catches up from it; the store's recovery (:class:`~pushproxy.store.health.StoreHealth`)
writes it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Literal, Protocol

from pushproxy.events import NewMail
from pushproxy.imap.commands import mailbox_arg
from pushproxy.imap.data import Response, SelectInfo, StatusInfo, parse_select
from pushproxy.imap.untagged import fetched_sections, highest_uid, status_of
from pushproxy.push.pipeline import PushPipeline
from pushproxy.store.base import MailboxState, Store, StoreUnavailable
from pushproxy.store.health import StoreHealth
from pushproxy.watch.tracker import MailboxTracker, Outcome
from pushproxy.watch.upstream import WatcherProtocol
from pushproxy.watch.upstream_types import CommandFailed

__all__ = ["BODY_FETCH_LIMIT", "BODY_FETCH_MAX_MESSAGES", "NEW_MAIL_ITEMS", "WRITE_WAIT"]
__all__ += ["MailboxChecks", "MailboxStates", "WatchingConnection"]

log = logging.getLogger("pushproxy.watch.watcher")

# What is fetched for new mail; the message itself is fetched after, for few small ones.
NEW_MAIL_ITEMS = b"UID FLAGS ENVELOPE"
# WebPush sends a new message whole when the push fits 3,993 bytes of plaintext (draft
# -01): fetch at most this much of at most this many messages.
BODY_FETCH_LIMIT = 3993
BODY_FETCH_MAX_MESSAGES = 4

WRITE_WAIT = 5.0  # a watcher waits this long for its state write, then goes on (the write stays pending)
FLUSH_GROUP = 500  # states per transaction when what is pending is written back


class WatchingConnection(Protocol):
    """What the checks tell their connection (:class:`~pushproxy.watch.watching.Detector`)."""

    @property
    def stopping(self) -> bool: ...
    @property
    def notify(self) -> bool:
        """NOTIFY is set: a watched mailbox that appears is not reported on this connection."""

    def mark_active(self) -> None:
        """The account just had mail (first in line for a connection slot at the next reconnect)."""

    def mark_missing(self, box: str, why: str, text: str) -> None:
        """``box`` cannot be watched (yet): poll it until it can; ``why`` is logged once (``%s`` box, text)."""

    def mark_present(self, box: str) -> bool:
        """``box`` answered; True if it was missing until now."""

    def reconnect(self) -> None:
        """Start afresh after this step (a watched mailbox appeared that NOTIFY does not report)."""


class MailboxChecks:
    """The commands the tracker asks for, for every marked mailbox, and their outcomes applied."""

    def __init__(
        self,
        account: str,
        conn: WatcherProtocol,
        tracker: MailboxTracker,
        pipeline: PushPipeline,
        states: MailboxStates,
        connection: WatchingConnection,
    ) -> None:
        self.account = account
        self.conn = conn
        self.t = tracker
        self.spec = tracker.spec
        self._pipeline = pipeline
        self._states = states
        self._connection = connection
        self._reported: set[str] = set()  # mailboxes an extra IDLE connection reported a change in
        self._select_info = SelectInfo()

    def change_reported(self, box: str) -> None:
        """An extra IDLE connection saw a change in ``box``: examine it (no STATUS needed first)."""
        self._reported.add(box)

    async def settle(self) -> bool:
        """Run the detection step for every marked mailbox; end with the primary selected.

        Returns True when something was found (activity: poll faster for a while).
        """
        primary, t = self.spec.primary, self.t
        found = False
        while t.dirty or t.selected != primary:
            if self._connection.stopping:
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

    async def _apply(self, outcome: Outcome) -> None:
        """Into the push pipeline first (at least once: its dedupe stage drops a repeat), then persist."""
        if outcome.events:
            self._connection.mark_active()
        for event in outcome.events:
            self._pipeline.submit(event)
        if outcome.save is not None:
            await self._states.save(outcome.save)  # never raises for an unreachable store

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
        found, others = status_of(box, result.untagged)
        for resp in others:
            self.t.note(resp)
        if not result.ok:
            self._connection.mark_missing(box, "cannot watch %s (yet): %s", result.status.text)
            return None
        if self._connection.mark_present(box) and self._connection.notify:
            # Dovecot does not reliably report mailboxes created after NOTIFY SET (even when it
            # is sent again), so start afresh.
            log.info("watcher %s: %s exists now; reconnecting to include it in NOTIFY", self.account, box)
            self._connection.reconnect()
        return found

    async def _examine(self, box: str) -> bool:
        command = b"EXAMINE " + mailbox_arg(box) + self.t.examine_args(box)
        self.t.selecting()
        result = await self.conn.command(command)
        if not result.ok:
            # A failed SELECT/EXAMINE leaves no mailbox selected (RFC 9051 6.3.2).
            self._connection.mark_missing(box, "cannot EXAMINE %s: %s", result.status.text)
            return False
        self._connection.mark_present(box)
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
            highest = highest_uid(result.untagged)
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
            await self._attach_bodies(outcome)
        await self._apply(outcome)
        return bool(outcome.events)

    async def _attach_bodies(self, outcome: Outcome) -> None:
        """The new messages of ``outcome``'s events with their bodies, where small enough (in place)."""
        item = "BINARY" if "BINARY" in self.conn.capabilities else "BODY"
        section: Literal["BINARY[]", "BODY[]"] = "BINARY[]" if item == "BINARY" else "BODY[]"
        for i, event in enumerate(outcome.events):
            if not isinstance(event, NewMail) or not 0 < len(event.messages) <= BODY_FETCH_MAX_MESSAGES:
                continue
            uids = b",".join(b"%d" % m.uid for m in event.messages)
            command = b"UID FETCH %s (UID %s.PEEK[]<0.%d>)" % (uids, item.encode(), BODY_FETCH_LIMIT + 1)
            result = await self.conn.command(command)
            bodies, others = fetched_sections(result.untagged, section, BODY_FETCH_LIMIT)
            for resp in others:
                self.t.note(resp)  # e.g. a flag change reported meanwhile
            if not result.ok:
                log.debug("watcher %s: %s fetch refused: %s", event.account, section, result.status.text)
            if bodies:
                messages = tuple(
                    replace(m, body=bodies[m.uid], body_item=section) if m.uid in bodies else m for m in event.messages
                )
                outcome.events[i] = replace(event, messages=messages)


class MailboxStates:
    """The mailbox state of the accounts this node watches: the store's, and in memory what it could not take."""

    def __init__(self, store: Store, health: StoreHealth) -> None:
        self._store = store
        self._health = health
        self._known: dict[str, dict[str, MailboxState]] = {}  # account -> mailbox -> latest state
        self._dirty: dict[str, set[str]] = {}  # account -> mailboxes whose latest state is not stored
        # The next group commit: the states written meanwhile (latest per mailbox) and its outcome.
        self._group: dict[tuple[str, str], MailboxState] = {}
        self._group_done: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return sum(len(boxes) for boxes in self._dirty.values())

    def known(self, account: str, mailbox: str) -> MailboxState | None:
        """The mailbox's latest state if a watcher of this node has it in memory (the store is not asked)."""
        return self._known.get(account, {}).get(mailbox)

    async def get_mailbox_state(self, account: str, mailbox: str) -> MailboxState | None:
        known = self._known.get(account, {}).get(mailbox)
        if known is not None:
            return known
        if not self._health.up:
            raise StoreUnavailable("the store is away and this mailbox's state is not in memory")
        try:
            state = await self._store.get_mailbox_state(account, mailbox)
        except StoreUnavailable as exc:
            self._health.failed(exc)
            raise
        self._health.succeeded()
        if state is not None:
            self._known.setdefault(account, {})[mailbox] = state
        return state

    async def save(self, state: MailboxState) -> None:
        """Remember ``state``; write it now if the store answers within :data:`WRITE_WAIT`, else later."""
        self._known.setdefault(state.account, {})[state.mailbox] = state
        if not self._health.up:
            self._dirty.setdefault(state.account, set()).add(state.mailbox)
            return
        try:
            async with asyncio.timeout(WRITE_WAIT):
                await asyncio.shield(self._join_group(state))  # a cancelled watcher does not cancel the group
        except (StoreUnavailable, TimeoutError) as exc:
            self._dirty.setdefault(state.account, set()).add(state.mailbox)
            self._health.failed(exc)
            return
        self._health.succeeded()
        if self._known.get(state.account, {}).get(state.mailbox) is state:
            self._clean(state.account, state.mailbox)

    def _join_group(self, state: MailboxState) -> asyncio.Future[None]:
        """The commit that will store ``state`` (or a later state of its mailbox): the next group."""
        self._group[(state.account, state.mailbox)] = state
        if self._group_done is None:
            self._group_done = asyncio.get_running_loop().create_future()
            self._group_done.add_done_callback(_retrieved)
        done = self._group_done
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._commit_groups())
        return done

    async def _commit_groups(self) -> None:
        """Commit the group formed meanwhile, one transaction each, until none is left."""
        while self._group_done is not None:
            states, done = list(self._group.values()), self._group_done
            self._group, self._group_done = {}, None
            try:
                await self._store.put_mailbox_states(states)
            except Exception as exc:  # StoreUnavailable; anything else fails the callers the same way
                done.set_exception(exc)
            else:
                done.set_result(None)

    async def _drained(self) -> None:
        """Until the group commits in progress ended (their outcome is their callers')."""
        writer = self._writer
        if writer is not None and not writer.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(writer)

    def _clean(self, account: str, mailbox: str) -> None:
        dirty = self._dirty.get(account)
        if dirty is not None:
            dirty.discard(mailbox)
            if not dirty:
                del self._dirty[account]

    async def flush(self, account: str | None = None) -> None:
        """Write what is pending (of one account, or all); raises StoreUnavailable if the store is away."""
        await self._drained()
        accounts = [account] if account is not None else list(self._dirty)
        pending = [
            (name, mailbox, self._known.get(name, {}).get(mailbox))
            for name in accounts
            for mailbox in sorted(self._dirty.get(name, ()))
        ]
        for i in range(0, len(pending), FLUSH_GROUP):
            group = pending[i : i + FLUSH_GROUP]
            await self._store.put_mailbox_states([state for _, _, state in group if state is not None])
            for name, mailbox, state in group:
                if self._known.get(name, {}).get(mailbox) is state:
                    self._clean(name, mailbox)

    def forget(self, account: str) -> None:
        """The account is no longer watched here (lease handed over or lost, registrations gone)."""
        self._known.pop(account, None)
        self._dirty.pop(account, None)


def _retrieved(done: asyncio.Future[None]) -> None:
    """A group's failure is its callers'; one whose callers all gave up must not log 'never retrieved'."""
    if not done.cancelled():
        done.exception()
