"""Mail events to WebPush subscriptions: who gets what, and what a push service's answer changes.

:class:`WebPushDelivery` is the dispatcher's WebPush target.  For one event it
reads the account's subscriptions, keeps those that are active, not silenced
and interested (new mail for everyone; expunges and flag changes only for
subscriptions that want changes), builds the plaintext once (with the
envelope -> flags -> SYNC fallback of :mod:`pushproxy.push.payload`) and sends
to all of them concurrently: a slow push service delays nobody else.

Nothing but the verification push (sent by the WEBPUSH command handler) ever
goes to an inactive subscription: that is what keeps the proxy from being a
flood amplifier for arbitrary URLs.

The helpers at the top (silence state, per-account locks) are shared with the
WEBPUSH command handlers, which live in the same process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import weakref
from collections.abc import Callable

from pushproxy import metrics
from pushproxy.config import Config
from pushproxy.events import Expunge, FlagChange, MailEvent, NewMail
from pushproxy.push.dispatch import mailbox_matches
from pushproxy.push.payload import (
    PayloadResult,
    PayloadTooLarge,
    flags_payload,
    new_mail_payload,
    sync_payload,
    vanished_payload,
)
from pushproxy.push.webpush import Urgency, WebPushResult, WebPushSender, endpoint_tag
from pushproxy.store.base import Store, WebPushSubscription

log = logging.getLogger("pushproxy.webpush")

SILENCED_FOR_SESSION = 4294967295  # the state field while silenced until a connection ends
# A success is written back at most this often per subscription: every push
# would otherwise cost a synchronous (fsync'd) store write.
LAST_SUCCESS_RESOLUTION = 60.0

# Session ids are random per connection but not per process; a silence bound
# to a session of an earlier run of the proxy (which ended without lifting it,
# e.g. on a crash) must not silence forever.  So silences are stored as
# "<instance>:<session id>" and only this instance's silences count.  Pinned
# interpretation for several proxy processes on one database: a silence only
# holds in the process that owns the connection.
INSTANCE_ID = secrets.token_hex(8)

_account_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def account_lock(account: str) -> asyncio.Lock:
    """One lock per account, shared by the command handlers and the delivery.

    The store offers whole-record writes only, so every read-modify-write of
    a subscription holds this lock; unused locks disappear with their last user.
    """
    lock = _account_locks.get(account)
    if lock is None:
        lock = asyncio.Lock()
        _account_locks[account] = lock
    return lock


def session_silence_key(session_id: str) -> str:
    return f"{INSTANCE_ID}:{session_id}"


def silence_remaining(sub: WebPushSubscription, now: float) -> int:
    """Seconds of silence left (0 = not silenced); SILENCED_FOR_SESSION while bound to a live connection."""
    if sub.silenced_session is not None and sub.silenced_session.startswith(INSTANCE_ID + ":"):
        return SILENCED_FOR_SESSION
    if sub.silenced_until is not None and sub.silenced_until > now:
        return min(SILENCED_FOR_SESSION, math.ceil(sub.silenced_until - now))
    return 0


def state_of(sub: WebPushSubscription, now: float) -> int | None:
    """The state field of ``* WEBPUSH``: None (NIL) while inactive, else the silence remaining."""
    return silence_remaining(sub, now) if sub.active else None


def same_version(a: WebPushSubscription, b: WebPushSubscription) -> bool:
    """Still the subscription a push was sent to (not replaced or re-keyed meanwhile)."""
    return (a.endpoint, a.p256dh, a.auth, a.vapid_key_id, a.active) == (
        b.endpoint,
        b.p256dh,
        b.auth,
        b.vapid_key_id,
        b.active,
    )


class WebPushDelivery:
    def __init__(
        self, config: Config, store: Store, sender: WebPushSender, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.store = store
        self.sender = sender
        self.clock = clock

    async def deliver(self, event: MailEvent) -> None:
        cfg = self.config.webpush
        if not mailbox_matches(cfg.mailboxes, event.mailbox):
            return
        built = self._payload(event)
        if built is None:
            return
        payload, urgency = built
        subs = await self.store.subscriptions_for_account(event.account)
        now = self.clock()
        wants_changes = not isinstance(event, NewMail)
        targets = [
            s for s in subs if s.active and silence_remaining(s, now) == 0 and (s.want_changes or not wants_changes)
        ]
        if not targets:
            return
        if payload.level != "full":
            metrics.WEBPUSH_PAYLOAD_FALLBACKS.labels(level=payload.level).inc()
        await asyncio.gather(
            *(self._send_one(sub, payload.data, urgency, event.mailbox) for sub in targets),
            return_exceptions=False,
        )

    def _payload(self, event: MailEvent) -> tuple[PayloadResult, Urgency] | None:
        try:
            if isinstance(event, NewMail):
                return new_mail_payload(event.mailbox, event.messages), "high"
            if isinstance(event, Expunge):
                if not event.uids:
                    return None
                return vanished_payload(event.mailbox, event.uids), "normal"
            if isinstance(event, FlagChange):
                if not event.changes:
                    return None
                return flags_payload(event.mailbox, event.changes), "normal"
        except (PayloadTooLarge, ValueError) as exc:
            log.warning("webpush %s: no push for an event in a mailbox: %s", event.account, exc)
        return None

    async def _send_one(self, sub: WebPushSubscription, data: bytes, urgency: Urgency, mailbox: str) -> None:
        ttl = self.config.webpush.ttl
        try:
            result = await self.sender.send(sub, data, urgency=urgency, ttl=ttl)
            if result.outcome == "too_large":
                # 413 from the push service (or a plaintext over the limit): the smallest form.
                metrics.WEBPUSH_PAYLOAD_FALLBACKS.labels(level="sync").inc()
                result = await self.sender.send(sub, sync_payload(mailbox), urgency=urgency, ttl=ttl)
            await self._apply(sub, result)
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
        async with account_lock(sent_to.account):
            current = await self.store.get_subscription(sent_to.account, sent_to.sub_id)
            if current is None or not same_version(current, sent_to):
                return  # deleted or replaced while the push was in flight: the answer is about the old one
            if outcome == "ok":
                current.last_success = now
                current.failures = 0
            elif outcome == "delete":
                await self.store.delete_subscription(current.account, current.sub_id)
                log.info("webpush %s: the push service says it is gone (%s); deleted", who, result.detail)
                return
            elif outcome == "deactivate":
                # VAPID rejected: the client must subscribe again and acknowledge.  Pinned
                # interpretation: from now on it is an unacknowledged subscription, which
                # expires like any other unless the client sends WEBPUSH again.
                current.active = False
                current.ack_token_hash = None
                current.ack_expires = now + self.config.webpush.ack_expiry
                log.info("webpush %s: VAPID rejected (%s); deactivated", who, result.detail)
            else:  # dropped, failed, refused, too_large even as SYNC
                current.failures += 1
            current.updated = now
            await self.store.put_subscription(current)
