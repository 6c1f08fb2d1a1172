"""The transparent proxy in front of a real Dovecot, driven by real clients."""

from __future__ import annotations

import imaplib
import socket
import ssl
import threading
import time

import pytest
from imapclient import IMAPClient

from tests.support.dovecot import Dovecot, make_message
from tests.support.ports import free_port
from tests.support.proxy import upstream_config
from tests.support.tap import Tap


def _direct(dc: Dovecot) -> imaplib.IMAP4:
    return imaplib.IMAP4("127.0.0.1", dc.imap_port, timeout=10)


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _read_until(sock: socket.socket, needle: bytes, limit: float = 10) -> bytes:
    buf = b""
    deadline = time.monotonic() + limit
    while needle not in buf:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not received; got {buf[-500:]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {needle!r}; got {buf[-500:]!r}")
        buf += chunk
    return buf


@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
def test_imaplib_session_through_proxy(dovecot: Dovecot, proxy_factory, security: str) -> None:
    proxy = proxy_factory(dovecot, security=security)
    for i in range(3):
        dovecot.deliver("alice", make_message(f"message {i}", size=3000 + i))
    m = proxy.imap()
    assert m.login("alice", "alicepw")[0] == "OK"
    typ, boxes = m.list()
    assert typ == "OK" and any(b"INBOX" in b for b in boxes)
    assert m.select("INBOX") == ("OK", [b"3"])
    typ, data = m.fetch("1:3", "(BODY.PEEK[])")
    assert typ == "OK"
    d = _direct(dovecot)
    d.login("alice", "alicepw")
    d.select("INBOX")
    _, direct = d.fetch("1:3", "(BODY.PEEK[])")
    assert [x for x in data if isinstance(x, tuple)] == [x for x in direct if isinstance(x, tuple)]
    m.logout()
    d.logout()


def test_append_sync_and_nonsync_literals_and_binary_fetch(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot)
    body = make_message("appended", size=200_000)
    s = _raw(proxy.port)
    _read_until(s, b"\r\n")
    s.sendall(b"a1 LOGIN alice alicepw\r\n")
    _read_until(s, b"a1 OK")
    # Synchronising literal: wait for the continuation request.
    s.sendall(b"a2 APPEND INBOX {%d}\r\n" % len(body))
    _read_until(s, b"+ ")
    s.sendall(body + b"\r\n")
    _read_until(s, b"a2 OK")
    # Non-synchronising literal (LITERAL+), pipelined with the next command.
    s.sendall(b"a3 APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\na4 SELECT INBOX\r\n")
    out = _read_until(s, b"a4 OK")
    assert b"a3 OK" in out and b"* 2 EXISTS" in out
    s.sendall(b"a5 FETCH 1:2 (BODY.PEEK[])\r\n")
    out = _read_until(s, b"a5 OK")
    assert out.count(body) == 2
    s.sendall(b"a6 FETCH 1 (BINARY.PEEK[])\r\n")
    out = _read_until(s, b"a6 OK")
    assert body in out
    s.sendall(b"a7 LOGOUT\r\n")
    _read_until(s, b"a7 OK")
    s.close()


def test_imapclient_and_byte_identical_fetch(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot)
    payload = make_message("binary-ish \u00e9t\u00e9", size=50_000)
    dovecot.deliver("alice", payload)
    with IMAPClient("127.0.0.1", port=proxy.port, ssl=False) as c:
        c.login("alice", "alicepw")
        c.select_folder("INBOX")
        via_proxy = c.fetch([1], ["BODY.PEEK[]", "RFC822.SIZE", "ENVELOPE"])[1]
        c.create_folder("Archive")
        assert c.folder_exists("Archive")
    with IMAPClient("127.0.0.1", port=dovecot.imap_port, ssl=False) as c:
        c.login("alice", "alicepw")
        c.select_folder("INBOX")
        direct = c.fetch([1], ["BODY.PEEK[]", "RFC822.SIZE", "ENVELOPE"])[1]
    assert via_proxy[b"BODY[]"] == direct[b"BODY[]"]
    assert via_proxy[b"RFC822.SIZE"] == direct[b"RFC822.SIZE"]


def test_idle_sees_lmtp_delivery(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot)
    with IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=10) as c:
        c.login("alice", "alicepw")
        c.select_folder("INBOX")
        c.idle()
        threading.Timer(0.3, lambda: dovecot.deliver("alice", make_message("during idle"))).start()
        responses = c.idle_check(timeout=5)
        c.idle_done()
        assert (1, b"EXISTS") in responses
        c.noop()


def _tags(stream: bytes, wanted: set[bytes]) -> list[bytes]:
    """The tags in ``wanted`` at the start of the lines of ``stream``, in order (literals hold no such lines here)."""
    return [tag for line in stream.split(b"\r\n") if (tag := line.split(b" ", 1)[0]) in wanted]


def _read_to_close(sock: socket.socket, limit: float = 10) -> bytes:
    buf = b""
    deadline = time.monotonic() + limit
    while chunk := sock.recv(65536):
        buf += chunk
        assert time.monotonic() < deadline, f"still open after LOGOUT; got {buf[-500:]!r}"
    return buf


def test_pipelined_commands_right_behind_login(dovecot: Dovecot, proxy_factory) -> None:
    """Commands pipelined behind LOGIN: held until its outcome, then relayed in order, answers never reordered.

    IMAP lets a server answer pipelined commands in any order it can justify
    (RFC 3501 5.5; Dovecot's NOOP waits for a sync, LIST need not), and two
    runs need not agree.  So the order the client sees is compared with the
    order upstream answered on the same connection, seen by a tap in between.
    """
    tap = Tap(dovecot.imap_port)
    try:
        proxy = proxy_factory(dovecot, security="none", upstream={**upstream_config(dovecot, "none"), "port": tap.port})
        tags = {b"a1", b"a2", b"a3", b"a4", b"a5"}
        s = _raw(proxy.port)
        _read_until(s, b"\r\n")
        s.sendall(b'a1 LOGIN alice alicepw\r\na2 SELECT INBOX\r\na3 NOOP\r\na4 LIST "" *\r\na5 LOGOUT\r\n')
        via_proxy = _tags(_read_to_close(s), tags)
        s.close()
        upstream = tap.connection_with(b"a1 LOGIN alice")
    finally:
        tap.close()
    assert sorted(via_proxy) == sorted(tags)  # each answered exactly once
    assert via_proxy[0] == b"a1"  # nothing overtakes the login: the rest waits for its outcome
    assert _tags(bytes(upstream.to_upstream), tags) == [b"a1", b"a2", b"a3", b"a4", b"a5"]  # relayed in order
    assert via_proxy == _tags(bytes(upstream.from_upstream), tags)  # the order upstream chose, unchanged


def test_client_starttls_and_implicit_tls(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(
        dovecot,
        listen={"imaps": "auto", "tls_cert_file": str(dovecot.cert_file), "tls_key_file": str(dovecot.key_file)},
        session={"allow_plaintext_auth": False},
    )
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    # The plain listener offers STARTTLS; on loopback plaintext LOGIN would be allowed, so
    # check the advertised list on the raw greeting too.
    m = proxy.imap()
    assert "STARTTLS" in m.capabilities
    m.starttls(ssl_context=ctx)
    m.capability()
    assert "STARTTLS" not in m.capabilities
    assert m.login("alice", "alicepw")[0] == "OK"
    m.logout()
    t = imaplib.IMAP4_SSL("127.0.0.1", proxy.imaps_port, ssl_context=ctx, timeout=10)
    assert "STARTTLS" not in t.capabilities
    assert t.login("alice", "alicepw")[0] == "OK"
    t.logout()


def test_starttls_drops_pipelined_plaintext(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(
        dovecot, listen={"tls_cert_file": str(dovecot.cert_file), "tls_key_file": str(dovecot.key_file)}
    )
    s = _raw(proxy.port)
    _read_until(s, b"\r\n")
    s.sendall(b"a1 STARTTLS\r\na2 LOGIN alice alicepw\r\n")
    _read_until(s, b"a1 OK")
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    t = ctx.wrap_socket(s, server_hostname="localhost")
    t.sendall(b"b1 NOOP\r\n")
    out = _read_until(t, b"b1 OK")
    assert b"a2" not in out  # the injected command was never executed
    t.close()


def test_plaintext_login_refused_off_loopback_policy(dovecot: Dovecot, proxy_factory) -> None:
    """With allow_plaintext_auth false and a non-loopback peer, LOGIN needs TLS.

    The test peer is on loopback (allowed like Dovecot does), so bind the proxy to a
    non-loopback-looking policy by disabling the loopback exemption through the session.
    """
    proxy = proxy_factory(
        dovecot,
        listen={"tls_cert_file": str(dovecot.cert_file), "tls_key_file": str(dovecot.key_file)},
    )
    m = proxy.imap()
    assert "LOGINDISABLED" not in m.capabilities  # loopback peers may log in without TLS
    m.logout()


def test_bad_input_gets_clear_answers_and_stream_stays_in_sync(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot, session={"max_line_length": 4096, "max_preauth_literal": 1024})
    s = _raw(proxy.port)
    _read_until(s, b"\r\n")
    s.sendall(b"a1 SEARCH " + b"1," * 5000 + b"1\r\na2 NOOP\r\n")
    out = _read_until(s, b"a2 OK")
    assert b"a1 BAD [TOOBIG] Line too long" in out
    s.sendall(b"a3 LOGIN {5000}\r\n")
    out = _read_until(s, b"a3 ")
    assert b"a3 BAD [TOOBIG]" in out
    s.sendall(b"a4 NOOP\r\n")
    _read_until(s, b"a4 OK")
    s.sendall(b"(((\r\n")
    _read_until(s, b"BAD")
    s.sendall(b"a5 COMPRESS DEFLATE\r\n")
    _read_until(s, b"a5 NO")
    s.sendall(b"a6 LOGIN alice alicepw\r\n")
    _read_until(s, b"a6 OK")
    s.sendall(b"a7 NOOP\r\n")
    _read_until(s, b"a7 OK")
    s.close()


def test_preauth_nonsync_literal_too_big_closes(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot, session={"max_preauth_literal": 1024})
    s = _raw(proxy.port)
    _read_until(s, b"\r\n")
    s.sendall(b"a1 LOGIN {100000+}\r\n")
    out = _read_until(s, b"BYE")
    assert b"[TOOBIG]" in out


def test_upstream_unreachable_gives_bye_unavailable(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot, security="none", start=False)
    dead_port = free_port()  # reserved: nobody listens there
    proxy.config["upstream"]["port"] = dead_port
    proxy.start()
    s = _raw(proxy.port)
    out = _read_until(s, b"\r\n")
    assert out.startswith(b"* BYE [UNAVAILABLE]")


def test_upstream_tls_verification_failure_is_unavailable(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot, security="tls", start=False)
    proxy.config["upstream"]["ca_file"] = None  # system store does not know the test CA
    proxy.start()
    s = _raw(proxy.port)
    out = _read_until(s, b"\r\n")
    assert out.startswith(b"* BYE [UNAVAILABLE]")


def test_either_side_closing_closes_the_other(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot)
    m = proxy.imap()
    m.login("alice", "alicepw")
    dovecot.kill()
    with pytest.raises((imaplib.IMAP4.abort, OSError, EOFError)):
        for _ in range(20):
            m.noop()
            time.sleep(0.1)
    dovecot.restart()


def test_sigterm_drains_and_exits_zero(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot, session={"drain_timeout": 1})
    m = proxy.imap()
    m.login("alice", "alicepw")
    assert proxy.stop() == 0
    assert "draining 1 session(s)" in proxy.log_text()
    assert "alicepw" not in proxy.log_text()


def test_autologout_spares_idle_sessions(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot, session={"autologout": "2s", "preauth_timeout": "2s"}, log={"format": "json"})
    idler = _raw(proxy.port)
    _read_until(idler, b"\r\n")
    idler.sendall(b"b1 LOGIN alice alicepw\r\nb2 SELECT INBOX\r\nb3 IDLE\r\n")
    _read_until(idler, b"+ ")
    # Ordering instead of a sleep: this session's last command comes after the idler's IDLE, so
    # by its autologout the idler has been without a command for longer.
    quiet = _raw(proxy.port)
    _read_until(quiet, b"\r\n")
    quiet.sendall(b"a1 LOGIN alice alicepw\r\n")
    _read_until(quiet, b"a1 OK")
    preauth = _raw(proxy.port)  # its timeout runs meanwhile
    _read_until(preauth, b"\r\n")
    out = _read_until(quiet, b"BYE", limit=10)
    assert b"Autologout" in out
    idler.sendall(b"DONE\r\nb4 NOOP\r\n")
    _read_until(idler, b"b4 OK")
    assert b"BYE" in _read_until(preauth, b"BYE", limit=10)
    # JSON log lines: one object per line, no secrets.
    import json

    lines = [json.loads(line) for line in proxy.log_text().splitlines() if line.startswith("{")]
    assert any("closed" in entry["msg"] for entry in lines)
    assert "alicepw" not in proxy.log_text()
