"""Rows to records (pushproxy/store/records.py:record_from_row), as every back end's rows go through it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pushproxy.extensions.webpush.store import VapidKey, vapid_key_from_row
from pushproxy.store.records import MailboxState, mailbox_state_from_row, record_from_row


@dataclass
class _Sample:
    name: str
    count: int
    seen: float
    flag: bool
    blob: bytes | None
    later: float | None = None
    parsed: list[str] = field(default_factory=list)


def test_each_column_becomes_its_field_type_and_given_fields_are_taken_as_they_are() -> None:
    row = {"name": "alice", "count": 3, "seen": 7, "flag": 1, "blob": memoryview(b"\x01\x02"), "later": None}
    got = record_from_row(_Sample, row, parsed=["INBOX"])
    assert got == _Sample("alice", 3, 7.0, True, b"\x01\x02", None, ["INBOX"])
    assert type(got.seen) is float and type(got.flag) is bool and type(got.blob) is bytes


def test_a_field_that_is_no_column_type_must_be_given() -> None:
    row = {"name": "a", "count": 0, "seen": 0, "flag": 0, "blob": None, "later": None}
    with pytest.raises(TypeError, match=r"_Sample\.parsed"):
        record_from_row(_Sample, row)


def test_the_core_and_extension_records_read_as_before() -> None:
    state = {"account": "a", "mailbox": "INBOX", "uidvalidity": 5, "uidnext": 9, "highestmodseq": None, "updated": 2}
    assert mailbox_state_from_row(state) == MailboxState("a", "INBOX", 5, 9, None, 2.0)
    assert mailbox_state_from_row({**state, "highestmodseq": 11}).highestmodseq == 11
    key = {"key_id": "k", "public_key": "B..", "private_key_path": "/k.pem", "created": 1, "current": 0}
    assert vapid_key_from_row(key) == VapidKey("k", "B..", "/k.pem", 1.0, False)
