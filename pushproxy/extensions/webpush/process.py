"""What the WebPush parts of one proxy process share: its instance id and the per-account locks.

One :class:`WebPushProcess` is made by the extension's ``start``
(:mod:`pushproxy.extensions.webpush.addon`) and handed to the command handlers
and the delivery; tests make their own, so two in one interpreter never share
locks or silences.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import weakref

from pushproxy.extensions.webpush.store import WebPushSubscription

__all__ = ["SILENCED_FOR_SESSION", "WebPushProcess"]

SILENCED_FOR_SESSION = 4294967295  # the state field while silenced until a connection ends


class WebPushProcess:
    """This process's identity for silences, and one lock per account.

    Session ids are random per connection but not per process; a silence bound
    to a session of an earlier run of the proxy (which ended without lifting it,
    e.g. on a crash) must not silence forever.  So silences are stored as
    ``<instance id>:<session id>`` and only this instance's silences count.
    Pinned interpretation for several proxy processes on one database: a silence
    only holds in the process that owns the connection.
    """

    def __init__(self, instance_id: str | None = None) -> None:
        self.instance_id = instance_id or secrets.token_hex(8)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def account_lock(self, account: str) -> asyncio.Lock:
        """One lock per account, shared by the command handlers and the delivery.

        The store offers whole-record writes only, so every read-modify-write of
        a subscription holds this lock; unused locks disappear with their last user.
        """
        lock = self._locks.get(account)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[account] = lock
        return lock

    def session_silence_key(self, session_id: str) -> str:
        return f"{self.instance_id}:{session_id}"

    def silence_remaining(self, sub: WebPushSubscription, now: float) -> int:
        """Seconds of silence left (0 = not silenced); SILENCED_FOR_SESSION while bound to a live connection."""
        if sub.silenced_session is not None and sub.silenced_session.startswith(self.instance_id + ":"):
            return SILENCED_FOR_SESSION
        if sub.silenced_until is not None and sub.silenced_until > now:
            return min(SILENCED_FOR_SESSION, math.ceil(sub.silenced_until - now))
        return 0

    def state_of(self, sub: WebPushSubscription, now: float) -> int | None:
        """The state field of ``* WEBPUSH``: None (NIL) while inactive, else the silence remaining."""
        return self.silence_remaining(sub, now) if sub.active else None
