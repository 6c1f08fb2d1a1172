"""Helpers for framer tests: feed chunks, merge frames so that different chunkings compare equal."""

from __future__ import annotations

from pushproxy.imap.framing import Framer, Line, LinePart, LineTooLong, LiteralChunk


def frames(framer: Framer, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    for c in chunks:
        out.extend(framer.receive_data(c))
    return out


def normalise(events: list[object]) -> list[tuple[object, ...]]:
    """Merge literal chunks / line parts so that different splits compare equal."""
    out: list[tuple[object, ...]] = []
    for ev in events:
        if isinstance(ev, LiteralChunk):
            if out and out[-1][0] == "lit" and not out[-1][2]:
                out[-1] = ("lit", out[-1][1] + ev.data, ev.last)
            else:
                out.append(("lit", ev.data, ev.last))
        elif isinstance(ev, LinePart):
            if out and out[-1][0] == "part" and not out[-1][2]:
                out[-1] = ("part", out[-1][1] + ev.data, ev.end, ev.literal)
            else:
                out.append(("part", ev.data, ev.end, ev.literal))
        elif isinstance(ev, Line):
            out.append(("line", ev.data, ev.literal, ev.continued))
        elif isinstance(ev, LineTooLong):
            out.append(("toolong", ev.head, ev.continued, ev.skipped_literal))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]
