"""What this node must write but could not, kept in memory (bounded) until the store is back.

- :class:`MailboxStates`: the watchers' UIDVALIDITY/UIDNEXT/MODSEQ per
  mailbox, written through to the store (the writes that arrive while one is
  being committed share the next transaction: a ramp of hundreds of watchers
  per second is a few commits per second, not one fsync each, which queued
  past :data:`WRITE_WAIT` and read as an outage); while the store is away the latest
  state of each watched mailbox stays in memory (one entry per mailbox this
  node watches: bounded by its watchers) and is what a reconnecting watcher
  catches up from.
- :class:`PendingClaims`: push-ledger claims of the pushes that went out
  unclaimed while the store was away (at most :data:`MAX_PENDING_CLAIMS`
  messages; beyond that the oldest are forgotten, counted and logged once:
  a node taking such an account over later may push those again).

Both are written back by the store's recovery
(:class:`~pushproxy.store.health.StoreHealth`), after the leases were
re-asserted and before any held event goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

from pushproxy.store.base import MailboxState, Store, StoreUnavailable
from pushproxy.store.health import StoreHealth

log = logging.getLogger("pushproxy.store")

WRITE_WAIT = 5.0  # a watcher waits this long for its state write, then goes on (the write stays pending)
FLUSH_GROUP = 500  # states per transaction when what is pending is written back
MAX_PENDING_CLAIMS = 100_000

ClaimWriter = Callable[[str, str, int, Iterable[int]], Awaitable[object]]


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

    async def put_mailbox_state(self, state: MailboxState) -> None:
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


class PendingClaims:
    """Ledger claims not yet recorded: (account, mailbox, UIDVALIDITY) -> UIDs, oldest first."""

    def __init__(self, limit: int = MAX_PENDING_CLAIMS) -> None:
        self._limit = limit
        self._claims: OrderedDict[tuple[str, str, int], set[int]] = OrderedDict()
        self._count = 0
        self.forgotten = 0  # claims dropped over the limit (logged once per outage)

    def __len__(self) -> int:
        return self._count

    def add(self, account: str, mailbox: str, uidvalidity: int, uids: Iterable[int]) -> None:
        group = self._claims.setdefault((account, mailbox, uidvalidity), set())
        before = len(group)
        group.update(uids)
        self._count += len(group) - before
        while self._count > self._limit and self._claims:
            _, oldest = self._claims.popitem(last=False)
            self._count -= len(oldest)
            if not self.forgotten:
                log.warning(
                    "push ledger: more than %d unrecorded claims kept in memory; the oldest are forgotten "
                    "(a node taking those accounts over may push them again)",
                    self._limit,
                )
            self.forgotten += len(oldest)

    async def write(self, claim: ClaimWriter) -> int:
        """Record every pending claim (``claim`` is the ledger's query); how many were written."""
        written = 0
        while self._claims:
            key, uids = next(iter(self._claims.items()))
            batch = sorted(uids)
            await claim(*key, batch)  # raises when the store is away: the rest stays pending
            if self._claims.get(key) is uids:  # still pending (not dropped over the limit meanwhile)
                before = len(uids)
                uids.difference_update(batch)
                self._count -= before - len(uids)
                if not uids:
                    del self._claims[key]
            written += len(batch)
        self.forgotten = 0
        return written
