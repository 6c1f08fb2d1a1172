"""Catch-up bursts pushed per message, bounded (issue 20 point 3), end to end.

A real proxy in front of Dovecot with one acknowledged WEBPUSH subscription is
stopped; 20 (then 200) messages arrive in INBOX meanwhile; after the restart
the watcher catches up with one batch, and the Web Push stand-in (which
decrypts every push on its own) must see every new message by UID, in at
most MAX_NEW_MAIL_PUSHES pushes, and no bare SYNC.
"""

from __future__ import annotations

import re

import pytest

from pushproxy.extensions.webpush.payload import MAX_NEW_MAIL_PUSHES, MAX_PLAINTEXT
from tests.support.dovecot import Dovecot, make_message
from tests.support.push_standin import PushStandin
from tests.support.webpush_proxy import ProxyFactory, standin, subscribed_session, wait_until

__all__ = ["standin"]  # the fixture, imported for the tests below


def _uids(plaintext: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"^\* (\d+) UIDFETCH ", plaintext, re.M)]


@pytest.mark.parametrize("count", [20, 200])
def test_a_catch_up_burst_arrives_per_message_within_the_bound(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin: PushStandin, count: int
) -> None:
    proxy, client, ss = subscribed_session(proxy_factory, dovecot, standin)
    client.close()
    before = len(standin.records_for(ss))
    proxy.stop()
    for n in range(count):
        dovecot.deliver("alice", make_message(f"while the proxy was down {n}"))
    proxy.start()

    def uids_pushed() -> list[int]:
        return [uid for push in standin.records_for(ss)[before:] for uid in _uids(push.plaintext or b"")]

    wait_until(lambda: len(uids_pushed()) >= count, timeout=30, what=f"{count} messages pushed")
    pushes = standin.records_for(ss)[before:]
    assert 1 <= len(pushes) <= MAX_NEW_MAIL_PUSHES, len(pushes)
    for push in pushes:
        assert push.problems == [] and push.plaintext is not None and len(push.plaintext) <= MAX_PLAINTEXT
        assert push.plaintext.startswith(b'* SELECT "INBOX"\r\n') and b"* SYNC" not in push.plaintext
    assert uids_pushed() == list(range(1, count + 1))  # every message once, in order
    if count == 20:  # few enough for their envelopes
        assert all(b"ENVELOPE (" in line for p in pushes for line in (p.plaintext or b"").split(b"\r\n")[1:-1])
