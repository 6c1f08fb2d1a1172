"""Which node watches which account: leases in the shared database, spread by rendezvous hashing.

Every ``lease_ttl / 3`` each node, in a handful of queries whatever the
number of accounts:

1. heartbeats (``cluster_nodes``) and renews every lease it holds; a lease
   it no longer holds (it was frozen or cut off past the TTL and another node
   took it, or it simply expired) is *lost*: its watcher stops at once;
2. computes the wanted owner of accounts with registrations by rendezvous
   hashing over the live nodes (heartbeat within the TTL), so accounts
   spread evenly and a node joining or leaving moves only its share;
3. takes the leases of its accounts that are free or expired (a bounded
   number per round with several nodes: no thundering herd; every one at
   once on a node alone), and hands back (a bounded number
   per round) the leases of accounts now wanted elsewhere or with no
   registrations left.

What a quiet round costs the loop does not grow with the accounts (issue
23): the renewal only counts while no lease can have expired, and steps 2-3
(:meth:`LeaseManager._check`) run when something asks for them (the live
nodes changed, another node's lease is expiring, a registration changed, an
outage ended, a batch is left over, for a TTL after the live nodes changed
while the others hand back their share) and every ``CHECK_EVERY`` rounds, the
database answering only with the accounts that need something done.

A lease is taken with one conditional upsert (it succeeds only when the row
is absent, expired or already ours) and carries a fencing counter that
grows with every change of hands.  Two nodes can still both believe they own
an account for up to one round after a freeze: the push pipeline's dedupe
stage (:mod:`pushproxy.push.pipeline`) makes their pushes count once.

With SQLite the same code runs with one node, which owns every lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from pushproxy import metrics
from pushproxy.cluster.queries import ClusterStore
from pushproxy.cluster.rendezvous import shares, wanted_owner
from pushproxy.store.base import StoreUnavailable
from pushproxy.store.batches import in_batches
from pushproxy.store.sql import SqlStore

log = logging.getLogger("pushproxy.cluster")

TAKE_PER_ROUND = 500  # leases taken per round at most
START_BATCH = 500  # watchers started (their registrations read) per store query
NEXT_BATCH_AFTER = 0.5  # seconds between batches of a large takeover (watchers start at watch.connect_rate)
EXPIRY_GRACE = 0.2  # seconds after another node's lease expires before the round that may take it
HANDOFF_PER_ROUND = 100  # leases handed to their wanted owner per round at most
CHECK_EVERY = 6  # rounds between two checks of who should watch what when nothing asked for one
NODE_RETENTION = 7 * 86400.0  # nodes silent this long disappear from `cluster status`
LEAVE_TIMEOUT = 5.0


class Watchers(Protocol):
    """What the lease manager asks of the watcher supervisor."""

    async def registration_changed(self, account: str, session_id: str | None = None) -> None: ...

    async def registrations_changed(self, accounts: Sequence[str]) -> None:
        """``registration_changed`` of many accounts, read with one store query per extension."""

    async def release(self, account: str, lost: bool = False) -> None: ...


class LeaseManager:
    """This node's leases; the supervisor runs a watcher only for accounts in :meth:`owns`."""

    def __init__(
        self,
        store: SqlStore,
        node_id: str,
        address: str,
        lease_ttl: float,
        ledger_retention: float,
        prune_batch: int = 500,
    ) -> None:
        self._store = store
        self._cluster = ClusterStore(store)
        self.node_id = node_id
        self._address = address
        self._ttl = float(lease_ttl)
        self._ledger_retention = float(ledger_retention)
        self._prune_batch = prune_batch  # store.housekeeping_batch
        self._prune_due = False
        self._held: dict[str, int] = {}  # account -> fence
        self._live: list[str] = [node_id]
        self._watchers: Watchers | None = None
        self._task: asyncio.Task[None] | None = None
        self._round_lock = asyncio.Lock()
        self._rounds = 0
        self._renewed_at = 0.0  # monotonic time of the last successful renewal
        self._health = store.health
        self._shared = store.shared_by_nodes
        self._failing = False  # the last round failed (the store was away)
        self._grace_until = 0.0  # monotonic: until then, no other node's expired lease is taken
        self._wake_in = self.interval  # until the next round: sooner when another node's lease is about to expire
        # Leases taken whose watchers are not started yet.  The periodic round runs under a deadline
        # (lease_ttl); starting a batch of 500 watchers may outlast it under load, and a round cut
        # short there left taken leases without watchers for good (seen at 10,000 accounts: 10,000
        # leases held, 689 watchers).  So the loop starts them after the round, outside its deadline,
        # in batches of START_BATCH (one registration read per extension each), and whatever is
        # left (a store fault) at the next one.
        self._unstarted: deque[str] = deque()
        self._defer_starts = False
        # What the last check (_check) was for: the live nodes; whether another is due anyway.
        self._checked_for: list[str] = []
        self._check_due = True
        self._balanced_for: list[str] = []  # the live nodes the held accounts' shares were computed for
        self._handoff_left = False  # more accounts wanted elsewhere than one round hands back
        self._handoffs_until = 0.0  # monotonic: until then every round checks (the live nodes changed)

    @property
    def interval(self) -> float:
        return self._ttl / 3

    def attach(self, watchers: Watchers) -> None:
        self._watchers = watchers

    def owns(self, account: str) -> bool:
        return account in self._held

    def held(self) -> dict[str, int]:
        return dict(self._held)

    def sure_to_hold(self, account: str) -> bool:
        """True while no other node can have taken the account's lease: renewed within the TTL.

        The renewal set the expiry to the database's clock + TTL after ``_renewed_at`` (this
        node's clock, read before the query), so the lease is valid at least until then.  With
        one node (SQLite) nobody else takes leases.
        """
        if account not in self._held:
            return False
        return not self._shared or time.monotonic() < self._renewed_at + self._ttl

    def _in_grace(self) -> bool:
        return time.monotonic() < self._grace_until

    async def start(self) -> None:
        """One round now (so that the supervisor starts with its share), then one every TTL/3."""
        await self.run_round()
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        """Stop; hand every lease back so that the other nodes take over at once, not after the TTL."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._held.clear()
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await self._cluster.leave(self.node_id)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("cluster: could not hand back the leases at shutdown (%s); they expire by themselves", exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._wake_in)
            self._wake_in = self.interval
            try:
                self._defer_starts = True
                try:
                    async with asyncio.timeout(self._ttl):
                        await self.run_round()
                finally:
                    self._defer_starts = False
                await self._start_taken()  # outside the round's deadline (see _unstarted)
                if self._prune_due:  # also outside it: batches, however many claims piled up
                    await in_batches(lambda n: self._cluster.prune_ledger(self._ledger_retention, n), self._prune_batch)
                    self._prune_due = False
            except (StoreUnavailable, TimeoutError) as exc:
                # Said once per outage by the store's health, which runs a round as soon as the store
                # answers again.  The watchers go on: nobody can take their leases while nobody reaches
                # them, and a node that can will have stopped ours only after they expired.
                self._health.failed(exc)
                log.debug("cluster: lease round failed: %s", exc)
            except Exception:
                log.exception("cluster: lease round failed")

    async def run_round(self) -> None:
        async with self._round_lock:
            try:
                await self._round()
            except (StoreUnavailable, TimeoutError, OSError):
                self._failing = True
                raise

    async def _round(self) -> None:
        started = time.monotonic()
        await self._cluster.heartbeat(self.node_id, self._address)
        renewed = await self._renew()
        if renewed is not None:
            expired = {a: fence for a, fence in self._held.items() if a not in renewed}
            if expired:  # cut off past the TTL (store outage): keep what nobody took meanwhile
                kept = await self._cluster.reassert(self.node_id, expired, self._ttl)
                if kept:
                    log.info("cluster: re-asserted %d lease(s) that expired while the store was away", len(kept))
                renewed.update(kept)
        lost: list[str] = []
        if renewed is not None:
            # Out of _held before _renewed_at vouches for it: else, while their watchers stop, sure_to_hold
            # says yes to leases another node holds (pushes unclaimed while the store is away: twice).
            lost = [a for a in self._held if a not in renewed]
            for account in lost:
                del self._held[account]
            self._held.update(renewed)
        self._renewed_at = started
        self._health.succeeded()
        if self._failing:
            # Back after an outage: the other nodes' leases expired meanwhile on the database's clock,
            # though their holders kept watching. Give them a TTL to re-assert them before any is taken.
            self._failing = False
            self._check_due = True
            if self._shared:
                self._grace_until = time.monotonic() + self._ttl
        if lost:
            await self._stop_lost(lost)

        now, nodes = await self._cluster.nodes()
        self._live = sorted({n.node_id for n in nodes if n.heartbeat > now - self._ttl} | {self.node_id})
        # A live node renews every TTL/3, so its leases always expire more than a round ahead. One
        # that expires sooner belongs to a node that stopped renewing (killed, frozen, cut off): the
        # next round runs right after it expires instead of up to TTL/3 later (failover ~ TTL, not TTL * 4/3).
        expiring = [lease.expires - now for lease in await self._cluster.expiring(self.node_id, self.interval)]
        self._wake_in = min([self.interval, *(d + EXPIRY_GRACE for d in expiring if d > 0)])
        if self._in_grace() and any(d <= 0 for d in expiring):
            self._wake_in = min(self._wake_in, self._grace_until - time.monotonic() + EXPIRY_GRACE)
        if self._shared and self._live != self._checked_for:  # one SQLite node: nobody hands anything back
            # The nodes that see this change too hand their share back at their next rounds (within
            # TTL/3, HANDOFF_PER_ROUND at a time): check every round until then, or a lease handed
            # back waits for the next CHECK_EVERY round (2 * lease_ttl) with nobody watching.
            self._handoffs_until = time.monotonic() + self._ttl
        if (
            expiring
            or self._check_due
            or self._live != self._checked_for
            or time.monotonic() < self._handoffs_until
            or self._rounds % CHECK_EVERY == 0
        ):
            await self._check(self._live)

        self._rounds += 1
        if self._rounds % 30 == 1:
            self._prune_due = True  # the push ledger, after the round (_loop)
            await self._cluster.prune_nodes(NODE_RETENTION)  # a handful of rows
        metrics.CLUSTER_LEASES_HELD.set(len(self._held))
        metrics.CLUSTER_NODES_LIVE.set(len(self._live))

    async def _renew(self) -> dict[str, int] | None:
        """Renew this node's leases: account -> fence of those still held, or None: every one held.

        Within 2/3 of the TTL since the last renewal none of them has expired, and nobody takes an
        unexpired lease: then the renewal only counts (one statement, no row handed to the loop: at
        10,000 accounts it read 10,000 rows every round), and reads them only when the count is not
        what this node holds (a hand-back whose release failed, say).
        """
        if self._held and time.monotonic() < self._renewed_at + self._ttl * 2 / 3:
            if await self._cluster.renew_counted(self.node_id, self._ttl) == len(self._held):
                return None
        return await self._cluster.renew(self.node_id, self._ttl)

    async def _stop_lost(self, lost: list[str]) -> None:
        """Stop the watchers of leases found lost (already out of ``_held``)."""
        log.warning(
            "cluster: %d lease(s) lost (this node was unreachable past the TTL and another took them: %s); "
            "watcher(s) stopped",
            len(lost),
            ", ".join(lost[:5]) + (", ..." if len(lost) > 5 else ""),
        )
        for account in lost:
            await self._stop(account, lost=True)

    async def _check(self, live: list[str]) -> None:
        """Who should watch what: hand back what is wanted elsewhere or by nobody, take what is ours.

        Not every round: the database answers only with what is to be done (accounts with no live
        lease, this node's leases of accounts without registrations), so a quiet check costs the
        loop nothing per account; and the rendezvous share of every held account is computed only
        when the live nodes changed.  It runs when the nodes changed (and every round for a TTL
        after, while the others hand back their share; again after a check that took some), another node's lease is
        expiring, after an outage or a missed notice, while a batch is left over, and every
        CHECK_EVERY rounds; new registrations are followed at once without it (registration_changed).
        """
        unleased = await self._cluster.unleased()
        unwanted = [a for a in await self._cluster.unregistered(self.node_id) if a in self._held]
        elsewhere: list[str] = []
        if live != self._balanced_for or self._handoff_left:
            gone = set(unwanted)
            elsewhere = await self._shares([a for a in self._held if a not in gone], live, here=False)
        for account in unwanted + [a for a in elsewhere if a in self._held][:HANDOFF_PER_ROUND]:
            await self._hand_back(account)
        self._balanced_for, self._handoff_left = live, len(elsewhere) > HANDOFF_PER_ROUND

        in_grace = self._in_grace()
        free = [
            a
            for a, lease in sorted(unleased.items())
            if a not in self._held and (lease is None or not (in_grace and lease.owner != self.node_id))
        ]
        mine = [a for a in await self._shares(free, live, here=True) if a not in self._held]
        # One node (SQLite) shares the herd with nobody: it takes every lease at once and the watchers'
        # connect gate (watch.connect_rate, most recently active first) paces the start, not the rounds.
        per_round = TAKE_PER_ROUND if self._shared else len(mine)
        taken = await self._take(mine[:per_round], defer=self._defer_starts)
        if len(mine) > per_round:  # more orphans than one batch: the next one soon, not a round later
            self._wake_in = min(self._wake_in, NEXT_BATCH_AFTER)
        for account in taken:
            previous = unleased.get(account)
            if previous is not None and previous.owner != self.node_id:
                metrics.CLUSTER_TAKEOVERS.inc()
                log.info("cluster: took over %s from %s (lease expired)", account, previous.owner)
        metrics.CLUSTER_ACCOUNTS_UNWATCHED.set(sum(1 for a in unleased if a not in self._held))
        # A check that took leases checks again next round: a hand-back of many comes in batches.
        self._checked_for, self._check_due = live, len(mine) > per_round or self._handoff_left or bool(taken)

    async def _shares(self, accounts: list[str], live: list[str], *, here: bool) -> list[str]:
        """The accounts whose wanted owner among ``live`` is (``here``) or is not this node, in order."""
        return await shares(accounts, live, self.node_id, here=here)

    async def registration_changed(self, account: str) -> None:
        """An account's registrations changed (on any node): follow it at once if it is, or should be, ours."""
        self._check_due = True  # and the next round checks (a lease of an account nobody wants, a failed take)
        if account not in self._held and wanted_owner(account, self._live) == self.node_id:
            if self._in_grace():
                return  # another node's expired lease may be re-asserted yet: the round after the grace
            if not await self._take([account]):
                return  # another node holds a live lease: it follows the change itself
            return  # _take started the watcher with the current registrations
        if account in self._held and self._watchers is not None:
            await self._watchers.registration_changed(account)

    async def resync(self) -> None:
        """After missed notices (the listening connection was lost): re-read every held account, in batches."""
        self._check_due = True
        await self.run_round()
        held = list(self._held)
        for i in range(0, len(held), START_BATCH):
            if self._watchers is not None:
                await self._watchers.registrations_changed(held[i : i + START_BATCH])

    async def _take(self, accounts: list[str], *, defer: bool = False) -> list[str]:
        """Take these accounts' leases where free or expired (one transaction) and start their watchers.

        ``defer``: only queue the starts (the periodic round: :meth:`_start_taken` runs after it).
        """
        taken = await self._cluster.acquire_many(self.node_id, accounts, self._ttl)
        self._held.update(taken)
        self._unstarted.extend(taken)
        if not defer:
            await self._start_taken()
        return list(taken)

    async def _start_taken(self) -> None:
        """Start the watchers of the leases taken so far, a batch at a time (it leaves the queue once started)."""
        while self._unstarted and self._watchers is not None:
            batch: list[str] = []
            while self._unstarted and len(batch) < START_BATCH:
                account = self._unstarted.popleft()
                if account in self._held:
                    batch.append(account)
            try:
                await self._watchers.registrations_changed(batch)
            except StoreUnavailable:
                self._unstarted.extendleft(reversed(batch))  # the next round tries again, in the same order
                raise

    async def _hand_back(self, account: str) -> None:
        self._held.pop(account, None)
        await self._stop(account)  # first, so that its last state is stored before the next owner reads it
        await self._cluster.release(self.node_id, [account])

    async def _stop(self, account: str, lost: bool = False) -> None:
        if self._watchers is not None:
            await self._watchers.release(account, lost)
