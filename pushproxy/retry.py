"""How long to wait before trying again: exponential backoff with jitter, and Retry-After.

Everything that retries uses these: upstream watchers reconnecting and the
APNs sender's retries of one push (:class:`Backoff`), the Web Push sender
(:func:`retry_delay` per attempt); both senders never retry sooner than the
server's Retry-After (:func:`parse_retry_after`) asks.

The jitter is "equal jitter": each delay is drawn from [d/2, d] where d
doubles per attempt up to a maximum, so many clients failing together do not
retry in lockstep, and none retries sooner than half the nominal delay.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["Backoff", "backoff_delay", "parse_retry_after", "retry_delay"]

_MAX_EXPONENT = 64  # 2**64 times any sane base is beyond every maximum; keeps the float finite
_MAX_HEADER = 64  # an HTTP date is 29 characters; anything much longer is not a Retry-After


def backoff_delay(attempt: int, base: float, maximum: float) -> float:
    """The delay before retry number ``attempt`` (0 for the first): in [d/2, d], d = min(maximum, base * 2**attempt)."""
    if base <= 0 or maximum <= 0:
        return 0.0
    ceiling = min(maximum, base * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))
    return random.uniform(ceiling / 2, ceiling)


def retry_delay(attempt: int, base: float, maximum: float, retry_after: float | None = None) -> float:
    """:func:`backoff_delay`, but never shorter than what the server asked for (``retry_after``, already capped)."""
    delay = backoff_delay(attempt, base, maximum)
    return delay if retry_after is None else max(delay, retry_after)


def parse_retry_after(value: str | bytes | None, *, cap: float, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header value (RFC 9110: delta-seconds or an HTTP date), at most ``cap``.

    None when the header is absent or not one of the two forms; a date in the
    past is 0.  ``now`` (epoch seconds) is for tests; default: the clock.
    """
    if not value or len(value) > _MAX_HEADER:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, min(when.timestamp() - current, cap))


class Backoff:
    """Successive :func:`backoff_delay` values from ``minimum`` up to ``maximum``; :meth:`reset` after a success."""

    __slots__ = ("_attempt", "maximum", "minimum")

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = max(0.0, minimum)
        self.maximum = max(self.minimum, maximum)
        self._attempt = 0

    def next(self) -> float:
        delay = backoff_delay(self._attempt, self.minimum, self.maximum)
        self._attempt = min(self._attempt + 1, _MAX_EXPONENT)
        return delay

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt
