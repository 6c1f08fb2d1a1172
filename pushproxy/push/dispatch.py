"""From mailbox events to the extensions, once.

Events arrive from the watchers and from Dovecot's ox driver, possibly both for
the same message, and again after a reconnect.  The dispatcher drops what it
has already dispatched (by account, mailbox and UID, for a while), skips
messages that were already ``\\Seen``, then hands each event to the extension
manager (every extension's ``on_event``: each decides whom it concerns; the
dispatcher knows no protocol).  ``submit`` never blocks the caller; a slow or failing extension
never delays another extension or another account's events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import replace
from typing import Protocol

from pushproxy import metrics
from pushproxy.accounts import is_inbox
from pushproxy.events import MailEvent, NewMail

log = logging.getLogger("pushproxy.dispatch")

_DEDUP_TTL = 3600.0
_DEDUP_MAX = 200_000


def mailbox_matches(registered: Collection[str], mailbox: str) -> bool:
    """INBOX matches case-insensitively; other names exactly (they are case-sensitive in IMAP)."""
    if is_inbox(mailbox):
        return any(is_inbox(m) for m in registered)
    return mailbox in registered


class FanOut(Protocol):
    """Where dispatched events go: :class:`pushproxy.extensions.manager.ExtensionManager` (every extension)."""

    async def on_event(self, event: MailEvent) -> None:
        """Hand the event to every extension; never raises (a failing extension is logged and counted)."""

    async def flush(self) -> None:
        """Wait until what the extensions queued has been sent."""


class Dispatcher:
    def __init__(self, extensions: FanOut) -> None:
        self.extensions = extensions
        self._seen: OrderedDict[tuple[str, str, int], float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.dispatched = 0  # events handed to the extensions (tests, debug)

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
        await self.extensions.on_event(event)  # a failing extension is logged and counted there
        self.dispatched += 1
        metrics.EVENT_DISPATCH_LATENCY.observe(max(0.0, time.monotonic() - event.detected_at))

    async def flush(self) -> None:
        """Wait for queued events, then for what the extensions queued (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.extensions.flush()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), 10)
        except TimeoutError:
            for task in self._tasks:
                task.cancel()
