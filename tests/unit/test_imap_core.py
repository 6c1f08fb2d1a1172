"""The one IMAP wire core: response assembly, value parsing, typed readers (sans-IO), fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushproxy.imap.assemble import MalformedResponse, ResponseAssembler
from pushproxy.imap.commands import Literal, astring, mailbox_arg
from pushproxy.imap.data import (
    parse_capabilities,
    parse_enabled,
    parse_esearch,
    parse_list,
    parse_select,
    parse_status,
    parse_uid_set,
    parse_vanished,
    read_response,
)
from pushproxy.imap.envelope import envelope_from_fields
from pushproxy.imap.fetch import parse_envelope, parse_fetch
from pushproxy.imap.parse import ParseError
from pushproxy.imap.response import quote

ENVELOPE = (
    b'("Mon, 7 Feb 1994 21:52:25 -0800" "a \\"quoted\\" (paren" '
    b'(("Fred Foobar" NIL "foobar" "Blurdybloop.example")) NIL NIL '
    b'((NIL NIL "mooch" "owatagu.example")) NIL NIL NIL "<B27397-0100000@Blurdybloop.example>")'
)

STREAM = (
    b"* OK [CAPABILITY IMAP4rev1 IDLE] hi\r\n"
    b"* 3 FETCH (UID 7 FLAGS (\\Seen) ENVELOPE (NIL {12}\r\nsub\r\n{5}\r\nje NIL NIL NIL NIL NIL NIL NIL NIL))\r\n"
    b"* STATUS {4}\r\nNote (UIDNEXT 3)\r\n"
    b"* OK see {5}\r\n"
    b"* 4 FETCH (BINARY[] ~{3}\r\n\x00\r\n UID 9)\r\n"
    b"W2 OK ok\r\n"
)


def feed_in(chunks: list[bytes], assembler: ResponseAssembler | None = None) -> list[bytes]:
    a = assembler or ResponseAssembler()
    out: list[bytes] = []
    for chunk in chunks:
        out += a.feed(chunk)
    return out


# --------------------------------------------------------------------------- assembly


def test_assembler_lines_and_literals() -> None:
    data = b"* 1 EXISTS\r\n* 2 FETCH (UID 9 ENVELOPE (NIL {7}\r\nab)\r\ncd NIL))\r\nW1 OK done\r\n"
    a = ResponseAssembler()
    assert a.feed(data) == [
        b"* 1 EXISTS\r\n",
        b"* 2 FETCH (UID 9 ENVELOPE (NIL {7}\r\nab)\r\ncd NIL))\r\n",
        b"W1 OK done\r\n",
    ]
    assert a.pending == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_any_chunking_gives_the_same_responses(cuts: list[int]) -> None:
    bounds = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *bounds], [*bounds, len(STREAM)], strict=True)]
    whole = ResponseAssembler().feed(STREAM)
    assert len(whole) == 6
    assert feed_in(chunks) == whole


def test_text_lines_have_no_literals() -> None:
    # "{5}" at the end of free text (resp-text) is not a literal announcement
    out = ResponseAssembler().feed(b"* OK see {5}\r\nW1 NO nope {3}\r\n+ go {2}\r\n")
    assert out == [b"* OK see {5}\r\n", b"W1 NO nope {3}\r\n", b"+ go {2}\r\n"]


def test_assembler_bounds_memory() -> None:
    with pytest.raises(MalformedResponse):
        ResponseAssembler(max_response=1000).feed(b"* 1 FETCH (BODY[] {5000}\r\n" + b"x" * 2000)
    with pytest.raises(MalformedResponse):
        ResponseAssembler(max_response=1000).feed(b"x" * 2000)  # a line without end
    with pytest.raises(MalformedResponse):
        ResponseAssembler().feed(b"* 1 FETCH (BODY[] {99999999999999999999}\r\n")


def test_one_byte_at_a_time_is_linear() -> None:
    """Issue 9 item 6: 1 MB arriving one byte per read costs O(n), counted in bytes touched, not time.

    The old reader re-joined and rescanned its whole buffer on every read (quadratic):
    about 5 * 10**11 byte operations here.  The bound below is a small constant per byte.
    """
    body = b"x" * (512 * 1024)
    line = b"* 1 FETCH (ENVELOPE (" + b'"' + b"y" * (480 * 1024) + b'"' + b" NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    data = line + b" BODY[] {%d}\r\n" % len(body) + body + b")\r\n"
    assert len(data) > 1_000_000
    a = ResponseAssembler()
    out: list[bytes] = []
    for i in range(len(data)):
        out += a.feed(data[i : i + 1])
        assert a.work <= 4 * (i + 1) + 64  # never more than a few touches per byte so far
    assert out == [data]
    whole = ResponseAssembler()
    assert whole.feed(data) == [data]
    assert a.work <= 2 * whole.work  # chunking does not change the work beyond a constant


# --------------------------------------------------------------------------- fuzzing: only the core's error


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_garbage_raises_only_the_core_error(garbage: bytes, step: int) -> None:
    a = ResponseAssembler(max_response=4096)
    try:
        responses = feed_in([garbage[i : i + step] for i in range(0, len(garbage), step)] + [b"\r\n"], a)
    except ParseError:
        return
    for raw in responses:
        try:
            resp = read_response(raw)
            parse_capabilities(resp)
            parse_enabled(resp)
            for reader in (parse_status, parse_list, parse_vanished, parse_esearch):
                try:
                    reader(resp)
                except ParseError:
                    pass
            parse_select([resp])
            parse_fetch(raw)
        except ParseError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"(", b")", b" ", b'"', b"\\", b"{3}\r\n", b"NIL", b"UID", b"1", b"[", b"]"]), max_size=30
    )
)
def test_fetch_fuzz(tokens: list[bytes]) -> None:
    raw = b"* 1 FETCH (" + b"".join(tokens) + b")\r\n"
    try:
        parse_fetch(raw)
    except ParseError:
        pass


# --------------------------------------------------------------------------- FETCH


def test_parse_fetch_items() -> None:
    resp = b"* 12 FETCH (UID 345 FLAGS (\\Seen $Junk) ENVELOPE " + ENVELOPE + b" MODSEQ (9876) RFC822.SIZE 77)\r\n"
    item = parse_fetch(resp)
    assert item.seq == 12 and item.uid == 345 and item.modseq == 9876 and item.size == 77
    assert item.flags == ("\\Seen", "$Junk")
    assert item.envelope == ENVELOPE
    env = parse_envelope(item.envelope)
    assert env.subject == 'a "quoted" (paren' and env.sender[0].email == "foobar@Blurdybloop.example"
    assert env.to[0].email == "mooch@owatagu.example" and env.message_id == "<B27397-0100000@Blurdybloop.example>"


def test_parse_fetch_sections_binary_and_literals() -> None:
    env = b'(NIL {9}\r\n(a) "b" ) NIL NIL NIL NIL NIL NIL NIL NIL)'
    resp = (
        b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {5}\r\nx\r\n\r\n ENVELOPE "
        + env
        + b" UID 2 FLAGS () BINARY[]<0> ~{4}\r\n\x00\x01\r\n BINARY[2] NIL)\r\n"
    )
    item = parse_fetch(resp)
    assert item.uid == 2 and item.flags == () and item.envelope == env
    assert item.sections == {
        "BODY[HEADER.FIELDS (SUBJECT)]": b"x\r\n\r\n",
        "BINARY[]": b"\x00\x01\r\n",
        "BINARY[2]": None,
    }


def test_parse_fetch_refusals() -> None:
    item = parse_fetch(b"* 4 FETCH (FLAGS (\\Deleted))\r\n")
    assert item.uid is None and item.flags == ("\\Deleted",)
    for bad in (b"* 4 EXISTS\r\n", b"* 4 FETCH (UID abc)\r\n", b"* 4 FETCH (UID)\r\n", b"* 4 FETCH (UID 1\r\n"):
        with pytest.raises(MalformedResponse):
            parse_fetch(bad)


@settings(max_examples=300, deadline=None)
@given(
    subject=st.one_of(st.none(), st.text(max_size=60)),
    sender=st.one_of(st.none(), st.text(max_size=40)),
    date=st.one_of(st.none(), st.text(max_size=30)),
)
def test_envelope_round_trips_exactly(subject: str | None, sender: str | None, date: str | None) -> None:
    """Whatever the envelope holds (parens, quotes, CRLF in literals), the raw bytes come back unchanged."""
    env = envelope_from_fields(date, subject, sender, None)
    resp = b"* 1 FETCH (UID 5 ENVELOPE " + env + b" FLAGS (\\Recent))\r\n"
    assembled = ResponseAssembler().feed(resp)
    assert assembled == [resp]
    item = parse_fetch(assembled[0])
    assert item.envelope == env and item.uid == 5 and item.flags == ("\\Recent",)
    parsed = parse_envelope(env)
    if subject is not None:
        assert parsed.subject is not None


# --------------------------------------------------------------------------- other responses


def r(raw: bytes):
    return read_response(raw)


def test_read_response_heads() -> None:
    assert r(b"* 3 EXISTS\r\n").kind == "EXISTS" and r(b"* 3 EXISTS\r\n").number == 3
    assert r(b"+ idling\r\n").kind == "+"
    tagged = r(b"W3 NO [AUTHENTICATIONFAILED] x\r\n")
    assert tagged.tagged and tagged.kind == "NO" and tagged.code == "AUTHENTICATIONFAILED"
    ok = r(b"* OK [UIDNEXT 5] x\r\n")
    assert ok.code == "UIDNEXT" and ok.code_arg == "5" and not ok.tagged
    for bad in (b"garbage\r\n", b"W1 3 FETCH ()\r\n", b"W1 FETCH x\r\n", b"\r\n"):
        with pytest.raises(MalformedResponse):
            read_response(bad)


def test_parse_status_names_both_encodings() -> None:
    s = parse_status(r(b'* STATUS "Sent Messages" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 17 HIGHESTMODSEQ 5)\r\n'))
    assert (s.mailbox, s.messages, s.uidnext, s.uidvalidity, s.highestmodseq) == ("Sent Messages", 2, 3, 17, 5)
    assert parse_status(r(b"* STATUS inbox (UIDNEXT 1)\r\n")).mailbox == "INBOX"
    utf7 = parse_status(r(b'* STATUS "Entw&APw-rfe" (UIDNEXT 4)\r\n'))
    raw_utf8 = parse_status(r('* STATUS "Entwürfe" (MESSAGES 1 UIDNEXT 4 UNSEEN 1)\r\n'.encode()))  # Dovecot NOTIFY
    assert utf7.mailbox == raw_utf8.mailbox == "Entwürfe" and raw_utf8.unseen == 1
    assert parse_status(r(b"* STATUS {5}\r\nNo(t) (UIDNEXT 4)\r\n")).mailbox == "No(t)"
    for bad in (b"* 3 EXISTS\r\n", b"* STATUS\r\n", b"* STATUS x (UIDNEXT)\r\n", b"* STATUS x (UIDNEXT y)\r\n"):
        with pytest.raises(MalformedResponse):
            parse_status(r(bad))


def test_parse_select() -> None:
    info = parse_select(
        [
            r(b"* FLAGS (\\Answered \\Seen)\r\n"),
            r(b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n"),
            r(b"* 2 EXISTS\r\n"),
            r(b"* OK [UIDVALIDITY 1795330499] UIDs valid\r\n"),
            r(b"* OK [UIDNEXT 3] Predicted next UID\r\n"),
            r(b"* OK [HIGHESTMODSEQ 3] Highest\r\n"),
            r(b"* VANISHED (EARLIER) 1:2,5\r\n"),
            r(b"* 1 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (3))\r\n"),
        ]
    )
    assert (info.uidvalidity, info.uidnext, info.highestmodseq, info.exists) == (1795330499, 3, 3, 2)
    assert info.vanished == [1, 2, 5]
    assert [c.uid for c in info.changed] == [3]
    assert parse_select([r(b"* OK [NOMODSEQ] none\r\n")]).nomodseq


def test_list_vanished_esearch_capabilities() -> None:
    item = parse_list(r(b'* LIST (\\HasNoChildren \\Junk) "/" "Spam &AOQ-"\r\n'))
    assert item.mailbox == "Spam ä" and item.delimiter == "/" and item.has("\\junk")
    assert parse_list(r(b"* LSUB () NIL inbox\r\n")).mailbox == "INBOX"
    assert parse_vanished(r(b"* VANISHED 3:5,9\r\n")) == (False, [3, 4, 5, 9])
    assert parse_vanished(r(b"* VANISHED (EARLIER) 2\r\n")) == (True, [2])
    es = parse_esearch(r(b'* ESEARCH (TAG "a1") UID COUNT 3 ALL 4:5,9\r\n'))
    assert es.tag == b"a1" and es.uid and es.results["COUNT"] == "3" and es.all_uids() == [4, 5, 9]
    assert parse_uid_set(b"5:3") == [3, 4, 5]
    for bad in (b"1:*", b"1:4000000000", b""):
        with pytest.raises(MalformedResponse):
            parse_uid_set(bad)
    assert parse_capabilities(r(b"* CAPABILITY IMAP4rev1 idle NOTIFY\r\n")) == {"IMAP4REV1", "IDLE", "NOTIFY"}
    assert parse_capabilities(r(b"W1 OK [CAPABILITY IMAP4rev1 QRESYNC] ok\r\n")) == {"IMAP4REV1", "QRESYNC"}
    assert parse_capabilities(r(b"* OK hi\r\n")) is None
    assert parse_enabled(r(b"* ENABLED QRESYNC condstore\r\n")) == {"QRESYNC", "CONDSTORE"}


def test_command_quoting() -> None:
    assert astring("alice") == b'"alice"'
    assert astring('a"b\\c') == b'"a\\"b\\\\c"'
    assert astring("alice*admin") == b'"alice*admin"'  # "*" is a list wildcard: never a bare atom
    assert astring("pässwörd") == Literal("pässwörd".encode())
    assert astring("a\r\nb") == Literal(b"a\r\nb")  # CR LF cannot end a command early
    assert "bytes" in repr(Literal(b"secret")) and "secret" not in repr(Literal(b"secret"))
    assert mailbox_arg("inbox") == b"INBOX"
    assert mailbox_arg("Sent Messages") == b'"Sent Messages"'
    assert mailbox_arg("Entwürfe") == quote("Entw&APw-rfe")
