"""The session's relay path: streams that need no rewrite go through byte-identical, whatever the chunking.

Generated client commands (literals included) and upstream responses (FETCH
bodies with literals, untagged data, status text that merely ends in
``{5}``) are cut at random points and fed through a logged-in session; both
directions must come out exactly as they went in.  A chunk of complete,
untouched responses is forwarded as the very object received (zero copy).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pushproxy.proxy.session import Session
from tests.support.framing import split_at
from tests.support.sessions import FakeIO, new_session

_ATOM = st.text(alphabet="abcXYZ0123456789.*\\<>[]", min_size=1, max_size=10).map(str.encode)
_BODY = st.binary(max_size=200) | st.sampled_from([b"\r\n", b"{5}\r\n", b"t1 OK {3}\r\n* BYE\r\n", b"+ go\r\n"])


class RecordingIO(FakeIO):
    def __init__(self) -> None:
        super().__init__()
        self.client_writes: list[bytes] = []

    def to_client(self, data: bytes) -> None:
        self.client_writes.append(data)
        super().to_client(data)


def _session() -> tuple[Session, RecordingIO]:
    io = RecordingIO()
    s = new_session(io)
    s.upstream_data(b"* PREAUTH [CAPABILITY IMAP4rev1 LITERAL+] logged in as alice\r\n")
    io.client.clear()
    io.client_writes.clear()
    return s, io


@st.composite
def _commands(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """Client commands with non-synchronising literals (no "+" to wait for); their tags."""
    out = bytearray()
    tags = []
    for i in range(draw(st.integers(1, 6))):
        tag = b"t%d" % i
        tags.append(tag)
        out += tag + b" " + draw(st.sampled_from([b"NOOP", b"APPEND INBOX", b"UID FETCH 1:*", b"SEARCH"]))
        for _ in range(draw(st.integers(0, 3))):
            out += b" " + draw(_ATOM)
            if draw(st.booleans()):
                body = draw(_BODY)
                out += b" {%d+}\r\n" % len(body) + body
        out += b"\r\n"
    return bytes(out), tags


@st.composite
def _responses(draw: st.DrawFn, tags: list[bytes]) -> bytes:
    out = bytearray()
    for n, tag in enumerate(tags):
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["fetch", "data", "status"]))
            if kind == "fetch":
                body = draw(_BODY)
                out += b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (n + 1, n, len(body)) + body + b")\r\n"
            elif kind == "data":
                out += b"* " + b" ".join(draw(st.lists(_ATOM, min_size=1, max_size=4))) + b"\r\n"
            else:
                out += b"* OK text that ends like a literal {5}\r\n"
        out += tag + b" OK done {2}\r\n"
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_unrewritten_streams_pass_byte_identical_in_both_directions(data: st.DataObject) -> None:
    client, tags = data.draw(_commands())
    upstream = data.draw(_responses(tags))
    s, io = _session()
    for piece in split_at(client, data.draw(st.lists(st.integers(0, len(client)), max_size=8))):
        s.client_data(piece)
    assert bytes(io.upstream) == client
    for piece in split_at(upstream, data.draw(st.lists(st.integers(0, len(upstream)), max_size=8))):
        s.upstream_data(piece)
    assert bytes(io.client) == upstream
    assert not io.closed


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_chunk_of_whole_untouched_responses_is_forwarded_as_received(data: st.DataObject) -> None:
    client, tags = data.draw(_commands())
    upstream = data.draw(_responses(tags))
    s, io = _session()
    s.client_data(client)
    s.upstream_data(upstream)
    assert len(io.client_writes) == 1 and io.client_writes[0] is upstream
