"""Both readers of the session do O(n) work for n bytes, whatever the chunking (issue 9).

1 MB per direction is fed one byte at a time.  Work is not timed: Python line
events are counted (sys.settrace) for a window of single-byte feeds early in the
stream and the same window late in it, and the largest allocation one feed makes
is compared (tracemalloc).  A reader that rescans or copies what it has buffered
does more per byte as the stream goes on; a linear one does the same.
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Callable
from types import FrameType
from typing import Any

from tests.support.sessions import make, settle

MB = 1 << 20
WINDOW = 2000


def _client_stream() -> bytes:
    body = b"x" * (MB // 2)
    small = b"".join(b"c%d NOOP\r\n" % i for i in range(4000))
    longline = b"l1 SEARCH " + b"A" * (MB // 4) + b"\r\n"  # over max_line: discarded with BAD
    return b"a0 APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n" + small + longline


def _upstream_stream() -> bytes:
    body = b"y" * (MB // 2)
    small = b"".join(b"* %d EXISTS\r\n" % i for i in range(8000))
    longline = b"* 1 FETCH (X " + b"B" * (MB // 4) + b")\r\n"  # over the buffer limit: streamed
    return b"* 1 FETCH (BODY[] {%d}\r\n" % len(body) + body + b")\r\n" + small + longline


def _line_events(fn: Callable[[], None]) -> int:
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def _feed_all(feed: Callable[[bytes], None], chunks: list[bytes]) -> None:
    for c in chunks:
        feed(c)


def _largest_allocation(feed: Callable[[bytes], None], chunks: list[bytes]) -> int:
    tracemalloc.start()
    try:
        worst = 0
        for c in chunks:
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            feed(c)
            _, peak = tracemalloc.get_traced_memory()
            worst = max(worst, peak - before)
        return worst
    finally:
        tracemalloc.stop()


def _measure(feed: Callable[[bytes], None], stream: bytes, windows: list[int]) -> list[tuple[int, int]]:
    """(line events, largest allocation) of WINDOW one-byte feeds starting at each offset."""
    results = []
    pos = 0
    for start in windows:
        for i in range(pos, start):
            feed(stream[i : i + 1])
        window = [stream[i : i + 1] for i in range(start, start + WINDOW)]
        half = len(window) // 2
        first = window[:half]
        events = _line_events(lambda first=first: _feed_all(feed, first))  # type: ignore[misc]
        alloc = _largest_allocation(feed, window[half:])
        results.append((events, alloc))
        pos = start + WINDOW
    for i in range(pos, len(stream)):
        feed(stream[i : i + 1])
    return results


def _assert_flat(results: list[tuple[int, int]]) -> None:
    events = [e for e, _ in results]
    allocs = [a for _, a in results]
    # The same kind of bytes costs the same late in the stream as early on.
    assert max(events) <= 1.2 * min(events), events
    assert max(allocs) <= 64 * 1024, allocs


async def test_client_reader_is_linear_one_byte_at_a_time() -> None:
    s, io, _, _ = make()
    s.client_data(b"a LOGIN alice pw\r\n")
    s.upstream_data(b"a OK Logged in\r\n")
    stream = _client_stream()
    body_start = stream.index(b"\r\n") + 2
    small_start = stream.index(b"c0 NOOP")
    long_start = stream.index(b"l1 SEARCH")
    body = _measure(s.client_data, stream[:small_start], [body_start + 1000, small_start - 3 * WINDOW])
    rest = stream[small_start:]
    lines = _measure(s.client_data, rest, [0, long_start - small_start - 3 * WINDOW])
    _assert_flat(body)
    _assert_flat(lines)
    assert len(io.upstream) > MB // 2 and not io.closed


async def test_long_line_reader_is_linear_one_byte_at_a_time() -> None:
    s, io, _, _ = make()
    s.client_data(b"a LOGIN alice pw\r\n")
    s.upstream_data(b"a OK Logged in\r\n")
    line = b"l1 SEARCH " + b"A" * MB + b"\r\n"
    _assert_flat(_measure(s.client_data, line, [70_000, MB - 3 * WINDOW]))
    await settle()
    assert b"l1 BAD" in bytes(io.client) and b"AAAA" not in bytes(io.upstream)


async def test_upstream_reader_is_linear_one_byte_at_a_time() -> None:
    s, io, _, _ = make()
    s.client_data(b"a LOGIN alice pw\r\n")
    s.upstream_data(b"a OK Logged in\r\n")
    s.client_data(b"f FETCH 1 BODY[]\r\n")
    stream = _upstream_stream()
    body_start = stream.index(b"\r\n") + 2
    small_start = stream.index(b"* 0 EXISTS")
    long_start = stream.index(b"* 1 FETCH (X")
    _assert_flat(_measure(s.upstream_data, stream[:small_start], [body_start + 1000, small_start - 3 * WINDOW]))
    rest = stream[small_start:]
    _assert_flat(_measure(s.upstream_data, rest, [0, long_start - small_start - 3 * WINDOW]))
    line = stream[long_start:]
    _assert_flat(_measure(s.upstream_data, line, [(1 << 20) + 1000 - MB + 1000, len(line) - 3 * WINDOW]))
    assert len(io.client) > MB and not io.closed
