"""The framer: every split of a stream gives the same frames; garbage never breaks it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushproxy.imap.framing import (
    Framer,
    FramingError,
    Line,
    LinePart,
    LineTooLong,
    LiteralChunk,
    LiteralSpec,
    parse_literal_spec,
)
from tests.support.framing import frames, normalise, split_at

CLIENT_STREAM = (
    b"a1 LOGIN {5}\r\nalice {3+}\r\npw!\r\n"
    b"a2 SELECT INBOX\r\n"
    b"a3 APPEND INBOX (\\Seen) {11}\r\nhello\r\nworld\r\n"
    b"a4 APPEND INBOX ~{4+}\r\n\x00\x01\r\n\r\n"
    b"a5 IDLE\r\nDONE\r\n"
    b"a6 AUTHENTICATE PLAIN\r\nAGFsaWNlAHB3\r\n"
    b"a7 NOOP\r\na8 NOOP\r\n"
    b"a9 APPEND x {0}\r\n\r\n"
)

SERVER_STREAM = (
    b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready {5}\r\n"
    b"* 1 FETCH (BODY[] {12}\r\nline1\r\n{3}\r\n UID 7)\r\n"
    b"+ idling\r\n"
    b"* 2 FETCH (BINARY[] ~{3}\r\n\x00\r\n)\r\n"
    b"a1 OK done {2}\r\n"
    b'* LIST () "/" {4}\r\nab\r\n\r\n'
)


def test_client_stream_frames() -> None:
    evs = normalise(frames(Framer(server=False), [CLIENT_STREAM]))
    assert evs[0] == ("line", b"a1 LOGIN {5}\r\n", LiteralSpec(5, False, False), False)
    assert evs[1] == ("lit", b"alice", True)
    assert evs[2] == ("line", b" {3+}\r\n", LiteralSpec(3, True, False), True)
    # the APPEND literal is 11 bytes: "hello\r\nworl", then "d\r\n" continues the command
    assert ("lit", b"hello\r\nworl", True) in evs
    assert ("line", b"d\r\n", None, True) in evs
    lines = [e[1] for e in evs if e[0] == "line" and not e[3]]
    assert lines == [
        b"a1 LOGIN {5}\r\n",
        b"a2 SELECT INBOX\r\n",
        b"a3 APPEND INBOX (\\Seen) {11}\r\n",
        b"a4 APPEND INBOX ~{4+}\r\n",
        b"a5 IDLE\r\n",
        b"DONE\r\n",
        b"a6 AUTHENTICATE PLAIN\r\n",
        b"AGFsaWNlAHB3\r\n",
        b"a7 NOOP\r\n",
        b"a8 NOOP\r\n",
        b"a9 APPEND x {0}\r\n",
    ]
    binary = next(e for e in evs if e[0] == "line" and e[1] == b"a4 APPEND INBOX ~{4+}\r\n")
    assert binary[2] == LiteralSpec(4, True, True)


def test_server_status_lines_take_no_literal() -> None:
    evs = normalise(frames(Framer(server=True), [SERVER_STREAM]))
    assert evs[0] == ("line", b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready {5}\r\n", None, False)
    assert evs[1][0] == "line" and evs[1][2] == LiteralSpec(12, False, False)
    assert evs[2] == ("lit", b"line1\r\n{3}\r\n", True)
    assert evs[3] == ("line", b" UID 7)\r\n", None, True)
    assert evs[4] == ("line", b"+ idling\r\n", None, False)
    assert evs[5][2] == LiteralSpec(3, False, True)
    tagged = [e for e in evs if e[0] == "line" and e[1].startswith(b"a1 OK")]
    assert tagged[0][2] is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), st.booleans())
def test_any_split_gives_same_frames(cuts: list[int], server: bool) -> None:
    stream = SERVER_STREAM if server else CLIENT_STREAM
    whole = normalise(frames(Framer(server=server), [stream]))
    pieces = split_at(stream, cuts)
    assert b"".join(pieces) == stream
    assert normalise(frames(Framer(server=server), pieces)) == whole


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_bytes_are_preserved_in_order(cuts: list[int]) -> None:
    """Re-joining every frame's bytes gives the input back exactly (server mode)."""
    framer = Framer(server=True, max_line=64)
    stream = SERVER_STREAM + b"* SEARCH " + b"1 " * 200 + b"{3}\r\nabc\r\n"
    out = bytearray()
    for piece in split_at(stream, cuts):
        for ev in framer.receive_data(piece):
            out += ev.data  # type: ignore[union-attr]
    assert bytes(out) == stream


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.booleans(), st.lists(st.integers(0, 400), max_size=5))
def test_garbage_never_raises_foreign_errors(data: bytes, server: bool, cuts: list[int]) -> None:
    framer = Framer(server=server, max_line=64)
    try:
        for piece in split_at(data, cuts):
            framer.receive_data(piece)
    except FramingError:
        pass


def test_overlong_client_line_reported_once_and_stream_resyncs() -> None:
    f = Framer(server=False, max_line=100)
    evs = frames(f, [b"a1 SEARCH " + b"9" * 150, b"9" * 50 + b"\r\na2 NOOP\r\n"])
    assert isinstance(evs[0], LineTooLong) and evs[0].head.startswith(b"a1 SEARCH")
    assert evs[1] == Line(b"a2 NOOP\r\n", None, False)


def test_overlong_client_line_with_nonsync_literal_skips_it() -> None:
    f = Framer(server=False, max_line=100)
    evs = frames(f, [b"a1 X " + b"y" * 200 + b" {5+}\r\n12345\r\na2 NOOP\r\n"])
    assert isinstance(evs[0], LineTooLong) and evs[0].skipped_literal == 5
    assert evs[1] == Line(b"\r\n", None, True)
    assert evs[2] == Line(b"a2 NOOP\r\n", None, False)


def test_overlong_server_line_is_streamed() -> None:
    f = Framer(server=True, max_line=100)
    big = b"* SEARCH " + b"1 " * 500 + b"\r\n"
    evs = frames(f, [big[:300], big[300:], b"a OK\r\n"])
    assert all(isinstance(e, LinePart) for e in evs[:-1])
    assert b"".join(e.data for e in evs[:-1]) == big  # type: ignore[union-attr]
    assert evs[-1] == Line(b"a OK\r\n", None, False)


def test_cancel_literal_after_refusal() -> None:
    f = Framer(server=False)
    assert frames(f, [b"a1 APPEND INBOX {500}\r\n"])[0].literal == LiteralSpec(500, False, False)  # type: ignore[union-attr]
    f.cancel_literal()
    assert frames(f, [b"a2 NOOP\r\n"]) == [Line(b"a2 NOOP\r\n", None, False)]


def test_literal_body_is_a_slice_not_scanned() -> None:
    f = Framer(server=True)
    body = b"\r\n{5}\r\n* BYE fake\r\n" * 1000
    evs = f.receive_data(b"* 1 FETCH (BODY[] {%d}\r\n" % len(body))
    evs += f.receive_data(body)
    assert isinstance(evs[1], LiteralChunk) and evs[1].data is body


@pytest.mark.parametrize(
    "line,spec",
    [
        (b"x {5}\r\n", LiteralSpec(5, False, False)),
        (b"x {5+}\r\n", LiteralSpec(5, True, False)),
        (b"x {5-}\r\n", LiteralSpec(5, True, False)),
        (b"x ~{5}\r\n", LiteralSpec(5, False, True)),
        (b"x {5}\n", LiteralSpec(5, False, False)),
        (b"x {}\r\n", None),
        (b"x {5a}\r\n", None),
        (b'x "{5}"\r\n', None),
    ],
)
def test_parse_literal_spec(line: bytes, spec: LiteralSpec | None) -> None:
    assert parse_literal_spec(line) == spec
