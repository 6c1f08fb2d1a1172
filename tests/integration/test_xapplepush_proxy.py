"""XAPPLEPUSHSERVICE end to end: iOS-like client -> proxy -> real Dovecot; pushes to the APNs stand-in."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import apns_env
from tests.support.apns_env import ACCOUNT_ID, TOKEN_A, TOKEN_B, RawClient, apns_config, devices_in_store, register
from tests.support.apns_standin import ApnsStandin
from tests.support.certs import ApnsTestCerts
from tests.support.dovecot import Dovecot, make_message
from tests.support.waiting import QUIET, assert_quiet, wait_for

# the shared pytest fixtures (tests/support/apns_env.py)
certs, apns = apns_env.certs, apns_env.apns

IOS_COMMAND = (
    b'XAPPLEPUSHSERVICE "aps-version" "2" "aps-account-id" "' + ACCOUNT_ID.encode() + b'" '
    b'"aps-device-token" "' + TOKEN_A.encode() + b'" '
    b'"aps-subtopic" "com.apple.mobilemail" "sender" "somebody@example.org" '
    b'"mailboxes" ("INBOX" {13}\r\nSent Messages "Does Not Exist" "Notes")'
)


def test_ios_registration_exact_answer_and_push(
    dovecot: Dovecot, proxy_factory, apns: ApnsStandin, certs: ApnsTestCerts
) -> None:
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns))
    c = RawClient(proxy.port)
    assert b"XAPPLEPUSHSERVICE" in c.greeting
    login = c.command(b"a1", b"LOGIN alice alicepw")
    assert b"XAPPLEPUSHSERVICE" in login and b"a1 OK" in login
    c.command(b"a2", b'LIST "" "*"')
    # The literal mailbox name needs the continuation request first.
    first, rest = IOS_COMMAND.split(b"{13}\r\n")
    c.sock.sendall(b"a3 " + first + b"{13}\r\n")
    assert c.read_until(b"\r\n").startswith(b"+ ")
    c.sock.sendall(rest + b"\r\n")
    answer = c._tagged(b"a3")
    assert answer == (
        b'* XAPPLEPUSHSERVICE "mailbox" "INBOX"\r\n'
        b'* XAPPLEPUSHSERVICE "mailbox" "Sent Messages"\r\n'
        b'* XAPPLEPUSHSERVICE "mailbox" "Notes"\r\n'
        b'* XAPPLEPUSHSERVICE "aps-version" "2" "aps-topic" "' + certs.topic.encode() + b'"\r\n'
        b"a3 OK XAPPLEPUSHSERVICE completed.\r\n"
    )
    # Durable before the OK.
    assert devices_in_store(proxy.base_dir / "pushproxy.db") == [("alice", ACCOUNT_ID, TOKEN_A)]
    # The stream goes on normally.
    assert b"a4 OK" in c.command(b"a4", b"NOOP")

    # New mail in INBOX -> one push with the exact path, headers and body.
    dovecot.deliver("alice", make_message("hello iphone"))
    req = apns.wait_for(1, timeout=10)[0]
    assert req.path == f"/3/device/{TOKEN_A}"
    assert req.headers["apns-topic"] == certs.topic
    assert req.headers["apns-push-type"] == "background"
    assert req.headers["apns-priority"] == "5"
    assert int(req.headers["apns-expiration"]) > time.time() + 23 * 3600
    assert req.json == {"aps": {"account-id": ACCOUNT_ID}}

    # New mail in "Sent Messages" -> the m hash of that mailbox.
    dovecot.deliver("alice", make_message("sent copy"), mailbox="Sent Messages")
    reqs = apns.wait_for(2, timeout=10)
    req = reqs[1]
    expected = hashlib.md5(b"Sent Messages").hexdigest().upper()
    assert req.json["aps"]["account-id"] == ACCOUNT_ID
    assert expected in req.json["m"]

    # A burst is debounced into one push.
    before = len(apns.requests)
    for i in range(20):
        dovecot.deliver("alice", make_message(f"burst {i}"))
    # The watcher has seen all 20 (uids 2..21) once their state is stored; its pushes leave within a
    # debounce window (0.3 s) after that, so a quiet period longer than the window shows them all.
    wait_for(lambda: proxy.stored_uidnext("alice", "INBOX") == 22, what="the burst to be detected")
    wait_for(lambda: len(apns.requests) > before, what="the burst's push")
    assert_quiet(lambda: 1 <= len(apns.requests) - before <= 2, period=0.3 + QUIET, what="at most 2 pushes")
    c.close()
    assert "2918390218931890821908309283098109381029309829018310983092892829" not in proxy.log_text()
    assert "alicepw" not in proxy.log_text()


def test_malformed_registration_gets_bad_and_stream_stays(dovecot: Dovecot, proxy_factory, apns, certs) -> None:
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns))
    c = RawClient(proxy.port)
    pre = c.command(b"a0", b'XAPPLEPUSHSERVICE "aps-version" "2"')
    assert b"a0 BAD" in pre
    c.command(b"a1", b"LOGIN alice alicepw")
    assert b"a2 BAD" in c.command(b"a2", b'XAPPLEPUSHSERVICE "aps-version" "2" "aps-account-id" "x"')
    assert b"a3 BAD" in c.command(b"a3", b'XAPPLEPUSHSERVICE "aps-account-id" "x" "aps-device-token" "zz"')
    assert b"a4 BAD" in c.command(b"a4", b"XAPPLEPUSHSERVICE (((")
    assert b"a5 OK" in c.command(b"a5", b"NOOP")
    c.close()


def test_version1_and_missing_mailboxes(dovecot: Dovecot, proxy_factory, apns, certs) -> None:
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns))
    c = RawClient(proxy.port)
    c.command(b"a1", b"LOGIN alice alicepw")
    out = c.command(
        b"a2",
        b'XAPPLEPUSHSERVICE "aps-version" "1" "aps-account-id" "'
        + ACCOUNT_ID.encode()
        + b'" "aps-device-token" "'
        + TOKEN_A.encode()
        + b'" "aps-subtopic" "com.apple.mobilemail"',
    )
    assert out == (
        b'* XAPPLEPUSHSERVICE "aps-version" "1" "aps-topic" "' + certs.topic.encode() + b'"\r\n'
        b"a2 OK XAPPLEPUSHSERVICE completed.\r\n"
    )
    c.close()


def test_cloned_devices_both_get_pushes_and_restart_keeps_them(
    dovecot: Dovecot, proxy_factory, apns: ApnsStandin, certs: ApnsTestCerts
) -> None:
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns))
    c = RawClient(proxy.port)
    c.command(b"a1", b"LOGIN alice alicepw")
    assert b"a2 OK" in register(c, b"a2", TOKEN_A)
    assert b"a3 OK" in register(c, b"a3", TOKEN_B)
    c.close()
    proxy.stop()
    proxy.start()
    assert len(devices_in_store(proxy.base_dir / "pushproxy.db")) == 2
    # After the restart the watcher resumes from the vault without any client login.
    proxy.wait_watching()
    dovecot.deliver("alice", make_message("to both"))
    apns.wait_for(1, timeout=10, token=TOKEN_A)
    apns.wait_for(1, timeout=10, token=TOKEN_B)


def test_apns_errors_prune_and_retry(dovecot: Dovecot, proxy_factory, apns: ApnsStandin, certs) -> None:
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns))
    c = RawClient(proxy.port)
    c.command(b"a1", b"LOGIN alice alicepw")
    register(c, b"a2", TOKEN_A)
    register(c, b"a3", TOKEN_B)
    c.close()
    db = proxy.base_dir / "pushproxy.db"
    apns.script(TOKEN_A, [429, 500, 200])
    apns.script(TOKEN_B, [410])
    proxy.wait_watching()
    dovecot.deliver("alice", make_message("errors"))
    assert len(apns.wait_for(3, timeout=20, token=TOKEN_A)) == 3  # retried until 200
    apns.wait_for(1, timeout=10, token=TOKEN_B)
    wait_for(lambda: len(devices_in_store(db)) == 1, 5, "the 410 device to be pruned")
    assert devices_in_store(db) == [("alice", ACCOUNT_ID, TOKEN_A)]


def test_bad_device_token_removed_and_hang_does_not_stall(dovecot: Dovecot, proxy_factory, apns, certs) -> None:
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns, timeout=2, retry_budget=1))
    dovecot.add_user("carol", "carolpw")
    for user, token in (("alice", TOKEN_A), ("carol", TOKEN_B)):
        c = RawClient(proxy.port)
        c.command(b"a1", f"LOGIN {user} {user}pw".encode())
        register(c, b"a2", token)
        c.close()
    apns.always(TOKEN_A, "hang")
    apns.script(TOKEN_B, [400])
    proxy.wait_watching(count=2)
    dovecot.deliver("alice", make_message("to a hanging device"))
    dovecot.deliver("carol", make_message("to carol"))
    # carol's push goes out while alice's device hangs.
    apns.wait_for(1, timeout=5, token=TOKEN_B)
    db = proxy.base_dir / "pushproxy.db"
    wait_for(lambda: all(t != TOKEN_B for _, _, t in devices_in_store(db)), 5, "the 400 device to be removed")
    assert all(t != TOKEN_B for _, _, t in devices_in_store(db))
    # It was carol's only device: her watcher stops at once (issue 14 point 3), alice's keeps running.
    proxy.wait_log("watcher carol: no registrations left; stopped")
    watching = ("idle", "polling", "connecting", "backoff")
    wait_for(
        lambda: sum(proxy.metric("pushproxy_watchers", {"state": s}) for s in watching) == 1, 5, "alice's watcher only"
    )


def test_ox_endpoint_injects_events(dovecot: Dovecot, proxy_factory, apns, certs, tmp_path: Path) -> None:
    secret_file = tmp_path / "ox.secret"
    secret_file.write_text("s3cret\n")
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns), admin={"ox_secret_file": str(secret_file)})
    c = RawClient(proxy.port)
    c.command(b"a1", b"LOGIN alice alicepw")
    register(c, b"a2", TOKEN_A, b'("INBOX" "Notes")')
    c.close()
    body = json.dumps(
        {
            "user": "alice",
            "event": "MessageNew",
            "folder": "Notes",
            "imap-uidvalidity": 1,
            "imap-uid": 77,
            "from": "x@example.org",
            "subject": "via ox",
            "unseen": 1,
        }
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{proxy.admin_port}/events/dovecot-ox",
        data=body,
        headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status in (200, 202, 204)
    got = apns.wait_for(1, timeout=10)[0]
    assert hashlib.md5(b"Notes").hexdigest().upper() in got.json["m"]


def test_registrations_per_account_are_capped(dovecot: Dovecot, proxy_factory, apns, certs) -> None:
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns, max_devices_per_account=2))
    c = RawClient(proxy.port)
    c.command(b"a1", b"LOGIN alice alicepw")
    tokens = [f"{i:02d}" * 32 for i in range(1, 4)]
    for i, token in enumerate(tokens):
        assert b"OK" in register(c, b"r%d" % i, token)  # never NO, even over the cap
        time.sleep(0.05)
    c.close()
    kept = {t for _, _, t in devices_in_store(proxy.base_dir / "pushproxy.db")}
    assert kept == set(tokens[1:])  # the least recently renewed one was evicted


def test_serve_refuses_expired_certificate_and_untrusted_topic(dovecot: Dovecot, proxy_factory, apns, certs) -> None:
    for cert, key, needle in (
        (certs.expired_cert, certs.expired_key, "expired"),
        (certs.untrusted_cert, certs.untrusted_key, "com.example.not.mail"),
    ):
        proxy = proxy_factory(
            dovecot, start=False, apns={**apns_config(certs, apns), "cert_file": str(cert), "key_file": str(key)}
        )
        with pytest.raises(RuntimeError, match="exited with 2"):
            proxy.start()
        assert needle in proxy.log_text()
        proxy.log_file.write_text("")  # the refusal is the expected outcome, not an unhandled error


@pytest.mark.parametrize("credentials", ["vault", "memory"])
def test_register_and_log_out_at_once_still_gets_pushes(
    dovecot: Dovecot, proxy_factory, apns: ApnsStandin, certs: ApnsTestCerts, credentials: str
) -> None:
    """The session closes right behind the registration (LOGOUT pipelined): its login must still start the watcher."""
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns), watch={"credentials": credentials})
    c = RawClient(proxy.port)
    c.command(b"a1", b"LOGIN alice alicepw")
    cmd = (
        b'a2 XAPPLEPUSHSERVICE "aps-version" "2" "aps-account-id" "' + ACCOUNT_ID.encode() + b'" '
        b'"aps-device-token" "' + TOKEN_A.encode() + b'" "aps-subtopic" "com.apple.mobilemail" "mailboxes" ("INBOX")'
    )
    c.sock.sendall(cmd + b"\r\na3 LOGOUT\r\n")
    assert b"a2 OK" in c._tagged(b"a2")
    assert b"a3 OK" in c._tagged(b"a3")
    c.close()
    dovecot.deliver("alice", make_message("right after the logout"))
    apns.wait_for(1, timeout=15, token=TOKEN_A)
    log_text = proxy.log_text()
    assert "no credentials captured" not in log_text
    assert "alicepw" not in log_text
