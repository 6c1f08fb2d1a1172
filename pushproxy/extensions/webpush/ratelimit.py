"""How many verification pushes the proxy sends, per endpoint and per account, per hour.

The verification push (``* ACKWEBPUSH <token>``) is the one push that goes to
a URL nobody has proved to control yet; without a bound, one session could
make the proxy POST to a third party's URL as fast as it can send WEBPUSH
(issue 9: about 1,300 per minute).  Pinned interpretation of the draft's
"rate-limited per endpoint and per account": a sliding window of one hour,
``webpush.verification_per_endpoint_per_hour`` and
``webpush.verification_per_account_per_hour``; beyond either, WEBPUSH gets
``NO [LIMIT]`` and nothing is stored or sent.

The counts live in this process (a restart forgets them; with several nodes
each node applies the bound).  Memory is bounded: a key only exists while it
has sends in the last hour, and a new endpoint key can only appear when its
account is under its own limit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW = 3600.0


class SlidingWindow:
    """At most ``limit`` events per key within ``window`` seconds."""

    def __init__(self, limit: int, window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and now - events[0] >= self.window:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def allows(self, key: str) -> bool:
        events = self._recent(key, self._clock())
        return events is None or len(events) < self.limit

    def record(self, key: str) -> None:
        now = self._clock()
        events = self._recent(key, now)
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit)
        events.append(now)

    def prune(self) -> None:
        """Forget keys with nothing in the window (called by the maintenance loop)."""
        now = self._clock()
        for key in list(self._events):
            self._recent(key, now)

    def __len__(self) -> int:
        return len(self._events)


class VerificationLimiter:
    """The per-endpoint and per-account bounds together; endpoints are keyed as stored."""

    def __init__(self, per_endpoint: int, per_account: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoints = SlidingWindow(per_endpoint, clock=clock)
        self.accounts = SlidingWindow(per_account, clock=clock)

    def refusal(self, account: str, endpoint: str) -> str | None:
        """None when one more verification push may go out, else the reason for ``NO [LIMIT]``."""
        if not self.accounts.allows(account):
            return (
                f"Too many WEBPUSH verification pushes for this account "
                f"(at most {self.accounts.limit} per hour); try again later"
            )
        if not self.endpoints.allows(endpoint):
            return (
                f"Too many WEBPUSH verification pushes to this endpoint "
                f"(at most {self.endpoints.limit} per hour); try again later"
            )
        return None

    def record(self, account: str, endpoint: str) -> None:
        self.accounts.record(account)
        self.endpoints.record(endpoint)

    def prune(self) -> None:
        self.accounts.prune()
        self.endpoints.prune()
