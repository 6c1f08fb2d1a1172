"""Mail events to WebPush subscriptions: who gets what, and what a push service's answer changes.

:class:`WebPushDelivery` is the dispatcher's WebPush target.  Every change in the
watched mailboxes goes to every active, not silenced subscription of the
account (the draft has no event selection): new mail at once (``Urgency:
high``), expunges and flag changes coalesced per mailbox while a burst lasts
(:mod:`pushproxy.extensions.webpush.changes`; ``Urgency: normal``), so a bulk move or
"mark all read" gives a few pushes, never hundreds.  The plaintext is built
once per event or burst (:mod:`pushproxy.extensions.webpush.payload`, with its fallbacks)
and sent to all subscriptions concurrently: a slow push service delays
nobody else; the pushes of one burst reach one subscription in order.

Nothing but the verification push (sent by the WEBPUSH command handler) ever
goes to an inactive subscription: that is what keeps the proxy from being a
flood amplifier for arbitrary URLs.

The silence state and the per-account locks are shared with the WEBPUSH
command handlers through the process's
:class:`~pushproxy.extensions.webpush.process.WebPushProcess`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from pushproxy import metrics as core_metrics
from pushproxy.config import Config
from pushproxy.events import Expunge, FlagChange, MailEvent, NewMail
from pushproxy.extensions.webpush import metrics
from pushproxy.extensions.webpush.changes import MAX_DELAY, QUIET, PendingChanges
from pushproxy.extensions.webpush.mailboxes import WatchedMailboxes
from pushproxy.extensions.webpush.payload import (
    PayloadResult,
    PayloadTooLarge,
    change_payloads,
    new_mail_payloads,
    sync_payload,
)
from pushproxy.extensions.webpush.process import WebPushProcess
from pushproxy.extensions.webpush.sender import SenderClosed, Urgency, WebPushResult, WebPushSender, endpoint_tag
from pushproxy.extensions.webpush.settings import webpush_settings
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription
from pushproxy.store.base import Store, StoreUnavailable

log = logging.getLogger("pushproxy.webpush")

# A success is written back at most this often per subscription: every push
# would otherwise cost a synchronous (fsync'd) store write.
LAST_SUCCESS_RESOLUTION = 60.0


def same_version(a: WebPushSubscription, b: WebPushSubscription) -> bool:
    """Still the subscription a push was sent to (not replaced or re-keyed meanwhile)."""
    return (a.endpoint, a.p256dh, a.auth, a.vapid_key_id, a.active) == (
        b.endpoint,
        b.p256dh,
        b.auth,
        b.vapid_key_id,
        b.active,
    )


MailboxFilter = Callable[[str, str], bool]  # (account, mailbox) -> pushed to WebPush subscriptions?


class WebPushDelivery:
    def __init__(
        self,
        config: Config,
        store: Store,
        sender: WebPushSender,
        process: WebPushProcess,
        *,
        clock: Callable[[], float] = time.time,
        mailbox_filter: MailboxFilter | None = None,
        quiet: float = QUIET,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self.config = config
        self.store = store
        self.subscriptions = store.queries(WebPushQueries)
        self.sender = sender
        self.process = process
        self.clock = clock
        # Which mailboxes' events reach the subscriptions: a fixed webpush.mailboxes list, or
        # (mode "subscribed") the account's subscribed ones as last listed (the extension's
        # WatchedMailboxes; without it, INBOX alone).
        self.mailbox_filter = mailbox_filter or WatchedMailboxes(webpush_settings(config).mailboxes, 1).pushed
        self.quiet = quiet
        self.max_delay = max_delay
        self._pending: dict[tuple[str, str], PendingChanges] = {}
        self._timers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._sending: set[asyncio.Future[list[None]]] = set()
        # Bursts waiting for their quiet period, and send batches in flight.
        core_metrics.report_queue(metrics.SERVICE, lambda: len(self._pending) + len(self._sending))

    async def deliver(self, event: MailEvent) -> None:
        if not self.mailbox_filter(event.account, event.mailbox):
            return
        key = (event.account, event.mailbox)
        if isinstance(event, NewMail):
            await self._flush_key(key)  # changes before the new mail that follows them
            built = self._new_mail(event)
            if built:
                await self._send_all(event.account, built, "high", event.mailbox)
            return
        if (isinstance(event, Expunge) and not event.uids) or (isinstance(event, FlagChange) and not event.changes):
            return
        now = time.monotonic()
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = PendingChanges(now, now)
        pending.add(event, now)
        if key not in self._timers:
            self._timers[key] = asyncio.ensure_future(self._flush_when_quiet(key))

    async def flush(self) -> None:
        """Push every pending burst now and wait for all pushes in flight (tests, shutdown)."""
        for key in list(self._pending):
            await self._flush_key(key)
        while self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)

    async def _flush_when_quiet(self, key: tuple[str, str]) -> None:
        while (pending := self._pending.get(key)) is not None:
            delay = pending.due(time.monotonic(), self.quiet, self.max_delay)
            if delay <= 0:
                break
            await asyncio.sleep(delay)
        await self._flush_key(key)

    async def _flush_key(self, key: tuple[str, str]) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        account, mailbox = key
        try:
            if pending.overflow:
                payloads = [PayloadResult(sync_payload(mailbox), "sync")]
            else:
                payloads = change_payloads(mailbox, pending.vanished, pending.flag_changes())
        except (PayloadTooLarge, ValueError) as exc:
            log.warning("webpush %s: no push for changes in a mailbox: %s", account, exc)
            return
        if payloads:
            await self._send_all(account, payloads, "normal", mailbox)

    def _new_mail(self, event: NewMail) -> list[PayloadResult]:
        """The pushes of a batch of new mail: per message, bounded (see payload.new_mail_payloads)."""
        try:
            return new_mail_payloads(event.mailbox, event.messages)
        except (PayloadTooLarge, ValueError) as exc:
            log.warning("webpush %s: no push for an event in a mailbox: %s", event.account, exc)
        return []

    async def _send_all(self, account: str, payloads: Sequence[PayloadResult], urgency: Urgency, mailbox: str) -> None:
        """Every payload to every active, not silenced subscription; in order per subscription."""
        subs = await self.subscriptions.subscriptions_for_account(account)
        now = self.clock()
        targets = [s for s in subs if s.active and self.process.silence_remaining(s, now) == 0]
        if not targets:
            return
        for payload in payloads:
            if payload.level != "full":
                metrics.WEBPUSH_PAYLOAD_FALLBACKS.labels(level=payload.level).inc()

        async def in_order(sub: WebPushSubscription) -> None:
            for payload in payloads:
                await self._send_one(sub, payload.data, urgency, mailbox)

        # Shielded: a flush timer cancelled while sending must not cut a burst short.
        sending = asyncio.gather(*(in_order(sub) for sub in targets))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)
        await asyncio.shield(sending)

    async def _send_one(self, sub: WebPushSubscription, data: bytes, urgency: Urgency, mailbox: str) -> None:
        ttl = webpush_settings(self.config).ttl
        try:
            result = await self.sender.send(sub, data, urgency=urgency, ttl=ttl)
            if result.outcome == "too_large":
                # 413 from the push service (or a plaintext over the limit): the smallest form.
                metrics.WEBPUSH_PAYLOAD_FALLBACKS.labels(level="sync").inc()
                result = await self.sender.send(sub, sync_payload(mailbox), urgency=urgency, ttl=ttl)
            await self._apply(sub, result)
        except SenderClosed as exc:
            # Shutting down while a push was in flight (a hanging push service outlasted the
            # pipeline's close timeout): not the subscription's failure, so nothing is recorded.
            log.info("webpush %s/%s: push not sent, shutting down (%s)", sub.account, sub.sub_id, exc)
        except StoreUnavailable as exc:
            # Sent (or refused) all the same; only its outcome is not recorded (the store logged the episode).
            log.debug("webpush %s/%s: outcome of a push not recorded: %s", sub.account, sub.sub_id, exc.reason)
        except Exception:
            # One subscription's trouble must not cancel the pushes to the others.
            log.exception("webpush %s/%s %s: delivery failed", sub.account, sub.sub_id, endpoint_tag(sub.endpoint))

    async def _apply(self, sent_to: WebPushSubscription, result: WebPushResult) -> None:
        """Record what the push service said, on the subscription as it is now (if still the same one)."""
        outcome = result.outcome
        who = f"{sent_to.account}/{sent_to.sub_id} {endpoint_tag(sent_to.endpoint)}"
        now = self.clock()
        if outcome == "ok" and sent_to.failures == 0 and sent_to.last_success is not None:
            if now - sent_to.last_success < LAST_SUCCESS_RESOLUTION:
                return  # nothing worth a store write
        if not self.store.health.up:
            return  # the store is away (said once by its health): a later push's outcome is recorded
        async with self.process.account_lock(sent_to.account):
            current = await self.subscriptions.get_subscription(sent_to.account, sent_to.sub_id)
            if current is None or not same_version(current, sent_to):
                return  # deleted or replaced while the push was in flight: the answer is about the old one
            if outcome == "ok":
                current.last_success = now
                current.failures = 0
            elif outcome == "delete":
                await self.subscriptions.delete_subscription(current.account, current.sub_id)
                log.info("webpush %s: the push service says it is gone (%s); deleted", who, result.detail)
                return
            elif outcome == "deactivate":
                # VAPID rejected: the client must subscribe again and acknowledge.  Pinned
                # interpretation: from now on it is an unacknowledged subscription, which
                # expires like any other unless the client sends WEBPUSH again.
                current.active = False
                current.ack_token_hash = None
                current.ack_expires = now + webpush_settings(self.config).ack_expiry
                log.info("webpush %s: VAPID rejected (%s); deactivated", who, result.detail)
            else:  # dropped, failed, refused, too_large even as SYNC
                current.failures += 1
            current.updated = now
            await self.subscriptions.put_subscription(current)
