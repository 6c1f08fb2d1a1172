"""Which mailboxes WEBPUSH watches (issue 13, point 2), end to end against a real Dovecot.

Default ``webpush.mailboxes: subscribed``: the account's subscribed mailboxes
at the upstream, minus ``\\Junk`` and ``\\Trash``, INBOX always; refreshed
when the client (un)subscribes through the proxy.  The fixture's Dovecot marks
``Junk`` as ``\\Junk`` and ``Trash`` as ``\\Trash`` (SPECIAL-USE).
"""

from __future__ import annotations

import imaplib
import re

import pytest

from tests.support import webpush_proxy
from tests.support.dovecot import Dovecot, make_message
from tests.support.proxy import ProxyProcess
from tests.support.push_standin import PushStandin, ReceivedPush, StandinSubscription
from tests.support.webpush_proxy import (
    ProxyFactory,
    RawImap,
    start_proxy,
    subscribe_and_ack,
    wait_pushes,
    wait_until,
    wait_watching,
)

pytestmark = pytest.mark.timeout(120)


standin = webpush_proxy.standin  # the shared fixture


def connected_lines(proxy: ProxyProcess) -> list[str]:
    return re.findall(r"watcher alice: connected \([^\n]*", proxy.log_text())


def wait_connected_with(proxy: ProxyProcess, after: int, *present: str, absent: tuple[str, ...] = ()) -> int:
    """Until the watcher's connection number ``after + 1`` or later watches these mailboxes and has
    caught up with them (a mailbox seen for the first time is taken as it is then: mail delivered
    before that is old); returns the number of connections so far."""

    def ready() -> bool:
        lines = connected_lines(proxy)[after:]
        return any(all(b in line for b in present) and not any(b in line for b in absent) for line in lines)

    wait_until(ready, timeout=30, what=f"a watcher connection watching {present} and not {absent}")
    wait_watching(proxy)  # "connecting" until the catch-up is done (set before the line is logged)
    return len(connected_lines(proxy))


def selected(push: ReceivedPush) -> bytes:
    assert push.problems == [] and push.plaintext is not None, push.problems
    m = re.match(rb"\* SELECT (\"[^\"]*\")\r\n", push.plaintext)
    assert m is not None, push.plaintext[:200]
    return m.group(1)


def mail_pushes(standin: PushStandin, ss: StandinSubscription) -> list[ReceivedPush]:
    return [p for p in standin.records_for(ss) if p.plaintext is not None and p.plaintext.startswith(b"* SELECT")]


def push_for(standin: PushStandin, ss: StandinSubscription, subject: str) -> ReceivedPush:
    needle = f'"{subject}"'.encode()
    wait_until(
        lambda: any(needle in (p.plaintext or b"") for p in standin.records_for(ss)),
        timeout=20,
        what=f"the push of {subject!r}",
    )
    return next(p for p in standin.records_for(ss) if needle in (p.plaintext or b""))


def test_subscribed_mailboxes_are_pushed_junk_is_not(dovecot: Dovecot, proxy_factory: ProxyFactory, standin) -> None:
    for name in ("Work", "Entwürfe", "Junk", "Trash"):
        dovecot.create_mailbox("alice", name)  # created and subscribed
    proxy = start_proxy(proxy_factory, dovecot)  # webpush.mailboxes: subscribed (the default)
    client = RawImap(proxy.port)
    client.login()
    listed = client.ok('LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)')
    assert any(b"\\Junk" in line and b"Junk" in line for line in listed), listed
    ss = subscribe_and_ack(client, standin, "phone")
    wait_connected_with(proxy, 0, "INBOX", "Work", "Entwürfe", "Notes", absent=("Junk", "Trash"))
    assert "watcher alice: mailboxes now INBOX, Entwürfe, Notes, Sent Messages, Work" in proxy.log_text()

    dovecot.deliver("alice", make_message("into work"), mailbox="Work")
    assert selected(push_for(standin, ss, "into work")) == b'"Work"'
    dovecot.deliver("alice", make_message("umlaut box"), mailbox="Entwürfe")
    assert selected(push_for(standin, ss, "umlaut box")) == b'"Entw&APw-rfe"'  # modified UTF-7, as LIST says

    # Junk (and Trash) are not pushed: the INBOX mail delivered after them is, and nothing came before it.
    before = len(mail_pushes(standin, ss))
    dovecot.deliver("alice", make_message("spam, really"), mailbox="Junk")
    dovecot.deliver("alice", make_message("deleted one"), mailbox="Trash")
    dovecot.deliver("alice", make_message("after the junk"))
    assert selected(push_for(standin, ss, "after the junk")) == b'"INBOX"'
    later = mail_pushes(standin, ss)[before:]
    assert [selected(p) for p in later] == [b'"INBOX"'], [p.plaintext for p in later]
    client.close()


def test_subscribe_through_the_proxy_starts_pushes_unsubscribe_stops_them(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin
) -> None:
    proxy = start_proxy(proxy_factory, dovecot)
    client = RawImap(proxy.port)
    client.login()
    client.ok("CREATE Later")  # Dovecot does not subscribe what CREATE makes
    ss = subscribe_and_ack(client, standin, "phone")
    seen = wait_connected_with(proxy, 0, "INBOX", absent=("Later",))

    dovecot.deliver("alice", make_message("not yet"), mailbox="Later")
    dovecot.deliver("alice", make_message("marker one"))
    push_for(standin, ss, "marker one")
    assert all(b'"not yet"' not in (p.plaintext or b"") for p in standin.records_for(ss))

    # SUBSCRIBE through the proxy, same session, no reconnect of the client.
    client.ok("SUBSCRIBE Later")
    seen = wait_connected_with(proxy, seen, "Later")
    dovecot.deliver("alice", make_message("now pushed"), mailbox="Later")
    assert selected(push_for(standin, ss, "now pushed")) == b'"Later"'

    client.ok("UNSUBSCRIBE Later")
    wait_connected_with(proxy, seen, "INBOX", absent=("Later",))
    dovecot.deliver("alice", make_message("no more"), mailbox="Later")
    dovecot.deliver("alice", make_message("marker two"))
    push_for(standin, ss, "marker two")
    assert all(b'"no more"' not in (p.plaintext or b"") for p in standin.records_for(ss))
    client.close()


def test_a_pinned_list_ignores_subscriptions(dovecot: Dovecot, proxy_factory: ProxyFactory, standin) -> None:
    dovecot.create_mailbox("alice", "Work")  # subscribed, but not in the pinned list
    proxy = start_proxy(proxy_factory, dovecot, mailboxes=["Notes"])  # INBOX is added
    client = RawImap(proxy.port)
    client.login()
    ss = subscribe_and_ack(client, standin, "phone")
    wait_connected_with(proxy, 0, "INBOX, Notes", absent=("Work",))
    dovecot.deliver("alice", make_message("pinned notes"), mailbox="Notes")
    assert selected(push_for(standin, ss, "pinned notes")) == b'"Notes"'
    dovecot.deliver("alice", make_message("work mail"), mailbox="Work")
    dovecot.deliver("alice", make_message("marker"))
    push_for(standin, ss, "marker")
    assert all(b'"work mail"' not in (p.plaintext or b"") for p in standin.records_for(ss))
    client.ok("SUBSCRIBE Work")  # pinned: nothing to refresh
    assert "mailboxes now" not in proxy.log_text()
    assert len(wait_pushes(standin, ss, 1)) >= 1
    client.close()


def test_subscriptions_made_elsewhere_are_seen_at_the_periodic_refresh(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin
) -> None:
    proxy = start_proxy(proxy_factory, dovecot, mailboxes_refresh="1s")
    client = RawImap(proxy.port)
    client.login()
    ss = subscribe_and_ack(client, standin, "phone")
    seen = wait_connected_with(proxy, 0, "INBOX", absent=("Elsewhere",))
    direct = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
    direct.login("alice", "alicepw")
    assert direct.create("Elsewhere")[0] == "OK" and direct.subscribe("Elsewhere")[0] == "OK"  # not via the proxy
    direct.logout()
    wait_connected_with(proxy, seen, "Elsewhere")
    dovecot.deliver("alice", make_message("from elsewhere"), mailbox="Elsewhere")
    assert selected(push_for(standin, ss, "from elsewhere")) == b'"Elsewhere"'
    client.close()
