"""The one backoff helper and the one Retry-After parser (pushproxy.retry)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pushproxy.retry import Backoff, backoff_delay, parse_retry_after, retry_delay

# 2015-10-21 07:28:00 UTC
WHEN = 1445412480.0


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(1.0, 8.0)
    delays = [b.next() for _ in range(8)]
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    for d, c in zip(delays, ceilings, strict=True):
        assert c / 2 <= d <= c
    b.reset()
    assert b.next() <= 1.0
    assert Backoff(0.0, 5.0).next() == 0.0


def test_backoff_survives_many_attempts() -> None:
    b = Backoff(0.5, 60.0)
    for _ in range(5000):
        assert 30.0 <= b.next() <= 60.0 or b.attempts < 10
    assert 30.0 <= backoff_delay(10**9, 0.5, 60.0) <= 60.0


@given(st.integers(min_value=0, max_value=10**6), st.floats(0.001, 100.0), st.floats(0.001, 1000.0))
def test_backoff_delay_bounds(attempt: int, base: float, maximum: float) -> None:
    ceiling = min(maximum, base * 2.0 ** min(attempt, 64))
    assert ceiling / 2 <= backoff_delay(attempt, base, maximum) <= ceiling


def test_retry_delay_honours_retry_after_as_a_floor() -> None:
    assert retry_delay(0, 0.001, 0.002, 7.0) == 7.0
    assert retry_delay(0, 0.001, 0.002, None) <= 0.002
    assert 50.0 <= retry_delay(10, 100.0, 100.0, 1.0) <= 100.0  # backoff longer than Retry-After wins


def test_parse_retry_after() -> None:
    # Moved here from tests/integration/test_webpush_sender.py (the parser was the Web Push sender's).
    assert parse_retry_after("120", cap=1e9) == 120.0
    assert parse_retry_after(None, cap=1e9) is None
    assert parse_retry_after("soon", cap=1e9) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", cap=1e9, now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", cap=1e9, now=1445412490.0) == 0.0


def test_parse_retry_after_delta_seconds() -> None:
    assert parse_retry_after("0", cap=60) == 0.0
    assert parse_retry_after(" 5 ", cap=60) == 5.0
    assert parse_retry_after(b"5", cap=60) == 5.0  # raw HTTP/2 header bytes (APNs)
    assert parse_retry_after("9999", cap=60) == 60.0  # capped
    assert parse_retry_after("9" * 40, cap=900) == 900.0


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", cap=60, now=WHEN) == 30.0
    assert parse_retry_after(b"Wed, 21 Oct 2015 07:28:30 GMT", cap=60, now=WHEN) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 09:28:00 GMT", cap=60, now=WHEN) == 60.0  # capped
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", cap=60, now=WHEN) == 0.0  # in the past
    # obsolete forms RFC 9110 still asks recipients to accept
    assert parse_retry_after("Wednesday, 21-Oct-15 07:28:10 GMT", cap=60, now=WHEN) == 10.0
    assert parse_retry_after("Wed Oct 21 07:28:20 2015", cap=60, now=WHEN) == 20.0


def test_parse_retry_after_garbage_is_none() -> None:
    for value in ["", "  ", "-5", "1.5", "1e3", "+3", "soon", "٣", "Wed, 32 Oct 2015 07:28:00 GMT", "x" * 10_000]:
        assert parse_retry_after(value, cap=60, now=WHEN) is None, value
    assert parse_retry_after(b"\xff\xfe", cap=60) is None
    assert parse_retry_after(b"", cap=60) is None


@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)))
def test_parse_retry_after_never_raises_and_stays_in_range(value: str | bytes) -> None:
    seconds = parse_retry_after(value, cap=60.0, now=WHEN)
    assert seconds is None or 0.0 <= seconds <= 60.0
