"""The readers of a command's untagged responses (imap/untagged.py): what they take, and that they hand on the rest."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pushproxy.imap.data import Response, read_response
from pushproxy.imap.untagged import fetched_sections, highest_uid, status_of


def responses(*lines: bytes) -> list[Response]:
    return [read_response(line) for line in lines]


def test_status_of_takes_the_mailbox_asked_for_and_hands_on_the_rest() -> None:
    untagged = responses(
        b"* STATUS Work (UIDNEXT 3 UIDVALIDITY 9)",
        b"* 4 EXISTS",
        b"* STATUS INBOX (UIDNEXT 5 UIDVALIDITY 7 MESSAGES 4)",
        b"* STATUS INBOX (UIDNEXT bad)",
    )
    found, others = status_of("INBOX", untagged)
    assert found is not None and (found.uidnext, found.uidvalidity, found.messages) == (5, 7, 4)
    assert others == [untagged[0], untagged[1], untagged[3]]  # another mailbox, an EXISTS, a malformed STATUS
    assert status_of("Sent", untagged[1:2]) == (None, untagged[1:2])


def test_highest_uid_skips_what_names_no_uid() -> None:
    untagged = responses(b"* 1 FETCH (UID 7)", b"* 2 FETCH (UID 12)", b"* 3 FETCH (FLAGS ())", b"* 3 EXISTS")
    assert highest_uid(untagged) == 12
    assert highest_uid(untagged[2:]) == 0
    assert highest_uid([]) == 0


def test_fetched_sections_keeps_what_fits_and_hands_on_what_has_no_section() -> None:
    untagged = responses(
        b"* 1 FETCH (UID 7 BINARY[] {5}\r\nhello)",
        b"* 2 FETCH (UID 8 BINARY[] {11}\r\nhello world)",  # longer than the limit: left out, not handed on
        b"* 3 FETCH (UID 9 FLAGS (\\Seen))",  # a flag change reported meanwhile
        b"* 4 EXISTS",
    )
    found, others = fetched_sections(untagged, "BINARY[]", 10)
    assert found == {7: b"hello"}
    assert others == untagged[2:]
    assert fetched_sections(untagged, "BODY[]", 10) == ({}, untagged)


BODY_LINE = b"* 1 FETCH (UID 3 BINARY[] {2}\r\nhi)"
FLAGS_LINE = b"* 2 FETCH (UID 4 FLAGS ())"
STATUS_LINE = b"* STATUS INBOX (UIDNEXT 2)"
lines = st.sampled_from(
    [BODY_LINE, FLAGS_LINE, b"* 2 FETCH (UID x)", STATUS_LINE, b"* STATUS INBOX (UIDNEXT", b"* 5 EXISTS", b"* OK x"]
)


@given(st.lists(lines, max_size=12))
def test_every_response_is_taken_or_handed_on_in_order(raw: list[bytes]) -> None:
    untagged = responses(*raw)
    found, others = status_of("INBOX", untagged)
    assert (found is not None) == (STATUS_LINE in raw)
    assert others == [r for r in untagged if r.raw != STATUS_LINE]
    bodies, others = fetched_sections(untagged, "BINARY[]", 10)
    assert bodies == ({3: b"hi"} if BODY_LINE in raw else {})
    assert others == [r for r in untagged if r.raw != BODY_LINE]
    assert highest_uid(untagged) == max([0] + [3] * (BODY_LINE in raw) + [4] * (FLAGS_LINE in raw))
