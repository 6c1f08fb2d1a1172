"""The real Delta Chat core through pushproxy, against a real Dovecot (issue 22).

- Delta Chat 2.65 (PyPI ``deltachat-rpc-server`` + ``deltachat-rpc-client``,
  JSON-RPC): two accounts configure through the proxy (plain, STARTTLS,
  implicit TLS on a non-993 port, with ALPN ``imap``), with METADATA on and
  off upstream, and exchange messages both ways while IDLE;
- Delta Chat 2.23 (PyPI ``deltachat``, CFFI: the last API that lets a client
  set a device token) registers its token through the proxy (its ``{n+}``
  literal form); a loopback stand-in of the notification gateway records
  every ``POST /notify``: the token stored is the one the core computed,
  one notify per incoming message, none for the account's own, 410 removes
  the token, a restart keeps it.
"""

from __future__ import annotations

import socket

import pytest

from tests.support.deltachat_env import GatewayStandin, SmtpRelay, rpc_server_path, stored_tokens, transport
from tests.support.dovecot import Dovecot, make_message
from tests.support.waiting import assert_quiet, wait_for

deltachat_rpc_client = pytest.importorskip("deltachat_rpc_client")
capi = pytest.importorskip("deltachat.capi")

pytestmark = pytest.mark.slow

TLS_LISTEN = {"imaps": "auto"}
SECURITY = {"plain": "plain", "starttls": "starttls", "ssl": "ssl"}


def _proxy(dovecot: Dovecot, proxy_factory, gateway: GatewayStandin | None = None, **sections):
    config = {
        "listen": {**TLS_LISTEN, "tls_cert_file": str(dovecot.cert_file), "tls_key_file": str(dovecot.key_file)},
        "watch": {"credentials": "vault"},
        "deltachat": {
            "enabled": True,
            "notify_url": gateway.url if gateway else "http://127.0.0.1:9/notify",
            "coalesce": 0,
            "retry_base": 0.2,
            "retry_max_delay": 1,
        },
    }
    config.update(sections)
    return proxy_factory(dovecot, **config)


@pytest.mark.parametrize(
    ("security", "metadata"),
    [("ssl", True), ("ssl", False), ("starttls", True), ("plain", False)],
    ids=["tls-metadata", "tls-no-metadata", "starttls-metadata", "plain-no-metadata"],
)
def test_delta_chat_265_through_the_proxy(dovecot_factory, proxy_factory, tmp_path, security, metadata) -> None:
    from deltachat_rpc_client import DeltaChat, EventType, Rpc

    dovecot = dovecot_factory(metadata=metadata)
    with SmtpRelay(dovecot) as smtp:
        proxy = _proxy(dovecot, proxy_factory)
        port = proxy.imaps_port if security == "ssl" else proxy.port
        assert port != 993
        with Rpc(accounts_dir=str(tmp_path / "dc"), rpc_server_path=rpc_server_path()) as rpc:
            dc = DeltaChat(rpc)
            alice, bob = dc.add_account(), dc.add_account()
            for account, (user, password) in ((alice, ("alice", "alicepw")), (bob, ("bob", "bobpw"))):
                account.add_or_update_transport(transport(user, password, port, SECURITY[security], smtp.port))
                assert account.is_configured()
                account.start_io()
                account.wait_for_event(EventType.IMAP_INBOX_IDLE)  # IDLE on INBOX, through the proxy

            chat = alice.create_chat(bob)
            chat.send_text("hello bob, through pushproxy")
            incoming = bob.wait_for_incoming_msg().get_snapshot()
            assert incoming.text == "hello bob, through pushproxy"
            incoming.chat.accept()
            incoming.chat.send_text("hello alice")
            reply = alice.wait_for_incoming_msg().get_snapshot()
            assert reply.text == "hello alice"

    intercepted = proxy.metric("pushproxy_commands_intercepted_total", {"command": "GETMETADATA"})
    if metadata:
        assert intercepted == 0  # relayed to Dovecot's METADATA, untouched
    else:
        assert intercepted >= 2  # each account's GETMETADATA "" ..., answered by the proxy
    assert "Traceback" not in proxy.log_text()


def _configure_223(core, user: str, password: str, imap_port: int, smtp_port: int):
    account = core.add_account()
    settings = {
        "addr": f"{user}@localhost",
        "mail_pw": password,
        "mail_server": "127.0.0.1",
        "mail_port": str(imap_port),
        "mail_security": "3",  # plain: the proxy's listener on loopback
        "mail_user": user,
        "send_server": "127.0.0.1",
        "send_port": str(smtp_port),
        "send_security": "3",
        "send_user": user,
        "send_pw": password,
    }
    for key, value in settings.items():
        account.set_config(key, value)
    account.configure()
    return account


def _upstream_devicetoken(dovecot: Dovecot, user: str, password: str) -> bytes:
    """What Dovecot itself holds as the user's INBOX /private/devicetoken (straight, not through the proxy)."""
    with socket.create_connection((dovecot.host, dovecot.imap_port), timeout=10) as s:
        s.sendall(f"a LOGIN {user} {password}\r\nb GETMETADATA INBOX /private/devicetoken\r\nc LOGOUT\r\n".encode())
        data = b""
        while b"c OK" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert b"b OK" in data, data
    return data


def _new_in_inbox(proxy) -> int:
    return proxy.log_text().count("watcher bob: INBOX: 1 new")


@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "no-metadata"])
def test_push_flow_end_to_end_with_delta_chat_223(dovecot_factory, proxy_factory, tmp_path, metadata) -> None:
    from tests.support.deltachat_cffi import CoreAccounts

    dovecot = dovecot_factory(metadata=metadata)
    with SmtpRelay(dovecot) as smtp, GatewayStandin() as gateway:
        proxy = _proxy(dovecot, proxy_factory, gateway)
        core = CoreAccounts(tmp_path / "dc223")
        try:
            bob = _configure_223(core, "bob", "bobpw", proxy.port, smtp.port)
            core.set_push_device_token("fcm-0123456789abcdef-device-token")
            core.start_io()
            proxy.wait_log("registered Delta Chat token", timeout=60)
            computed = bob.get_config("encrypted_device_token")
            assert computed and computed.startswith("openpgp:")
            # Stored (encrypted at rest) exactly as the core computed it; never relayed upstream.
            assert stored_tokens(proxy.config_file) == [("bob", computed)]
            if metadata:
                assert b"openpgp:" not in _upstream_devicetoken(dovecot, "bob", "bobpw")
            # The core's own connections are not needed from here on (and would race the
            # watcher to the new messages): the proxy's watcher alone sees them.
            core.stop_io()
            proxy.wait_watching()

            # One notify per incoming message, with the token as the body.
            for n in range(1, 4):
                dovecot.deliver("bob", make_message(f"mail {n}", sender="carol@example.org", to="bob@localhost"))
                wait_for(lambda n=n: len(gateway.received) >= n, 30, "a notify per message")
            assert gateway.bodies() == [computed] * 3

            # The account's own message (Delta Chat's copy of what it sent) wakes nobody: the
            # next message from someone else is the barrier that proves the watcher saw it.
            seen = _new_in_inbox(proxy)
            dovecot.deliver("bob", make_message("own copy", sender="bob@localhost", to="bob@localhost"))
            wait_for(lambda: _new_in_inbox(proxy) > seen, 30, "the watcher sees the own message")
            dovecot.deliver("bob", make_message("mail 4", sender="carol@example.org", to="bob@localhost"))
            wait_for(lambda: len(gateway.received) >= 4, 30, "the notify after the own message")
            assert_quiet(lambda: len(gateway.received) == 4, what="exactly one notify per foreign message")

            # A 500 is retried (backoff), then delivered once.
            gateway.answers.append(500)
            dovecot.deliver("bob", make_message("mail 5", sender="carol@example.org", to="bob@localhost"))
            wait_for(lambda: len(gateway.received) >= 6, 30, "the retry after 500")
            assert_quiet(lambda: len(gateway.received) == 6, what="no more than the retry")
        finally:
            core.close()

        # A restart keeps the token (and the watcher starts without a login).
        proxy.restart()
        proxy.wait_watching()
        dovecot.deliver("bob", make_message("after restart", sender="carol@example.org", to="bob@localhost"))
        wait_for(lambda: len(gateway.received) >= 7, 30, "a notify after the restart")
        assert stored_tokens(proxy.config_file) == [("bob", computed)]

        # 410: the token is removed, and with it the watcher (nothing else needs it).
        gateway.answers.append(410)
        dovecot.deliver("bob", make_message("gone", sender="carol@example.org", to="bob@localhost"))
        wait_for(lambda: len(gateway.received) >= 8, 30, "the notify answered 410")
        wait_for(lambda: stored_tokens(proxy.config_file) == [], 15, "the token removed after 410")
        wait_for(lambda: proxy.metric("pushproxy_watchers", {"state": "idle"}) == 0, 15, "the watcher stopped")
        dovecot.deliver("bob", make_message("nobody", sender="carol@example.org", to="bob@localhost"))
        assert_quiet(lambda: len(gateway.received) == 8, what="no notify without a token")
    assert "Traceback" not in proxy.log_text()
