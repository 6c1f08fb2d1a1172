"""Which devices get a push: the extension's wants_push, on the canonical mailbox names the push pipeline hands on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pushproxy.accounts import canonical_mailbox, mailbox_matches
from pushproxy.extensions.xapplepush.addon import wants_push
from pushproxy.extensions.xapplepush.store import ApnsDevice


def device(*mailboxes: str) -> ApnsDevice:
    return ApnsDevice("alice", "aps-1", "ab" * 32, mailboxes=list(mailboxes))


def test_inbox_in_any_case_other_names_exactly() -> None:
    assert wants_push(device("inbox"), "INBOX")
    assert wants_push(device("INBOX", "Work"), "Work")
    assert not wants_push(device("INBOX", "work"), "Work")
    assert not wants_push(device("Work"), "INBOX")
    assert not wants_push(device(), "INBOX")


names = st.sampled_from(["INBOX", "inbox", "Inbox", "Work", "work", "Archiv/2024", "Entwürfe"])


@given(st.lists(names, max_size=4), names)
def test_the_same_as_mailbox_matches_for_every_canonical_name(registered: list[str], mailbox: str) -> None:
    canonical = canonical_mailbox(mailbox)  # what the pipeline hands the extensions
    assert wants_push(device(*registered), canonical) == mailbox_matches(registered, canonical)
