"""Subscription maintenance: unacknowledged subscriptions expire, the subscription gauge is kept.

A mixin of :class:`~pushproxy.extensions.webpush.commands.WebPushCommands`
(the commands also delete an account's expired subscriptions before counting
against the limit).  Expiry is told to the watcher supervisor.

Each sweep costs the loop what it changes, not what is stored (issue 23: at
10,000 subscriptions, reading and decrypting them all each minute stalled the
loop): expired subscriptions are deleted by the database in batches of
``store.housekeeping_batch`` with the loop's other work in between, nothing
decrypted; the gauge is one ``COUNT`` query.  A sweep cut short by a store
fault leaves the rest for the next one (the rows still match).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pushproxy.extensions.housekeeping import Housekeeping
from pushproxy.extensions.webpush import metrics
from pushproxy.extensions.webpush.process import WebPushProcess
from pushproxy.extensions.webpush.ratelimit import VerificationLimiter
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription
from pushproxy.metrics import set_state_gauge
from pushproxy.store.base import Store
from pushproxy.store.batches import in_batches

log = logging.getLogger("pushproxy.webpush")

Key = tuple[str, str]  # (account, sub_id)


def is_expired(sub: WebPushSubscription, now: float) -> bool:
    """Never acknowledged, and ``webpush.ack_expiry`` has passed."""
    return not sub.active and sub.ack_expires is not None and sub.ack_expires <= now


class UndeliveredVerifications:
    """(account, id) -> token hash of a verification push that was not delivered (an identical WEBPUSH
    may then send a new one).

    An entry is worth keeping only while the subscription version it names can
    be acknowledged: ``keep`` (``webpush.ack_expiry``) after it was recorded
    that version has expired.  Entries are kept in the order they were
    recorded, which is the order they become useless, so :meth:`prune` costs
    what it drops, whatever the number of subscriptions.
    """

    def __init__(self, keep: float, clock: Callable[[], float]) -> None:
        self._keep = keep
        self._clock = clock
        self._entries: dict[Key, tuple[bytes, float]] = {}  # insertion order = order of the second field

    def __setitem__(self, key: Key, token_hash: bytes) -> None:
        self._entries.pop(key, None)  # to the end: recorded now
        self._entries[key] = (token_hash, self._clock() + self._keep)

    def get(self, key: Key) -> bytes | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def pop(self, key: Key, default: None = None) -> bytes | None:
        entry = self._entries.pop(key, None)
        return default if entry is None else entry[0]

    def __len__(self) -> int:
        return len(self._entries)

    def prune(self, now: float) -> int:
        """Drop the entries useless at ``now`` (the leading ones); how many."""
        stale: list[Key] = []
        for key, (_, until) in self._entries.items():
            if until > now:
                break
            stale.append(key)
        for key in stale:
            del self._entries[key]
        return len(stale)


class SubscriptionMaintenance:
    store: Store
    process: WebPushProcess
    subscriptions: WebPushQueries
    limiter: VerificationLimiter
    clock: Callable[[], float]
    _undelivered: UndeliveredVerifications
    _sweep_interval: float
    _sweep_batch: int

    async def _registration_changed(self, account: str, session_id: str | None) -> None:
        raise NotImplementedError

    async def _expire_account(self, account: str, now: float) -> dict[str, WebPushSubscription]:
        """Delete this account's expired unacknowledged subscriptions; the others by id.

        The caller holds the account lock.  An expired subscription sent again
        is thus created afresh (and must fit the limit).
        """
        remaining: dict[str, WebPushSubscription] = {}
        for sub in await self.subscriptions.subscriptions_for_account(account):
            if is_expired(sub, now):
                await self.subscriptions.delete_subscription(account, sub.sub_id)
                metrics.WEBPUSH_VERIFICATIONS.labels(result="expired").inc()
                log.info("webpush %s/%s: not acknowledged in time; deleted", account, sub.sub_id)
            else:
                remaining[sub.sub_id] = sub
        return remaining

    async def sweep(self) -> int:
        """Delete every expired unacknowledged subscription (in batches) and set the gauge; how many were deleted.

        The gauge is set here only (at most a sweep interval old), counted by
        the database: nothing is read or decrypted.
        """
        await self.limiter.prune()
        now = self.clock()
        deleted = await in_batches(lambda limit: self.expire_batch(now, limit), self._sweep_batch)
        self._undelivered.prune(now)
        counts = await self.subscriptions.count_by_state(now, self.process.instance_id)
        set_state_gauge(metrics.WEBPUSH_SUBSCRIPTIONS, counts, metrics.WEBPUSH_SUBSCRIPTION_STATES)
        return deleted

    async def expire_batch(self, now: float, limit: int) -> int:
        """One step of the sweep: at most ``limit`` expired subscriptions deleted (nothing decrypted)."""
        gone = await self.subscriptions.expire_inactive_subscriptions(now, limit)
        if not gone:
            return 0
        metrics.WEBPUSH_VERIFICATIONS.labels(result="expired").inc(len(gone))
        for key in gone:
            self._undelivered.pop(key)
        shown = ", ".join(f"{account}/{sub_id}" for account, sub_id in gone[:5])
        more = f" and {len(gone) - 5} more" if len(gone) > 5 else ""
        log.info("webpush: %d subscription(s) not acknowledged in time; deleted: %s%s", len(gone), shown, more)
        for account in sorted({account for account, _ in gone}):
            await self._registration_changed(account, None)
        return len(gone)

    async def _maintain(self) -> None:
        """Sweep now and every sweep interval (an outage: the next round; a bug: one line and one count)."""
        await Housekeeping("webpush", self.sweep, self._sweep_interval).run()
