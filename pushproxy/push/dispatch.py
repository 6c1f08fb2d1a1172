"""From mailbox events to pushes: who wants this event, once.

Events arrive from the watchers and from Dovecot's ox driver, possibly both for
the same message, and again after a reconnect.  The dispatcher drops what it
has already dispatched (by account, mailbox and UID, for a while), skips
messages that were already ``\\Seen``, then hands each event to the services:
APNs devices whose registered mailboxes include the event's mailbox, and the
account's WebPush subscriptions.  ``submit`` never blocks the caller; a slow
or failing push service never delays another account's events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Protocol

from pushproxy import metrics
from pushproxy.accounts import is_inbox
from pushproxy.events import Expunge, FlagChange, MailEvent, NewMail
from pushproxy.store.base import Store

log = logging.getLogger("pushproxy.dispatch")

_DEDUP_TTL = 3600.0
_DEDUP_MAX = 200_000


class ApnsTarget(Protocol):
    def notify(self, device_token: str, aps_account_id: str, mailbox: str) -> None: ...
    async def flush(self) -> None: ...


class WebPushTarget(Protocol):
    async def deliver(self, event: MailEvent) -> None: ...
    async def flush(self) -> None: ...


def mailbox_matches(registered: list[str], mailbox: str) -> bool:
    """INBOX matches case-insensitively; other names exactly (they are case-sensitive in IMAP)."""
    if is_inbox(mailbox):
        return any(is_inbox(m) for m in registered)
    return mailbox in registered


class Dispatcher:
    def __init__(self, store: Store, apns: ApnsTarget | None = None, webpush: WebPushTarget | None = None) -> None:
        self.store = store
        self.apns = apns
        self.webpush = webpush
        self._seen: OrderedDict[tuple[str, str, int], float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.dispatched = 0  # events that reached at least one service (tests, debug)

    def submit(self, event: MailEvent) -> None:
        """Queue an event; returns at once."""
        if isinstance(event, NewMail):
            fresh = self._fresh(event)
            if fresh is None:
                return
            event = fresh
        task = asyncio.ensure_future(self._process(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fresh(self, event: NewMail) -> NewMail | None:
        """The event without messages already dispatched or already seen; None if nothing is left."""
        now = time.monotonic()
        self._expire(now)
        keep = []
        for msg in event.messages:
            key = (event.account, event.mailbox.upper() if is_inbox(event.mailbox) else event.mailbox, msg.uid)
            if key in self._seen:
                continue
            self._seen[key] = now
            if msg.seen:
                continue  # a Sieve rule or another client already read it
            keep.append(msg)
        if event.messages and not keep:
            return None
        return replace(event, messages=tuple(keep))

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            stamp = next(iter(seen.values()))
            if now - stamp < _DEDUP_TTL and len(seen) <= _DEDUP_MAX:
                break
            seen.popitem(last=False)

    async def _process(self, event: MailEvent) -> None:
        try:
            if isinstance(event, NewMail) and self.apns is not None:
                for device in await self.store.devices_for_account(event.account):
                    if mailbox_matches(device.mailboxes, event.mailbox):
                        self.apns.notify(device.device_token, device.aps_account_id, event.mailbox)
            if self.webpush is not None and isinstance(event, NewMail | Expunge | FlagChange):
                await self.webpush.deliver(event)
            self.dispatched += 1
            metrics.EVENT_DISPATCH_LATENCY.observe(max(0.0, time.monotonic() - event.detected_at))
        except Exception:
            log.exception("dispatching an event for %s failed", event.account)

    async def flush(self) -> None:
        """Wait for queued events (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.webpush is not None:
            await self.webpush.flush()  # coalesced changes waiting for their burst to end
        if self.apns is not None:
            await self.apns.flush()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), 10)
        except TimeoutError:
            for task in self._tasks:
                task.cancel()
