"""The framer's pass-through contract, on generated IMAP streams cut anywhere.

- the frames are the same whatever the chunking (literal bodies and line parts
  merged), in both directions;
- the frames' bytes, joined, are the stream: nothing added, lost or reordered;
- when :attr:`Framer.exact` is set after a read, the frames of that read are
  exactly the bytes read, so a relay may forward the received object itself;
  a read that is all literal body comes back as that very object.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pushproxy.imap.framing import Framer, Line, LinePart, LiteralChunk
from tests.support.framing import normalise, split_at

_ATOM = st.text(alphabet="abcdefgXYZ0123456789()[]<>.*\\", min_size=1, max_size=12).map(str.encode)
_BODY = st.binary(max_size=300) | st.sampled_from([b"\r\n", b"{5}\r\n", b"a OK {3}\r\n* BYE\r\n", b"}\r\n"])


@st.composite
def _literal(draw: st.DrawFn) -> tuple[bytes, bytes]:
    body = draw(_BODY)
    marker = draw(st.sampled_from([b"", b"+", b"-"]))
    binary = draw(st.booleans())
    return (b"~" if binary else b"") + b"{%d%s}" % (len(body), marker), body


@st.composite
def client_stream(draw: st.DrawFn) -> bytes:
    out = bytearray()
    for i in range(draw(st.integers(1, 8))):
        out += b"t%d %s" % (i, draw(st.sampled_from([b"NOOP", b"APPEND", b"UID FETCH", b"LOGIN", b"SEARCH"])))
        for _ in range(draw(st.integers(0, 3))):
            out += b" " + draw(_ATOM)
            if draw(st.booleans()):
                spec, body = draw(_literal())
                out += b" " + spec + b"\r\n" + body
        out += b"\r\n"
    return bytes(out)


@st.composite
def server_stream(draw: st.DrawFn) -> bytes:
    out = bytearray()
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["fetch", "status", "untagged", "cont", "long"]))
        if kind == "fetch":
            out += b"* %d FETCH (UID %d" % (i + 1, i)
            for _ in range(draw(st.integers(0, 2))):
                spec, body = draw(_literal())
                out += b" BODY[] " + spec + b"\r\n" + body
            out += b")\r\n"
        elif kind == "status":
            # status text ending in "{5}" announces nothing
            out += draw(st.sampled_from([b"* OK", b"t1 OK", b"t2 NO", b"* BYE"])) + b" text {5}\r\n"
        elif kind == "untagged":
            out += b"* " + b" ".join(draw(st.lists(_ATOM, min_size=1, max_size=5))) + b"\r\n"
        elif kind == "cont":
            out += b"+ go ahead\r\n"
        else:
            out += b"* SEARCH " + b"1 " * draw(st.integers(40, 120)) + b"\r\n"  # over max_line below
    return bytes(out)


def _stream(server: bool) -> st.SearchStrategy[bytes]:
    return server_stream() if server else client_stream()


def _frame_bytes(ev: object) -> bytes:
    assert isinstance(ev, Line | LiteralChunk | LinePart)
    return ev.data


@st.composite
def _case(draw: st.DrawFn) -> tuple[bool, bytes, list[bytes]]:
    server = draw(st.booleans())
    stream = draw(_stream(server))
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=10))
    return server, stream, split_at(stream, cuts)


@settings(max_examples=400, deadline=None)
@given(_case())
def test_frames_do_not_depend_on_chunking(case: tuple[bool, bytes, list[bytes]]) -> None:
    server, stream, pieces = case
    max_line = 200 if server else 65536  # server streams include overlong lines: streamed as parts
    whole = Framer(server=server, max_line=max_line)
    expected = normalise(whole.receive_data(stream))
    assert whole.exact
    framer = Framer(server=server, max_line=max_line)
    got: list[object] = []
    for piece in pieces:
        got.extend(framer.receive_data(piece))
    assert normalise(got) == expected


@settings(max_examples=400, deadline=None)
@given(_case())
def test_forwarding_received_objects_reproduces_the_stream(case: tuple[bool, bytes, list[bytes]]) -> None:
    """A relay writing the read itself when ``exact`` (else the frames' bytes) is byte-identical."""
    server, stream, pieces = case
    framer = Framer(server=server, max_line=200 if server else 65536)
    out = bytearray()
    zero_copy = 0
    for piece in pieces:
        events = framer.receive_data(piece)
        frames = b"".join(_frame_bytes(ev) for ev in events)
        if framer.exact:
            assert frames == piece
            out += piece
            zero_copy += 1
        else:
            out += frames
        if len(events) == 1 and isinstance(events[0], LiteralChunk) and events[0].data == piece:
            assert events[0].data is piece  # an all-body read is handed on as is
    assert bytes(out) == stream
    if len(pieces) == 1:
        assert zero_copy == 1  # a stream read whole is always forwarded as is


def test_exact_is_false_while_a_line_is_incomplete() -> None:
    f = Framer(server=True)
    assert f.receive_data(b"* 1 EXISTS\r\n* 2 EXI") == [Line(b"* 1 EXISTS\r\n", None, False)]
    assert not f.exact
    assert f.receive_data(b"STS\r\n") == [Line(b"* 2 EXISTS\r\n", None, False)]
    assert not f.exact  # the line began in the earlier read
    assert f.receive_data(b"a OK\r\n") == [Line(b"a OK\r\n", None, False)]
    assert f.exact


def test_exact_is_false_when_bytes_are_discarded() -> None:
    f = Framer(server=False, max_line=20)
    f.receive_data(b"a1 X " + b"y" * 40 + b"\r\n")
    assert not f.exact  # an overlong client line is dropped
    f.receive_data(b"a2 NOOP\r\n")
    assert f.exact
    f.skip_literal(3)
    f.receive_data(b"abc")
    assert not f.exact


def test_single_line_read_is_the_same_object() -> None:
    f = Framer(server=False)
    data = b"a1 NOOP\r\n"
    (ev,) = f.receive_data(data)
    assert isinstance(ev, Line) and ev.data is data and f.exact


def test_transport_remainder_after_a_partial_send() -> None:
    from pushproxy.proxy.transport import _after

    parts = [b"abc", memoryview(b"defg"), b"h"]
    assert [_after(parts, n) for n in (0, 2, 3, 6, 7, 8)] == [b"abcdefgh", b"cdefgh", b"defgh", b"gh", b"h", b""]


def test_outbox_gathers_a_chunks_writes_into_one_in_order() -> None:
    from pushproxy.proxy.transport import Outbox

    class Sink:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

    sink = Sink()
    box = Outbox(sink)
    box.write(b"a")  # not gathering: at once
    box.gather()
    box.write(b"b")
    box.write(b"c")
    assert sink.writes == [b"a"]
    box.flush()
    box.write(b"d")  # gathering ended with the flush
    assert sink.writes == [b"a", b"bc", b"d"]


def test_outbox_gathering_nests_and_sends_bounded_batches() -> None:
    from pushproxy.proxy.transport import Outbox

    class Sink:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

    sink = Sink()
    box = Outbox(sink)
    box.gather()  # a TLS read ...
    box.gather()  # ... delivering one record
    box.write(b"a")
    box.flush()
    assert sink.writes == []  # the read is not over
    box.write(b"x" * 70_000)  # over the batch bound: sent while the read goes on
    assert sink.writes == [b"a" + b"x" * 70_000]
    box.write(b"b")
    box.send_now()  # before STARTTLS or closing
    box.write(b"c")
    box.flush()
    assert sink.writes == [b"a" + b"x" * 70_000, b"b", b"c"]
