"""Dovecot's own push_notification plugin (ox driver) drives pushproxy end to end.

Debian's Dovecot ships ``lib20_push_notification_plugin.so``.  Dovecot runs with the
config README.md documents (``mail_plugins = $mail_plugins notify push_notification``
for LMTP, ``imap_metadata``, the ox driver pointed at pushproxy's
``/events/dovecot-ox``), mail is delivered over LMTP, and the push reaches the APNs
stand-in while pushproxy has no watcher connection open: the event came from Dovecot.
"""

from __future__ import annotations

from pathlib import Path

from tests.support import apns_env
from tests.support.apns_env import ACCOUNT_ID, TOKEN_A, RawClient, apns_config, register
from tests.support.apns_standin import ApnsStandin
from tests.support.certs import ApnsTestCerts
from tests.support.dovecot import make_message
from tests.support.waiting import wait_for

OX_SECRET = "ox-shared-secret"
HTTP_NOTIFY = "/private/vendor/vendor.dovecot/http-notify"

# the shared pytest fixtures (tests/support/apns_env.py)
certs, apns = apns_env.certs, apns_env.apns


def watcher_count(proxy) -> float:
    return proxy.metric("pushproxy_watchers")


def test_lmtp_delivery_pushes_through_the_ox_driver_without_a_watcher(
    dovecot_factory, proxy_factory, apns: ApnsStandin, certs: ApnsTestCerts, tmp_path: Path
) -> None:
    secret_file = tmp_path / "ox.secret"
    secret_file.write_text(OX_SECRET + "\n")
    dc = dovecot_factory(start=False)
    proxy = proxy_factory(
        dc,
        start=False,
        apns=apns_config(certs, apns),
        admin={"ox_secret_file": str(secret_file)},
        # Passwords only in memory: after a restart no watcher can log in, so whatever
        # is pushed then came from Dovecot's plugin.
        watch={"credentials": "memory"},
    )
    proxy.config["admin"]["listen"] = f"127.0.0.1:{proxy.admin_port}"
    dc.push_notification_url = f"http://pushproxy:{OX_SECRET}@127.0.0.1:{proxy.admin_port}/events/dovecot-ox"
    dc.start()
    proxy.start()

    # The device registers through pushproxy, which sets the user's METADATA entry that
    # switches the ox driver on for that user (SETMETADATA on the user's own connection).
    client = RawClient(proxy.port)
    assert client.command(b"a1", b"LOGIN alice alicepw").startswith(b"a1 OK")
    register(client, b"a2", TOKEN_A)
    client.command(b"a3", b"LOGOUT")
    client.close()
    got = dc.doveadm("mailbox", "metadata", "get", "-u", "alice", "-s", "", HTTP_NOTIFY)
    assert got.stdout.strip() == "user=alice", got

    assert proxy.stop() == 0
    proxy.log_file.write_text("")  # start() waits for a fresh "ready" line
    proxy.start()
    wait_for(lambda: watcher_count(proxy) == 0, 10, "no watcher: a push would not prove the ox path otherwise")
    assert "alice" not in dc.doveadm("who", check=False).stdout

    before = len(apns.requests_for(TOKEN_A))
    dc.deliver("alice", make_message("via Dovecot's push_notification plugin"))
    pushes = apns.wait_for(before + 1, timeout=20, token=TOKEN_A)
    assert pushes[-1].json == {"aps": {"account-id": ACCOUNT_ID}}
    assert proxy.metric("pushproxy_watchers") == 0
    assert "alice" not in dc.doveadm("who", check=False).stdout
    log = proxy.log_text()
    assert OX_SECRET not in log and "alicepw" not in log
