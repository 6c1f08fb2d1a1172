"""WEBPUSH end to end: a real pushproxy process in front of a real Dovecot, pushing to the stand-in.

The client speaks raw IMAP to the proxy; mail arrives by LMTP; the proxy's
watcher notices it, and the stand-in push service decrypts what the proxy
sent and checks its VAPID signature.
"""

from __future__ import annotations

import imaplib
import re

import pytest

from pushproxy.extensions.webpush import changes
from tests.support import webpush_proxy
from tests.support.dovecot import Dovecot, make_message
from tests.support.push_standin import Answer, ReceivedPush
from tests.support.waiting import QUIET, assert_quiet
from tests.support.webpush_proxy import (
    LIVE,
    WATCH,
    ProxyFactory,
    RawImap,
    ack_token,
    deliver_and_wait_dispatch,
    start_proxy,
    subscribe_and_ack,
    subscribed_session,
    uid_of,
    wait_pushes,
    wait_until,
    wait_watching,
    webpush_cmd,
)

pytestmark = pytest.mark.timeout(120)

standin = webpush_proxy.standin  # the shared fixture


# --- the whole flow --------------------------------------------------------------------------


def test_getvapid_subscribe_ack_and_new_mail_push(dovecot: Dovecot, proxy_factory: ProxyFactory, standin) -> None:
    proxy = start_proxy(proxy_factory, dovecot)
    client = RawImap(proxy.port)
    # Before login: no capability, and the commands are BAD.
    caps = b" ".join(client.ok("CAPABILITY"))
    assert b"WEBPUSH" not in caps.split()
    _, status = client.command("GETVAPID")
    assert status.startswith(b"BAD")
    client.login()
    caps = b" ".join(client.ok("CAPABILITY"))
    assert b"WEBPUSH" in caps.split()

    (vapid,) = client.ok("GETVAPID")
    m = re.fullmatch(rb"VAPID (B[A-Za-z0-9_-]{86})", vapid)
    assert m is not None, vapid
    key = m.group(1).decode()

    ss = standin.new_subscription()
    untagged, status = client.command(webpush_cmd("a8282bf9-6102-4e1b-bb61-d26d0e532e65", ss))
    assert status == b"OK WEBPUSH completed"
    assert untagged == [
        f"VAPID {key}".encode(),
        f'WEBPUSH a8282bf9-6102-4e1b-bb61-d26d0e532e65 "{ss.endpoint}" NIL'.encode(),
    ]
    pushes = wait_pushes(standin, ss, 1)
    assert len(pushes) == 1, "exactly one verification push (checked again once the mail's push came)"
    token = ack_token(pushes[0])
    assert pushes[0].vapid_key == key and pushes[0].headers["Urgency"] == "high"

    untagged, status = client.command(f"ACKWEBPUSH {token}")
    assert status == b"OK ACKWEBPUSH completed"
    assert untagged == [f'WEBPUSH a8282bf9-6102-4e1b-bb61-d26d0e532e65 "{ss.endpoint}" 0'.encode()]
    _, status = client.command(f"ACKWEBPUSH {token}")
    assert status.startswith(b"NO")  # single use

    wait_watching(proxy)
    dovecot.deliver("alice", make_message("afternoon meeting", sender="Fred Foobar <foobar@blurdybloop.example>"))
    pushes = wait_pushes(standin, ss, 2)
    # Ordering: a second verification push would have come before the mail's push.
    assert len(pushes) == 2 and pushes[0].plaintext is not None and pushes[0].plaintext.startswith(b"* ACKWEBPUSH ")
    push = pushes[1]
    assert push.problems == []
    uid = uid_of(dovecot, "afternoon meeting")
    assert push.plaintext is not None
    # Changed with issue 13: a short message now comes whole (BINARY[]) after the envelope.
    m = re.fullmatch(
        rb'\* SELECT "INBOX"\r\n\* (\d+) UIDFETCH \(FLAGS \(([^)]*)\) ENVELOPE \((.*)\) '
        rb"BINARY\[\] \{(\d+)\}\r\n(.*)\)\r\n",
        push.plaintext,
        re.DOTALL,
    )
    assert m is not None, push.plaintext
    assert int(m.group(1)) == uid
    assert b'"afternoon meeting"' in m.group(3)
    assert b'(("Fred Foobar" NIL "foobar" "blurdybloop.example"))' in m.group(3)
    assert int(m.group(4)) == len(m.group(5)) and m.group(5).endswith(b"\r\n\r\nhello\r\n")
    assert push.headers["Urgency"] == "high"
    assert push.headers["TTL"] == "86400"
    assert proxy.metric("pushproxy_pushes_total", {"service": "webpush", "status": "201"}) >= 2

    # LWEBPUSH never shows keys.
    for form in ("LWEBPUSH", 'LWEBPUSH "*"', "LWEBPUSH a8282bf9-6102-4e1b-bb61-d26d0e532e65"):
        listed = client.ok(form)
        assert listed == [f'WEBPUSH a8282bf9-6102-4e1b-bb61-d26d0e532e65 "{ss.endpoint}" 0'.encode()], form
        assert ss.p256dh.encode() not in b"".join(listed) and ss.auth.encode() not in b"".join(listed)
    # The endpoint, a capability URL, is not in the proxy's log.
    assert ss.endpoint not in proxy.log_text() and ss.id not in proxy.log_text()

    # Delete; further mail is not pushed.
    assert client.ok("WEBPUSH a8282bf9-6102-4e1b-bb61-d26d0e532e65 NIL") == []
    assert client.ok("LWEBPUSH") == []
    assert client.ok("WEBPUSH never-was NIL") == []
    client.close()
    count = len(standin.records_for(ss))
    # With no registration left the account's watcher stops; nothing can notice new mail after that.
    proxy.wait_log("watcher alice: no registrations left; stopped")
    wait_until(lambda: sum(proxy.metric("pushproxy_watchers", {"state": s}) for s in LIVE) == 0, what="no watcher")
    dovecot.deliver("alice", make_message("after delete"))
    assert_quiet(lambda: len(standin.records_for(ss)) == count, what="no push after the delete")


def test_lwebpush_star_unquoted(dovecot: Dovecot, proxy_factory: ProxyFactory, standin) -> None:
    proxy = start_proxy(proxy_factory, dovecot)
    client = RawImap(proxy.port)
    try:
        client.login()
        ss = standin.new_subscription()
        client.ok(webpush_cmd("s1", ss))
        assert client.ok("LWEBPUSH *") == [f'WEBPUSH s1 "{ss.endpoint}" NIL'.encode()]
    finally:
        client.close()


def test_huge_subject_falls_back_within_the_limit(dovecot: Dovecot, proxy_factory: ProxyFactory, standin) -> None:
    proxy, client, ss = subscribed_session(proxy_factory, dovecot, standin, "s1")
    # Changed with issue 13: an oversized envelope gave the SYNC form (was FLAGS only); changed again
    # with issue 20: the compact form (UID and FLAGS) comes before SYNC.
    before = proxy.metric("pushproxy_webpush_payload_fallbacks_total", {"level": "flags"})
    subject = "huge " + "x" * 6000
    dovecot.deliver("alice", make_message(subject))
    push = wait_pushes(standin, ss, 2)[1]
    assert push.problems == []
    assert push.plaintext is not None
    assert re.fullmatch(rb'\* SELECT "INBOX"\r\n\* \d+ UIDFETCH \(FLAGS \(\)\)\r\n', push.plaintext), push.plaintext
    assert proxy.metric("pushproxy_webpush_payload_fallbacks_total", {"level": "flags"}) == before + 1
    client.close()


# --- silence ----------------------------------------------------------------------------------


def test_silence_until_disconnect_and_for_seconds(dovecot: Dovecot, proxy_factory: ProxyFactory, standin) -> None:
    proxy, client, ss = subscribed_session(proxy_factory, dovecot, standin, "s1")

    assert client.ok("SILWEBPUSH s1") == [f'WEBPUSH s1 "{ss.endpoint}" 4294967295'.encode()]
    other = RawImap(proxy.port)
    other.login()
    assert other.ok("LWEBPUSH s1") == [f'WEBPUSH s1 "{ss.endpoint}" 4294967295'.encode()]
    count = len(standin.records_for(ss))
    deliver_and_wait_dispatch(proxy, dovecot, "while silenced")
    assert len(standin.records_for(ss)) == count

    client.close()  # the silence ends with the connection that asked for it
    wait_until(lambda: other.ok("LWEBPUSH s1")[0].endswith(b" 0"), what="the silence to be lifted")
    dovecot.deliver("alice", make_message("after disconnect"))
    push = wait_pushes(standin, ss, count + 1)[count]
    assert push.plaintext is not None and b"after disconnect" in push.plaintext
    assert b"while silenced" not in push.plaintext  # events during silence are not queued

    (line,) = other.ok("SILWEBPUSH s1 3")
    assert re.fullmatch(rb'WEBPUSH s1 "[^"]+" [123]', line), line
    count = len(standin.records_for(ss))
    deliver_and_wait_dispatch(proxy, dovecot, "timed silence")
    assert len(standin.records_for(ss)) == count
    wait_until(lambda: other.ok("LWEBPUSH s1")[0].endswith(b" 0"), timeout=10, what="the timed silence to end")
    dovecot.deliver("alice", make_message("after the timed silence"))
    push = wait_pushes(standin, ss, count + 1)[count]
    assert push.plaintext is not None and b"after the timed silence" in push.plaintext

    assert other.ok("SILWEBPUSH s1 600")[0].endswith(b" 600")
    assert other.ok("SILWEBPUSH s1 0")[0].endswith(b" 0")
    other.close()


# --- push service answers ------------------------------------------------------------------------


def test_410_prunes_429_is_retried_redirect_not_followed(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin
) -> None:
    proxy = start_proxy(proxy_factory, dovecot)
    client = RawImap(proxy.port)
    client.login()
    gone = subscribe_and_ack(client, standin, "gone")
    busy = subscribe_and_ack(client, standin, "busy")
    moved = subscribe_and_ack(client, standin, "moved")
    wait_watching(proxy)
    standin.program(gone, Answer.status(410))
    standin.program(busy, Answer.status(429, retry_after="1"))
    standin.program(moved, Answer.redirecting())
    dovecot.deliver("alice", make_message("first"))

    busy_pushes = wait_pushes(standin, busy, 3)
    assert [p.answered for p in busy_pushes[1:]] == [429, 201]
    assert busy_pushes[2].plaintext is not None and b"first" in busy_pushes[2].plaintext
    assert [p.answered for p in wait_pushes(standin, gone, 2)[1:]] == [410]
    assert [p.answered for p in wait_pushes(standin, moved, 2)[1:]] == [307]
    wait_until(lambda: b"gone" not in b" ".join(client.ok("LWEBPUSH")), what="the 410 subscription to be deleted")
    listed = client.ok("LWEBPUSH")
    assert sorted(line.split()[1] for line in listed) == [b"busy", b"moved"]

    dovecot.deliver("alice", make_message("second"))
    wait_pushes(standin, busy, 4)
    wait_pushes(standin, moved, 3)
    # The others' pushes for "second" went out together with any to "gone".
    assert_quiet(lambda: len(standin.records_for(gone)) == 2, what="nothing more to the pruned one")
    assert standin.redirect_hits == []  # never followed
    client.close()


def test_the_last_subscription_gone_410_stops_the_watcher(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin
) -> None:
    """Issue 14 point 3 on one node: a registration the push service reports gone (410) was the account's
    last, so its watcher stops at once, not at the next restart."""
    proxy = start_proxy(proxy_factory, dovecot)
    client = RawImap(proxy.port)
    client.login()
    gone = subscribe_and_ack(client, standin, "gone")
    client.close()
    wait_watching(proxy)
    standin.program(gone, Answer.status(410))
    dovecot.deliver("alice", make_message("first"))
    assert [p.answered for p in wait_pushes(standin, gone, 2)[1:]] == [410]
    proxy.wait_log("watcher alice: no registrations left; stopped")
    wait_until(lambda: sum(proxy.metric("pushproxy_watchers", {"state": s}) for s in LIVE) == 0, what="no watcher")


# --- refusals and limits ------------------------------------------------------------------------------


def test_private_endpoints_refused(dovecot: Dovecot, proxy_factory: ProxyFactory, standin) -> None:
    proxy = start_proxy(proxy_factory, dovecot, allow_private_endpoints=False)
    client = RawImap(proxy.port)
    client.login()
    ss = standin.new_subscription()
    for endpoint in (
        "https://127.0.0.1/push/x",
        "https://10.0.0.1/push/x",
        "https://[::ffff:127.0.0.1]/push/x",
        ss.endpoint,  # the stand-in itself: http on loopback
    ):
        untagged, status = client.command(f'WEBPUSH s1 "{endpoint}" {ss.p256dh} {ss.auth}')
        assert status.startswith(b"NO Endpoint refused"), (endpoint, status)
        assert untagged == []
    assert client.ok("LWEBPUSH") == []
    assert_quiet(lambda: standin.records == [], what="no verification push to a refused endpoint")
    client.close()


def test_missing_auth_is_bad(dovecot: Dovecot, proxy_factory: ProxyFactory, standin) -> None:
    proxy = start_proxy(proxy_factory, dovecot)
    client = RawImap(proxy.port)
    client.login()
    ss = standin.new_subscription()
    untagged, status = client.command(f'WEBPUSH s1 "{ss.endpoint}" {ss.p256dh}')
    assert status.startswith(b"BAD") and b"auth" in status and untagged == []
    # A literal endpoint works like a quoted one.
    cmd = b"WEBPUSH s1 {%d+}\r\n%s %s %s" % (
        len(ss.endpoint),
        ss.endpoint.encode(),
        ss.p256dh.encode(),
        ss.auth.encode(),
    )
    untagged, status = client.command(cmd)
    assert status == b"OK WEBPUSH completed" and untagged[1].endswith(b" NIL")
    client.close()


def test_the_17th_subscription_gets_no_limit(dovecot: Dovecot, proxy_factory: ProxyFactory, standin) -> None:
    proxy = start_proxy(proxy_factory, dovecot)
    client = RawImap(proxy.port)
    client.login()
    for i in range(16):
        client.ok(webpush_cmd(f"s{i}", standin.new_subscription()))
    untagged, status = client.command(webpush_cmd("s16", standin.new_subscription()))
    assert status.startswith(b"NO [LIMIT]") and untagged == []
    assert len(client.ok("LWEBPUSH")) == 16
    client.close()


def test_verification_push_amplification_is_bounded(dovecot: Dovecot, proxy_factory: ProxyFactory, standin) -> None:
    """Regression (issue 9 item 5): repeating WEBPUSH made the proxy POST to a URL it was handed, unbounded."""
    proxy = start_proxy(proxy_factory, dovecot)  # defaults: 5 per endpoint, 20 per account, per hour
    client = RawImap(proxy.port)
    client.login()
    victim = standin.new_subscription()
    # An identical WEBPUSH repeated: one verification push, however often it is sent.
    for _ in range(30):
        client.ok(webpush_cmd("same", victim))
    wait_pushes(standin, victim, 1)
    # New versions for the same URL (other ids): at most 5 pushes per hour, then NO [LIMIT].
    statuses = []
    for i in range(10):
        _, status = client.command(webpush_cmd(f"v{i}", victim))
        statuses.append(status.split(b" ")[0:2])
        client.ok(f"WEBPUSH v{i} NIL")
    assert statuses == [[b"OK", b"WEBPUSH"]] * 4 + [[b"NO", b"[LIMIT]"]] * 6
    wait_pushes(standin, victim, 5)
    assert_quiet(lambda: len(standin.records_for(victim)) == 5, what="5 verification pushes, no more")
    # Other URLs: the account's own bound (20 per hour) applies; 5 were used above.
    results = []
    for i in range(16):
        results.append(client.command(webpush_cmd(f"o{i}", standin.new_subscription()))[1])
        client.ok(f"WEBPUSH o{i} NIL")  # stay far from the subscription limit
    assert [r.startswith(b"OK") for r in results] == [True] * 15 + [False]
    assert results[-1].startswith(b"NO [LIMIT]") and b"verification pushes for this account" in results[-1]
    client.close()


# --- unacknowledged subscriptions ----------------------------------------------------------------------


def test_unacknowledged_subscription_never_gets_mail_and_expires(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin
) -> None:
    proxy = start_proxy(proxy_factory, dovecot, ack_expiry="4s")
    client = RawImap(proxy.port)
    client.login()
    waiting = standin.new_subscription()
    client.ok(webpush_cmd("waiting", waiting))
    token = ack_token(wait_pushes(standin, waiting, 1)[0])
    active = subscribe_and_ack(client, standin, "active")  # to know when mail was pushed
    wait_watching(proxy)

    dovecot.deliver("alice", make_message("secret content"))
    wait_pushes(standin, active, 2)
    # The event went to every target at once: a push to "waiting" would have come with the other.
    assert_quiet(lambda: len(standin.records_for(waiting)) == 1, what="no mail for the unacknowledged one")
    pushes = standin.records_for(waiting)
    assert len(pushes) == 1 and pushes[0].plaintext is not None
    assert pushes[0].plaintext.startswith(b"* ACKWEBPUSH ")

    wait_until(lambda: len(client.ok("LWEBPUSH")) == 1, timeout=10, what="the unacknowledged subscription to expire")
    _, status = client.command(f"ACKWEBPUSH {token}")
    assert status.startswith(b"NO")
    wait_until(
        lambda: proxy.metric("pushproxy_webpush_verifications_total", {"result": "expired"}) >= 1,
        what="the expiry to be counted",
    )
    wait_until(
        lambda: (
            proxy.metric("pushproxy_webpush_subscriptions", {"state": "inactive"}) == 0
            and proxy.metric("pushproxy_webpush_subscriptions", {"state": "active"}) == 1
        ),
        what="the gauge",
    )
    client.close()


# --- every change, not only new mail (issue 13) -------------------------------------------------------


def upstream_flags(dovecot: Dovecot, mailbox: str = "INBOX") -> dict[int, tuple[str, ...]]:
    m = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
    try:
        m.login("alice", "alicepw")
        m.select(mailbox, readonly=True)
        typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
        assert typ == "OK"
        state: dict[int, tuple[str, ...]] = {}
        for item in data:
            if not item:
                continue
            text = item.decode() if isinstance(item, bytes) else item[0].decode()
            found = re.search(r"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", text)
            assert found is not None, text
            uid = int(found.group(1) or found.group(4))
            flags = found.group(2) if found.group(2) is not None else found.group(3)
            state[uid] = tuple(f for f in flags.split() if f != "\\Recent")
        return state
    finally:
        m.logout()


def apply_pushes(model: dict[int, tuple[str, ...]], pushes: list[ReceivedPush]) -> None:
    """A client's local model of INBOX (UID -> flags), updated from the pushes as they came."""
    for push in pushes:
        assert push.plaintext is not None
        lines = push.plaintext.split(b"\r\n")
        assert lines[0] == b'* SELECT "INBOX"' and lines[-1] == b"", push.plaintext[:200]
        for line in lines[1:-1]:
            assert line != b"* SYNC", "this burst fits the bound: no SYNC expected"
            if line.startswith(b"* VANISHED "):
                for part in line[len(b"* VANISHED ") :].split(b","):
                    lo, _, hi = part.partition(b":")
                    for uid in range(int(lo), int(hi or lo) + 1):
                        model.pop(uid, None)
            else:
                m = re.fullmatch(rb"\* (\d+) UIDFETCH \(FLAGS \(([^)]*)\)\)", line)
                assert m is not None, line
                model[int(m.group(1))] = tuple(m.group(2).decode().split())


def test_expunges_flags_and_a_500_message_move_rebuild_the_mailbox(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin
) -> None:
    """Changes made through another connection reach the subscriber, bounded, and reproduce upstream exactly."""
    direct = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=30)
    direct.login("alice", "alicepw")
    direct.create("Archive")
    for i in range(1000):
        direct.append("INBOX", None, None, make_message(f"old {i}"))
    _proxy, client, ss = subscribed_session(proxy_factory, dovecot, standin, "phone")
    model = upstream_flags(dovecot)
    first = len(standin.records_for(ss))

    direct.select("INBOX")
    direct.uid("STORE", "1:500", "+FLAGS", "(\\Seen)")  # 500 flag changes
    direct.uid("MOVE", "501:1000", "Archive")  # 500 messages moved away
    direct.uid("STORE", "7,9", "+FLAGS", "(\\Deleted $Work)")
    direct.expunge()  # two more expunged
    direct.uid("STORE", "3", "+FLAGS", "(\\Flagged)")
    direct.logout()
    upstream = upstream_flags(dovecot)
    assert len(upstream) == 498

    def rebuilt() -> bool:
        trial = dict(model)
        apply_pushes(trial, standin.records_for(ss)[first:])
        return trial == upstream

    wait_until(rebuilt, timeout=30, what="the pushes to reproduce the upstream mailbox")
    # Anything still coming would break the model or the bound; a burst still open would be
    # flushed within its quiet time (no change for changes.QUIET seconds) after its last change.
    assert_quiet(rebuilt, period=changes.QUIET + QUIET, what="the model to stay the upstream mailbox")
    pushes = standin.records_for(ss)[first:]
    assert rebuilt()
    assert all(p.problems == [] and p.plaintext is not None and len(p.plaintext) <= 3993 for p in pushes)
    assert all(p.headers["Urgency"] == "normal" for p in pushes)
    # The bound: at most 8 pushes per burst and mailbox; the watcher may see this as a few bursts.
    assert len(pushes) <= 24, len(pushes)
    client.close()


def test_mail_into_a_non_ascii_mailbox_is_pushed_with_its_modified_utf7_name(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin
) -> None:
    dovecot.create_mailbox("alice", "Entwürfe")
    proxy = start_proxy(proxy_factory, dovecot, mailboxes=["INBOX", "Entwürfe"])
    client = RawImap(proxy.port)
    client.login()
    listed = client.ok('LIST "" "Entw*"')
    assert any(b'"Entw&APw-rfe"' in line or b" Entw&APw-rfe" in line for line in listed), listed
    ss = subscribe_and_ack(client, standin, "phone")
    wait_watching(proxy)
    dovecot.deliver("alice", make_message("umlaut box", body="kurz"), mailbox="Entwürfe")
    (push,) = wait_pushes(standin, ss, 2)[1:]
    assert push.plaintext is not None and push.problems == []
    assert push.plaintext.startswith(b'* SELECT "Entw&APw-rfe"\r\n* ')
    assert b'"umlaut box"' in push.plaintext
    client.close()


@pytest.mark.parametrize("credentials", ["vault", "memory"])
def test_ack_and_log_out_at_once_still_gets_pushes(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin, credentials: str
) -> None:
    """ACKWEBPUSH with LOGOUT pipelined right behind it: the session's login must still start the watcher."""
    proxy = proxy_factory(
        dovecot,
        webpush={"enabled": True, "allow_private_endpoints": True, "subject": "mailto:ops@example.org"},
        watch={**WATCH, "credentials": credentials},
    )
    client = RawImap(proxy.port)
    client.login()
    ss = standin.new_subscription()
    client.ok(webpush_cmd("sub-1", ss))
    token = ack_token(wait_pushes(standin, ss, 1)[0])
    client.sock.sendall(f"a1 ACKWEBPUSH {token}\r\na2 LOGOUT\r\n".encode())
    answers = b""
    while b"\r\na2 OK" not in answers:
        answers += client._line()
    assert b"a1 OK" in answers
    client.sock.close()
    # The session's login starts the watcher: mail is new to it once it waits upstream (before its
    # first look, a message is part of the mailbox it finds, not news).
    wait_watching(proxy)
    dovecot.deliver("alice", make_message("right after the logout"))
    assert wait_pushes(standin, ss, 2)[1].problems == []
    log_text = proxy.log_text()
    assert "no credentials captured" not in log_text
    assert "alicepw" not in log_text


# --- the message itself when it fits (issue 13) ----------------------------------------------------------


def binary_of(dovecot: Dovecot, uid: int) -> bytes:
    m = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
    try:
        m.login("alice", "alicepw")
        m.select("INBOX", readonly=True)
        typ, data = m.uid("FETCH", str(uid), "(BINARY.PEEK[])")
        assert typ == "OK", data
        parts = [d for d in data if isinstance(d, tuple)]
        assert len(parts) == 1, data
        return parts[0][1]
    finally:
        m.logout()


def test_short_mail_is_pushed_whole_long_mail_as_envelope(
    dovecot: Dovecot, proxy_factory: ProxyFactory, standin
) -> None:
    _proxy, client, ss = subscribed_session(proxy_factory, dovecot, standin, "phone")

    dovecot.deliver("alice", make_message("short one", body="See you at 5.\r\nFred"))
    push = wait_pushes(standin, ss, 2)[1]
    assert push.problems == [] and push.plaintext is not None and len(push.plaintext) <= 3993
    uid = uid_of(dovecot, "short one")
    whole = binary_of(dovecot, uid)
    m = re.fullmatch(
        rb'\* SELECT "INBOX"\r\n\* %d UIDFETCH \(FLAGS \([^)]*\) ENVELOPE \(.*\) BINARY\[\] \{(\d+)\}\r\n(.*)\)\r\n'
        % uid,
        push.plaintext,
        re.DOTALL,
    )
    assert m is not None, push.plaintext[:300]
    assert int(m.group(1)) == len(m.group(2)) and m.group(2) == whole  # byte-identical to BINARY[] upstream
    # Not marked \Seen by the proxy's fetch (BINARY.PEEK).
    assert "\\Seen" not in upstream_flags(dovecot)[uid]

    dovecot.deliver("alice", make_message("long one", body="y" * 6000))
    push = wait_pushes(standin, ss, 3)[2]
    assert push.problems == [] and push.plaintext is not None and len(push.plaintext) <= 3993
    uid = uid_of(dovecot, "long one")
    assert re.fullmatch(
        rb'\* SELECT "INBOX"\r\n\* %d UIDFETCH \(FLAGS \([^)]*\) ENVELOPE \(.*"long one".*\)\)\r\n' % uid,
        push.plaintext,
        re.DOTALL,
    ), push.plaintext[:300]
    assert b"BINARY" not in push.plaintext and b"yyyy" not in push.plaintext
    client.close()
