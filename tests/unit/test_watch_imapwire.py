"""The watcher's sans-IO IMAP pieces: response framing, FETCH/STATUS/SELECT parsing, quoting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushproxy.imap.response import quote
from pushproxy.push.payload import envelope_from_fields
from pushproxy.watch.imapwire import (
    Literal,
    MalformedResponse,
    ResponseAssembler,
    astring,
    classify,
    mailbox_arg,
    parse_capabilities,
    parse_exists,
    parse_fetch,
    parse_select,
    parse_status,
    parse_uid_set,
    parse_vanished,
    response_code,
    skip_value,
)

ENVELOPE = (
    b'("Mon, 7 Feb 1994 21:52:25 -0800" "a \\"quoted\\" (paren" '
    b'(("Fred Foobar" NIL "foobar" "Blurdybloop.example")) NIL NIL '
    b'((NIL NIL "mooch" "owatagu.example")) NIL NIL NIL "<B27397-0100000@Blurdybloop.example>")'
)


# --------------------------------------------------------------------------- framing


def test_assembler_lines_and_literals() -> None:
    a = ResponseAssembler()
    data = b"* 1 EXISTS\r\n* 2 FETCH (UID 9 ENVELOPE (NIL {7}\r\nab)\r\ncd NIL))\r\nW1 OK done\r\n"
    out = a.feed(data)
    assert out == [
        b"* 1 EXISTS\r\n",
        b"* 2 FETCH (UID 9 ENVELOPE (NIL {7}\r\nab)\r\ncd NIL))\r\n",
        b"W1 OK done\r\n",
    ]
    assert a.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_assembler_any_chunking(cuts: list[int]) -> None:
    data = (
        b"* OK [CAPABILITY IMAP4rev1 IDLE] hi\r\n"
        b"* 3 FETCH (UID 7 FLAGS (\\Seen) ENVELOPE (NIL {12}\r\nsub\r\n{5}\r\nject NIL))\r\n"
        b"* STATUS {4}\r\nNote (UIDNEXT 3)\r\n"
        b"W2 OK ok\r\n"
    )
    whole = ResponseAssembler().feed(data)
    a = ResponseAssembler()
    out: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        out += a.feed(data[pos : pos + step])
        pos += step
        i += 1
    assert out == whole and len(whole) == 4


def test_assembler_text_lines_have_no_literals() -> None:
    # "{5}" at the end of free text (resp-text) is not a literal announcement
    out = ResponseAssembler().feed(b"* OK see {5}\r\nW1 NO nope {3}\r\n+ go {2}\r\n")
    assert out == [b"* OK see {5}\r\n", b"W1 NO nope {3}\r\n", b"+ go {2}\r\n"]


def test_assembler_bounds_memory() -> None:
    a = ResponseAssembler(max_response=1000)
    with pytest.raises(MalformedResponse):
        a.feed(b"* 1 FETCH (BODY[] {5000}\r\n")
    b = ResponseAssembler(max_response=1000)
    with pytest.raises(MalformedResponse):
        b.feed(b"x" * 2000)  # a line without end


# --------------------------------------------------------------------------- values and FETCH


def test_skip_value_kinds() -> None:
    data = b'ATOM "q \\" )" {3}\r\n)(( ((a "b)") c) NIL BODY[HEADER.FIELDS (SUBJECT)]<0> rest'
    pos = 0
    spans = []
    while pos < len(data):
        end = skip_value(data, pos)
        spans.append(data[pos:end])
        pos = end + 1
    assert spans == [
        b"ATOM",
        b'"q \\" )"',
        b"{3}\r\n)((",
        b'((a "b)") c)',
        b"NIL",
        b"BODY[HEADER.FIELDS (SUBJECT)]<0>",
        b"rest",
    ]
    with pytest.raises(MalformedResponse):
        skip_value(b"(a (b)", 0)
    with pytest.raises(MalformedResponse):
        skip_value(b"{10}\r\nshort", 0)


def test_parse_fetch_items() -> None:
    resp = b"* 12 FETCH (UID 345 FLAGS (\\Seen $Junk) ENVELOPE " + ENVELOPE + b" MODSEQ (9876))\r\n"
    item = parse_fetch(resp)
    assert item is not None
    assert item.seq == 12 and item.uid == 345 and item.modseq == 9876
    assert item.flags == ("\\Seen", "$Junk")
    assert item.envelope == ENVELOPE


def test_parse_fetch_envelope_with_literals_and_other_items() -> None:
    env = b'(NIL {9}\r\n(a) "b" ) NIL NIL NIL NIL NIL NIL NIL NIL)'
    resp = b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {5}\r\nx\r\n\r\n ENVELOPE " + env + b" UID 2 FLAGS ())\r\n"
    item = parse_fetch(resp)
    assert item is not None and item.uid == 2 and item.flags == () and item.envelope == env


def test_parse_fetch_flags_only_and_not_fetch() -> None:
    item = parse_fetch(b"* 4 FETCH (FLAGS (\\Deleted))\r\n")
    assert item is not None and item.uid is None and item.flags == ("\\Deleted",)
    assert parse_fetch(b"* 4 EXISTS\r\n") is None
    with pytest.raises(MalformedResponse):
        parse_fetch(b"* 4 FETCH (UID abc)\r\n")
    with pytest.raises(MalformedResponse):
        parse_fetch(b"* 4 FETCH (UID)\r\n")


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
    assert item is not None and item.envelope == env and item.uid == 5 and item.flags == ("\\Recent",)


# --------------------------------------------------------------------------- STATUS, SELECT, misc


def test_parse_status_names() -> None:
    s = parse_status(b'* STATUS "Sent Messages" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 17 HIGHESTMODSEQ 5)\r\n')
    assert s is not None
    assert (s.mailbox, s.messages, s.uidnext, s.uidvalidity, s.highestmodseq) == ("Sent Messages", 2, 3, 17, 5)
    assert parse_status(b"* STATUS inbox (UIDNEXT 1)\r\n").mailbox == "INBOX"  # type: ignore[union-attr]
    utf7 = parse_status(b'* STATUS "Entw&APw-rfe" (UIDNEXT 4)\r\n')
    assert utf7 is not None and utf7.mailbox == "Entwürfe" and utf7.uidvalidity is None
    lit = parse_status(b"* STATUS {5}\r\nNo(t) (UIDNEXT 4)\r\n")
    assert lit is not None and lit.mailbox == "No(t)"
    assert parse_status(b"* 3 EXISTS\r\n") is None
    with pytest.raises(MalformedResponse):
        parse_status(b"* STATUS\r\n")


def test_parse_select() -> None:
    info = parse_select(
        [
            b"* FLAGS (\\Answered \\Seen)\r\n",
            b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n",
            b"* 2 EXISTS\r\n",
            b"* OK [UIDVALIDITY 1795330499] UIDs valid\r\n",
            b"* OK [UIDNEXT 3] Predicted next UID\r\n",
            b"* OK [HIGHESTMODSEQ 3] Highest\r\n",
            b"* VANISHED (EARLIER) 1:2,5\r\n",
            b"* 1 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (3))\r\n",
        ]
    )
    assert (info.uidvalidity, info.uidnext, info.highestmodseq, info.exists) == (1795330499, 3, 3, 2)
    assert info.vanished == [1, 2, 5]
    assert [c.uid for c in info.changed] == [3]
    assert parse_select([b"* OK [NOMODSEQ] none\r\n"]).nomodseq


def test_small_parsers() -> None:
    assert parse_exists(b"* 7 EXISTS\r\n") == 7
    assert parse_exists(b"* 7 RECENT\r\n") is None
    assert parse_vanished(b"* VANISHED 3:5,9\r\n") == (False, [3, 4, 5, 9])
    assert parse_vanished(b"* VANISHED (EARLIER) 2\r\n") == (True, [2])
    assert parse_uid_set(b"5:3") == [3, 4, 5]
    with pytest.raises(MalformedResponse):
        parse_uid_set(b"1:*")
    with pytest.raises(MalformedResponse):
        parse_uid_set(b"1:4000000000")
    assert response_code(b"* OK [UIDNEXT 5] x\r\n") == ("UIDNEXT", "5")
    assert response_code(b"W3 NO [AUTHENTICATIONFAILED] x\r\n") == ("AUTHENTICATIONFAILED", "")
    assert response_code(b"* 1 EXISTS\r\n") is None
    assert parse_capabilities(b"* CAPABILITY IMAP4rev1 idle NOTIFY\r\n") == {"IMAP4REV1", "IDLE", "NOTIFY"}
    assert parse_capabilities(b"W1 OK [CAPABILITY IMAP4rev1 QRESYNC] ok\r\n") == {"IMAP4REV1", "QRESYNC"}
    assert parse_capabilities(b"* OK hi\r\n") is None
    kinds = [b"* 3 EXISTS\r\n", b'* STATUS "x" ()\r\n', b"* 2 FETCH (FLAGS ())\r\n", b"* BYE x\r\n", b"+ idling\r\n"]
    assert [classify(k) for k in kinds] == ["EXISTS", "STATUS", "FETCH", "BYE", "+"]


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
