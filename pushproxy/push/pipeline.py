"""The push pipeline: every mail event, from whichever source, to the push services once.

::

    detect ─────> dedupe ─────> skip \\Seen ─> fan out ─> send
    watchers      PushLedger    skip_seen    FanOut     every extension's on_event, through the
    ox endpoint                                         extension manager (its own sender: APNs, ...)

Every source enters at one point, :meth:`PushPipeline.submit`: the upstream
watchers (:meth:`pushproxy.watch.checks.MailboxChecks._apply`) and Dovecot's ox
endpoint (:mod:`pushproxy.watch.dovecot_ox`), on any node.  ``submit``
returns at once; the mailbox name is made canonical there (``INBOX`` in any
case is ``INBOX``), once, for every later stage.  An account's events pass the
dedupe stage in the order they were submitted (one chain of tasks per
account), so an expunge never overtakes the new mail before it; then each is
fanned out in a task of its own, so a slow push service delays no other event.

Dedupe is the pipeline's one de-duplication, the same code on one SQLite node
and on several PostgreSQL nodes: :meth:`PushLedger.claim` claims each message
(account, mailbox, UIDVALIDITY, UID) in the store's ``push_ledger`` table with
``INSERT ... ON CONFLICT DO NOTHING``; only the messages this call claimed go
on.  Two nodes that both believe they watch an account (a split brain after a
freeze), a watcher and Dovecot reporting the same delivery, a watcher
replaying its catch-up after a reconnect or a takeover: each message is
pushed once.  Rows are pruned after ``cluster.ledger_retention``
(:mod:`pushproxy.cluster.leases`).  The key needs the mailbox's UIDVALIDITY: an
event whose source did not say (a Dovecot ox document without
``imap-uidvalidity``) takes the one the watchers last saw for that mailbox
(:class:`~pushproxy.watch.checks.MailboxStates`: in memory, else the store's
``mailbox_state``), so its claim and the watcher's meet.  When nobody knows it
(no watcher has seen the mailbox, or the store is away and its state is not in
memory) the key holds 0: a watcher pushing the same message under the real
UIDVALIDITY pushes it a second time (a duplicate, never a loss).

While the store cannot be reached (:class:`~pushproxy.store.health.StoreHealth`)
the dedupe stage does not wait on it.  For an account whose lease this node is
sure to hold (renewed within ``lease_ttl``: nobody else can have taken it), the
event goes on unclaimed (a possible duplicate beats a lost push) and its claims
are kept (:class:`~pushproxy.store.pending.PendingClaims`) and written when the
store is back, before the held events go on; meanwhile they are this node's
ledger (a message it already pushed unclaimed does not go on again).  Past that, another node may have
taken the account over (this node alone may be cut off), so the pipeline holds
the account's events, in order (at most :data:`MAX_HELD_EVENTS`; beyond that the
oldest goes on unclaimed), and claims them when the store is back
(:meth:`PushPipeline.release`, a recovery step): the node that pushed them first
has claimed them, so each is pushed once.

Every task is the pipeline's: :meth:`flush` waits for them (tests, shutdown),
:meth:`close` waits a bounded time and cancels what is left.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from typing import Protocol

from pushproxy import metrics
from pushproxy.accounts import canonical_mailbox
from pushproxy.events import MailEvent, NewMail
from pushproxy.store.base import MailboxState
from pushproxy.store.pending import PendingClaims
from pushproxy.store.sql import SqlStore

__all__ = [
    "CLAIM_TIMEOUT",
    "Extensions",
    "FanOut",
    "HoldForStore",
    "KnownStates",
    "Leases",
    "PushLedger",
    "PushPipeline",
    "skip_seen",
]

log = logging.getLogger("pushproxy.push")

CLAIM_TIMEOUT = 5.0  # then the store counts as away: the dedupe stage stops waiting on it
CLOSE_TIMEOUT = 10.0
MAX_HELD_EVENTS = 10_000


class HoldForStore(Exception):
    """The event waits for the store (this node may no longer hold the account's lease)."""


class Leases(Protocol):
    """What the dedupe stage asks the cluster's lease manager (:class:`pushproxy.cluster.leases.LeaseManager`)."""

    def sure_to_hold(self, account: str) -> bool:
        """True while no other node can have taken the account's lease: its mail may go on unclaimed."""


class KnownStates(Protocol):
    """The watchers' mailbox states (:class:`pushproxy.watch.checks.MailboxStates`), as the dedupe stage reads them."""

    def known(self, account: str, mailbox: str) -> MailboxState | None:
        """The mailbox's latest state if a watcher of this node has it in memory (the store is not asked)."""


class PushLedger:
    """The dedupe stage: claims each message in the store's push ledger; only what this call claimed goes on."""

    def __init__(self, store: SqlStore, node_id: str, leases: Leases | None = None) -> None:
        self._store = store
        self._health = store.health
        self._node_id = node_id
        self._leases = leases  # None: one node alone, which nobody else can take an account from
        self._states: KnownStates | None = None  # the watchers' (wiring); without, the store's rows alone
        self.pending = PendingClaims()

    def read_states_from(self, states: KnownStates) -> None:
        """Take a missing UIDVALIDITY from ``states`` first (the watchers' memory, which outlives a store outage)."""
        self._states = states

    async def claim(self, event: NewMail) -> NewMail | None:
        """The event with only the messages this call claimed; None when every one was claimed before.

        Raises :class:`HoldForStore` when the store is away and this node may no longer hold the lease.
        """
        if not event.messages:
            return event  # nothing to claim: "something arrived" goes on
        if not event.uidvalidity:
            event = await self._with_uidvalidity(event)
        claimed = await self._claim(event)
        if not claimed:
            return None
        if len(claimed) < len(event.messages):
            event = replace(event, messages=tuple(m for m in event.messages if m.uid in claimed))
        return event

    async def _with_uidvalidity(self, event: NewMail) -> NewMail:
        """``event`` keyed on the UIDVALIDITY the watchers saw for its mailbox; as it is when that is not known."""
        state = self._states.known(event.account, event.mailbox) if self._states is not None else None
        if state is None and self._health.up:  # another node's watcher, or none: its row (read, not kept in memory)
            try:
                async with asyncio.timeout(CLAIM_TIMEOUT):
                    state = await self._store.get_mailbox_state(event.account, event.mailbox)
            except Exception as exc:  # the key keeps 0; the claim below goes the store-away way
                self._health.failed(exc)  # the one WARNING of the outage
        if state is None or not state.uidvalidity:
            return event
        return replace(event, uidvalidity=state.uidvalidity)

    async def _claim(self, event: NewMail) -> set[int]:
        uids = [m.uid for m in event.messages]
        if self._health.up:
            try:
                async with asyncio.timeout(CLAIM_TIMEOUT):
                    claimed = await self._insert(event.account, event.mailbox, event.uidvalidity, uids)
            except Exception as exc:  # fail open, whatever went wrong (StoreUnavailable, timeouts, ...)
                self._health.failed(exc)  # the one WARNING of the outage
            else:
                self._health.succeeded()
                conflicts = len(uids) - len(claimed)
                if conflicts:
                    metrics.PUSH_LEDGER_CONFLICTS.inc(conflicts)
                return claimed
        if self._leases is not None and not self._leases.sure_to_hold(event.account):
            raise HoldForStore
        # Only what this node did not push unclaimed already meanwhile: its pending claims are the
        # ledger while the store is away (a watcher's catch-up after a reconnect reports them again).
        return self.remember(event)

    def remember(self, event: NewMail) -> set[int]:
        """``event`` goes on unclaimed: its claims are written when the store is back; the UIDs not pending yet."""
        return self.pending.add(event.account, event.mailbox, event.uidvalidity, {m.uid for m in event.messages})

    async def store_returned(self) -> None:
        """Until the store counts as up (again)."""
        await self._health.returned.wait()

    async def write_pending(self) -> None:
        """The store is back: record the claims of what went out unclaimed (raises while it is away)."""
        written = await self.pending.write(self._write_claim)
        if written:
            log.info("push ledger: recorded %d claim(s) of pushes sent while the store was away", written)

    async def _write_claim(self, account: str, mailbox: str, uidvalidity: int, uids: Iterable[int]) -> None:
        async with asyncio.timeout(CLAIM_TIMEOUT):
            await self._insert(account, mailbox, uidvalidity, uids)

    async def _insert(self, account: str, mailbox: str, uidvalidity: int, uids: Iterable[int]) -> set[int]:
        """The UIDs this node claimed now (the others were claimed before), in one transaction."""
        claimed: set[int] = set()
        async with self._store.backend.write() as conn:
            for uid in uids:
                rows = await conn.fetch(
                    """INSERT INTO push_ledger (account, mailbox, uidvalidity, uid, node, claimed)
                       VALUES ($1, $2, $3, $4, $5, epoch_now())
                       ON CONFLICT (account, mailbox, uidvalidity, uid) DO NOTHING
                       RETURNING uid""",
                    account,
                    mailbox,
                    uidvalidity,
                    uid,
                    self._node_id,
                )
                if rows:
                    claimed.add(uid)
        return claimed


def skip_seen(event: NewMail) -> NewMail | None:
    """The event without messages already ``\\Seen`` (a Sieve rule or another client read them); None if none is left.

    A new-mail event without messages (a source that knows only "something
    arrived") goes on as it is.
    """
    unseen = tuple(m for m in event.messages if not m.seen)
    if len(unseen) == len(event.messages):
        return event
    return replace(event, messages=unseen) if unseen else None


class Extensions(Protocol):
    """Where the fan-out hands events: :class:`pushproxy.extensions.manager.ExtensionManager` (every extension)."""

    async def on_event(self, event: MailEvent) -> None:
        """Hand the event to every extension; never raises (a failing extension is logged and counted)."""

    async def flush(self) -> None:
        """Wait until what the extensions queued has been sent."""


class FanOut:
    """Each event to every extension, in a task of its own: a slow push service holds up no other event."""

    def __init__(self, extensions: Extensions) -> None:
        self.extensions = extensions
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0  # events handed to the extensions (tests, debug)

    def hand_out(self, event: MailEvent) -> None:
        """Hand ``event`` to every extension; returns at once."""
        task = asyncio.ensure_future(self._to_the_extensions(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _to_the_extensions(self, event: MailEvent) -> None:
        await self.extensions.on_event(event)  # each extension sends with its own sender (APNs, Web Push, ...)
        self.delivered += 1
        metrics.EVENT_DISPATCH_LATENCY.observe(max(0.0, time.monotonic() - event.detected_at))

    async def flush(self) -> None:
        """Wait for the events being handed out, then for what the extensions queued."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.extensions.flush()

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class PushPipeline:
    """The one entry point of mail events: ``submit``, then dedupe, skip ``\\Seen``, fan out."""

    def __init__(self, dedupe: PushLedger, fan_out: FanOut) -> None:
        self.dedupe = dedupe
        self.fan_out = fan_out
        self._tails: dict[str, asyncio.Task[None]] = {}  # per account: the last event in line
        self._held: deque[MailEvent] = deque()  # waiting for the store, in order
        self._holding: set[str] = set()  # accounts with held events: their later events wait behind them
        self._releasing: asyncio.Task[None] | None = None

    def submit(self, event: MailEvent) -> None:
        """Take an event in; returns at once."""
        if event.mailbox != (mailbox := canonical_mailbox(event.mailbox)):
            event = replace(event, mailbox=mailbox)
        previous = self._tails.get(event.account)
        task = asyncio.ensure_future(self._in_turn(event, previous))
        self._tails[event.account] = task
        task.add_done_callback(functools.partial(self._done, event.account))

    def _done(self, account: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(account) is task:
            del self._tails[account]

    async def _in_turn(self, event: MailEvent, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # keep the account's events in order
        try:
            await self._through_the_stages(event)
        except HoldForStore:
            self._hold(event)
        except Exception:
            log.exception("push pipeline: an event for %s could not be handled", event.account)

    async def _through_the_stages(self, event: MailEvent) -> None:
        if event.account in self._holding:
            raise HoldForStore  # behind the account's held events, in order
        if isinstance(event, NewMail):
            fresh = await self.dedupe.claim(event)
            if fresh is None:
                return  # pushed already, by this node or another
            unseen = skip_seen(fresh)
            if unseen is None:
                return
            event = unseen
        self.fan_out.hand_out(event)

    def _hold(self, event: MailEvent) -> None:
        if not self._held:
            log.info("push ledger: this node may no longer hold some leases; their events wait for the store")
        self._held.append(event)
        self._holding.add(event.account)
        if len(self._held) > MAX_HELD_EVENTS:  # bounded: the oldest goes on unclaimed (a duplicate, never a loss)
            oldest: MailEvent | None = self._held.popleft()
            if isinstance(oldest, NewMail):
                self.dedupe.remember(oldest)
                oldest = skip_seen(oldest)
            if oldest is not None:
                self.fan_out.hand_out(oldest)

    async def release(self) -> None:
        """A recovery step (:class:`~pushproxy.store.health.StoreHealth`): once the store counts as up
        again (after the last step), the held events go through the stages again, not held once more."""
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.ensure_future(self._release_when_up())

    async def _release_when_up(self) -> None:
        await self.dedupe.store_returned()
        held, self._held = self._held, deque()
        self._holding.clear()
        if held:
            log.info("push ledger: %d event(s) held while the store was away are claimed now", len(held))
        for event in held:
            self.submit(event)

    async def flush(self) -> None:
        """Wait until every event submitted so far has been handed out and sent (tests, shutdown)."""
        while self._tails:
            await asyncio.wait(list(self._tails.values()))
        await self.fan_out.flush()

    async def close(self) -> None:
        if self._releasing is not None:
            self._releasing.cancel()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.flush()
        except TimeoutError:
            log.warning("push pipeline: events still in flight at shutdown were cancelled")
            for task in list(self._tails.values()):
                task.cancel()
            self.fan_out.cancel()
