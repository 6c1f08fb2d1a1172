"""A new UIDVALIDITY of a mailbox that was empty, against a real Dovecot (issue 20 point 4).

GNU imap4d gives an empty mbox folder a new UIDVALIDITY at its first message;
Dovecot lets a test do the same (``doveadm mailbox update --uid-validity``).
The first message must be pushed, not swallowed by a "state reset without
pushes"; a mailbox that held messages is still reset without pushes.
"""

from __future__ import annotations

from tests.support.dovecot import Dovecot, make_message
from tests.support.push_standin import PushStandin
from tests.support.webpush_proxy import (
    ProxyFactory,
    RawImap,
    deliver_and_wait_dispatch,
    standin,
    start_proxy,
    subscribe_and_ack,
    wait_pushes,
    wait_until,
)

__all__ = ["standin"]  # the fixture, imported for the tests below


def new_uidvalidity(dovecot: Dovecot, mailbox: str, value: int) -> None:
    dovecot.doveadm("mailbox", "update", "-u", "alice", "--uid-validity", str(value), mailbox)


def test_first_message_after_a_new_uidvalidity_of_an_empty_mailbox_is_pushed(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin: PushStandin
) -> None:
    dovecot.create_mailbox("alice", "Archive")
    dovecot.create_mailbox("alice", "Work")
    dovecot.deliver("alice", make_message("old work"), mailbox="Work")
    proxy = start_proxy(proxy_factory, dovecot, mailboxes=["INBOX", "Archive", "Work"])
    client = RawImap(proxy.port)
    client.login()
    ss = subscribe_and_ack(client, standin, "phone")
    proxy.wait_watching()
    wait_until(lambda: proxy.stored_uidnext("alice", "Archive") == 1, what="Archive's state (empty) stored")
    wait_until(lambda: proxy.stored_uidnext("alice", "Work") == 2, what="Work's state stored")

    new_uidvalidity(dovecot, "Archive", 424242)
    dovecot.deliver("alice", make_message("first in the archive"), mailbox="Archive")
    push = wait_pushes(standin, ss, 2)[1]
    assert push.problems == [] and push.plaintext is not None
    assert push.plaintext.startswith(b'* SELECT "Archive"\r\n* 1 UIDFETCH (FLAGS () ENVELOPE ('), push.plaintext
    assert b"first in the archive" in push.plaintext
    proxy.wait_log("UIDVALIDITY of Archive changed while it was empty")

    # A mailbox that had messages: a new UIDVALIDITY resets without pushing what it holds.
    count = len(standin.records_for(ss))
    new_uidvalidity(dovecot, "Work", 434343)
    deliver_and_wait_dispatch(proxy, dovecot, "to the inbox")  # something to wait on: one push for INBOX
    wait_until(lambda: len(standin.records_for(ss)) >= count + 1, what="the INBOX push")
    client.ok("NOOP")
    dovecot.deliver("alice", make_message("new work"), mailbox="Work")
    proxy.wait_log("UIDVALIDITY of Work changed; state reset without pushes")
    assert all(b'"Work"' not in (p.plaintext or b"") for p in standin.records_for(ss))
    client.close()
