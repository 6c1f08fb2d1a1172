"""The push ledger: every new message is pushed by one node, once, whoever detected it.

Every source of events (the watchers, Dovecot's ``/events/dovecot-ox``
endpoint, on any node) passes its new-mail events through
:meth:`PushLedger.gate` before they reach the dispatcher.  The gate claims
each message (account, mailbox, UIDVALIDITY, UID) with ``INSERT ... ON CONFLICT DO
NOTHING``; only the messages this call claimed go on.  Two nodes that both
believe they watch an account (a split brain after a freeze), a watcher and
Dovecot reporting the same delivery, a watcher replaying after a takeover:
each message is pushed once.  Rows are pruned after
``cluster.ledger_retention``.

Other events (expunges, flag changes) pass through, in order with the
account's new-mail events.

While the store cannot be reached (:class:`~pushproxy.store.health.StoreHealth`)
the gate does not wait on it.  For an account whose lease this node is sure
to hold (renewed within ``lease_ttl``: nobody else can have taken it), the
event goes through unclaimed (a possible duplicate beats a lost push) and its
claims are kept (:class:`~pushproxy.store.pending.PendingClaims`) and written
when the store is back, before the held events go on.  Past that, another
node may have taken the account over (this node alone may be cut off), so
its events are held, in order (at most :data:`MAX_HELD_EVENTS`; beyond that
the oldest goes through unclaimed), and claimed when the store is back: the
node that pushed them first has claimed them, so each is pushed once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace

from pushproxy import metrics
from pushproxy.accounts import is_inbox
from pushproxy.cluster.queries import ClusterStore
from pushproxy.events import MailEvent, NewMail
from pushproxy.store.pending import PendingClaims
from pushproxy.store.sql import SqlStore

log = logging.getLogger("pushproxy.cluster")

CLAIM_TIMEOUT = 5.0  # then the store counts as away: the gate stops waiting on it
MAX_HELD_EVENTS = 10_000

Submit = Callable[[MailEvent], None]


class _Hold(Exception):
    """The event waits for the store (this node may no longer hold the account's lease)."""


class PushLedger:
    def __init__(self, store: SqlStore, node_id: str, sure_to_hold: Callable[[str], bool] | None = None) -> None:
        self._cluster = ClusterStore(store)
        self._health = store.health
        self._node_id = node_id
        # The lease manager's answer: may this node push the account's mail unclaimed?
        self._sure_to_hold = sure_to_hold or (lambda account: True)
        self._tails: dict[str, asyncio.Task[None]] = {}  # per account: the last event in line
        self.pending = PendingClaims()
        self._held: deque[tuple[MailEvent, Submit]] = deque()
        self._holding: set[str] = set()  # accounts with held events: their later events wait behind them
        self._releasing: asyncio.Task[None] | None = None

    async def write_pending(self) -> None:
        """The store is back: record the claims of what went out unclaimed (raises while it is away)."""
        written = await self.pending.write(self._write_claim)
        if written:
            log.info("push ledger: recorded %d claim(s) of pushes sent while the store was away", written)

    async def _write_claim(self, account: str, mailbox: str, uidvalidity: int, uids: Iterable[int]) -> None:
        async with asyncio.timeout(CLAIM_TIMEOUT):
            await self._cluster.claim(self._node_id, account, mailbox, uidvalidity, uids)

    def release_held(self) -> None:
        """The store is back: the held events go through the gate again, in their order."""
        held, self._held = self._held, deque()
        self._holding.clear()
        if held:
            log.info("push ledger: %d event(s) held while the store was away are claimed now", len(held))
        for event, submit in held:
            self._enqueue(event, submit)

    async def release(self) -> None:
        """A recovery step (:class:`~pushproxy.store.health.StoreHealth`): once the store counts as up
        again (after the last step), the held events are claimed, not held once more."""
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.ensure_future(self._release_when_up())

    async def _release_when_up(self) -> None:
        await self._health.returned.wait()
        self.release_held()

    def gate(self, submit: Submit) -> Submit:
        """``submit`` behind the ledger; like it, the result returns at once."""

        def gated(event: MailEvent) -> None:
            self._enqueue(event, submit)

        return gated

    def _enqueue(self, event: MailEvent, submit: Submit) -> None:
        previous = self._tails.get(event.account)
        task = asyncio.ensure_future(self._forward(event, submit, previous))
        self._tails[event.account] = task
        task.add_done_callback(functools.partial(self._done, event.account))

    def _done(self, account: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(account) is task:
            del self._tails[account]

    async def _forward(self, event: MailEvent, submit: Submit, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # keep the account's events in order
        try:
            await self._claim_then_submit(event, submit)
        except _Hold:
            self._hold(event, submit)
        except Exception:
            log.exception("push ledger: an event for %s could not be handled", event.account)

    def _hold(self, event: MailEvent, submit: Submit) -> None:
        if not self._held:
            log.info("push ledger: this node may no longer hold some leases; their events wait for the store")
        self._held.append((event, submit))
        self._holding.add(event.account)
        if len(self._held) > MAX_HELD_EVENTS:  # bounded: the oldest goes out unclaimed (a duplicate, never a loss)
            oldest, oldest_submit = self._held.popleft()
            if isinstance(oldest, NewMail) and oldest.messages:
                self._remember(oldest, {m.uid for m in oldest.messages})
            oldest_submit(oldest)

    async def _claim_then_submit(self, event: MailEvent, submit: Submit) -> None:
        if event.account in self._holding:
            raise _Hold  # behind the account's held events, in order
        if isinstance(event, NewMail) and event.messages:
            claimed = await self._claim(event)
            if not claimed:
                return
            if len(claimed) < len(event.messages):
                event = replace(event, messages=tuple(m for m in event.messages if m.uid in claimed))
        submit(event)

    async def _claim(self, event: NewMail) -> set[int]:
        uids = [m.uid for m in event.messages]
        mailbox = _ledger_mailbox(event.mailbox)
        if self._health.up:
            try:
                async with asyncio.timeout(CLAIM_TIMEOUT):
                    claimed = await self._cluster.claim(self._node_id, event.account, mailbox, event.uidvalidity, uids)
            except Exception as exc:  # fail open, whatever went wrong (StoreUnavailable, timeouts, ...)
                self._health.failed(exc)  # the one WARNING of the outage
            else:
                self._health.succeeded()
                conflicts = len(uids) - len(claimed)
                if conflicts:
                    metrics.PUSH_LEDGER_CONFLICTS.inc(conflicts)
                return claimed
        if not self._sure_to_hold(event.account):
            raise _Hold
        self._remember(event, set(uids))
        return set(uids)

    def _remember(self, event: NewMail, uids: set[int]) -> None:
        """Pushed unclaimed: the claim is written when the store is back."""
        self.pending.add(event.account, _ledger_mailbox(event.mailbox), event.uidvalidity, uids)

    async def flush(self) -> None:
        """Wait until every event gated so far went on (tests, shutdown)."""
        while self._tails:
            await asyncio.wait(list(self._tails.values()))

    async def close(self) -> None:
        if self._releasing is not None:
            self._releasing.cancel()
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT):
                await self.flush()
        except TimeoutError:
            for task in self._tails.values():
                task.cancel()


def _ledger_mailbox(mailbox: str) -> str:
    return mailbox.upper() if is_inbox(mailbox) else mailbox
