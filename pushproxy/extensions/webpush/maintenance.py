"""Subscription maintenance: unacknowledged subscriptions expire, the subscription gauge is kept.

A mixin of :class:`~pushproxy.extensions.webpush.commands.WebPushCommands`
(the commands also delete an account's expired subscriptions before counting
against the limit).  Expiry is told to the watcher supervisor.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from pushproxy.extensions.webpush import metrics
from pushproxy.extensions.webpush.process import WebPushProcess
from pushproxy.extensions.webpush.ratelimit import VerificationLimiter
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription
from pushproxy.metrics import set_state_gauge
from pushproxy.store.base import Store, StoreUnavailable

log = logging.getLogger("pushproxy.webpush")


def is_expired(sub: WebPushSubscription, now: float) -> bool:
    """Never acknowledged, and ``webpush.ack_expiry`` has passed."""
    return not sub.active and sub.ack_expires is not None and sub.ack_expires <= now


class SubscriptionMaintenance:
    store: Store
    process: WebPushProcess
    subscriptions: WebPushQueries
    limiter: VerificationLimiter
    clock: Callable[[], float]
    _undelivered: dict[tuple[str, str], bytes]
    _sweep_interval: float

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
        """Delete every expired unacknowledged subscription and refresh the gauge; how many were deleted.

        The gauge is refreshed here only (at most a minute old): a census after
        every command would read every subscription of every account each time.
        """
        await self.limiter.prune()
        now = self.clock()
        subs = await self.subscriptions.list_subscriptions()
        live = {(s.account, s.sub_id) for s in subs if not is_expired(s, now)}
        for key in [k for k in self._undelivered if k not in live]:
            del self._undelivered[key]
        expired_accounts = sorted({sub.account for sub in subs if is_expired(sub, now)})
        count = 0
        for account in expired_accounts:
            async with self.process.account_lock(account):
                before = len(await self.subscriptions.subscriptions_for_account(account))
                after = len(await self._expire_account(account, now))
            count += before - after
            await self._registration_changed(account, None)
        self._census([sub for sub in subs if not is_expired(sub, now)], now)
        return count

    async def _maintain(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:  # logged once per episode by the store; try again next round
                log.debug("webpush maintenance postponed: %s", exc.reason)
            except Exception as exc:
                log.warning("webpush maintenance failed: %s", type(exc).__name__)
            await asyncio.sleep(self._sweep_interval)

    def _census(self, subs: list[WebPushSubscription], now: float) -> None:
        counts: Counter[str] = Counter()
        for sub in subs:
            if not sub.active:
                counts["inactive"] += 1
            elif self.process.silence_remaining(sub, now):
                counts["silenced"] += 1
            else:
                counts["active"] += 1
        set_state_gauge(metrics.WEBPUSH_SUBSCRIPTIONS, counts, metrics.WEBPUSH_SUBSCRIPTION_STATES)
