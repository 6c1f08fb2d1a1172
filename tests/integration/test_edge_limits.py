"""Deadlines, connection caps, auth penalty, PROXY headers and client-IP forwarding (issue 9)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from pushproxy.proxy.proxyproto import SIGNATURE, build_header
from tests.support.apns_env import RawClient
from tests.support.dovecot import Dovecot
from tests.support.proxy import upstream_config
from tests.support.waiting import wait_for


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            return buf
        buf += chunk
    return buf


class SourceClient(RawClient):
    """RawClient from a chosen loopback source address."""

    def __init__(self, port: int, source: str = "127.0.0.1", preamble: bytes = b"") -> None:
        self.sock = _connect(port, source)
        if preamble:
            self.sock.sendall(preamble)
        self.buf = b""
        self.greeting = self.read_until(b"\r\n")


def test_slowloris_before_login_is_cut_at_the_deadline(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot, session={"preauth_timeout": "2s"})
    c = SourceClient(proxy.port)
    started = time.monotonic()
    c.sock.settimeout(0.3)
    got = b""
    # One byte every 0.3 s used to keep a pre-login connection open for ever.
    for byte in b"a1 NOOP\r\n" * 10:
        try:
            c.sock.sendall(bytes([byte]))
            got += c.sock.recv(4096)
        except TimeoutError:
            pass
        except OSError:
            break
        if b"* BYE" in got:
            break
    assert b"* BYE" in got, got
    assert time.monotonic() - started < 8
    assert proxy.metric("pushproxy_session_timeouts_total", {"kind": "preauth"}) == 1
    c.close()


def test_connection_caps_per_ip_and_total_with_a_normal_client_served(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot, session={"max_connections": 6, "max_connections_per_ip": 3})
    flood = [SourceClient(proxy.port, "127.0.0.7") for _ in range(3)]
    refused = _connect(proxy.port, "127.0.0.7")
    assert _line(refused).startswith(b"* BYE [UNAVAILABLE]")
    assert refused.recv(10) == b""
    # Someone else is still served during the flood.
    normal = SourceClient(proxy.port, "127.0.0.8")
    assert b"n1 OK" in normal.command(b"n1", b"LOGIN alice alicepw")
    flood += [SourceClient(proxy.port, "127.0.0.9") for _ in range(2)]
    over = _connect(proxy.port, "127.0.0.10")
    assert _line(over).startswith(b"* BYE [UNAVAILABLE]")
    assert proxy.metric("pushproxy_connections_refused_total", {"reason": "per_ip"}) == 1
    assert proxy.metric("pushproxy_connections_refused_total", {"reason": "total"}) == 1
    # Idle flooders never opened an upstream connection (only the normal client and the first one did).
    assert dovecot.log_tail(200).count("imap-login: Info: Disconnected") <= 2
    for c in flood:
        c.close()
    # Slots are given back.
    deadline = time.monotonic() + 10
    while True:
        again = _connect(proxy.port, "127.0.0.7")
        if not _line(again).startswith(b"* BYE"):
            break
        again.close()
        assert time.monotonic() < deadline, "slots not released"
        time.sleep(0.1)
    again.close()
    normal.close()


def test_auth_failure_penalty_slows_only_the_failing_ip(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot, session={"auth_penalty_max": "4s"})
    c = SourceClient(proxy.port, "127.0.0.11")
    assert b"a1 NO" in c.command(b"a1", b"LOGIN alice wrong")  # first failure: no delay yet
    started = time.monotonic()
    assert b"a2 NO" in c.command(b"a2", b"LOGIN alice wrong")
    assert time.monotonic() - started >= 1.9  # 2 s after one failure
    other = SourceClient(proxy.port, "127.0.0.12")
    started = time.monotonic()
    assert b"b1 NO" in other.command(b"b1", b"LOGIN alice wrong")
    assert time.monotonic() - started < 1.9
    assert b"b2 OK" in other.command(b"b2", b"LOGIN alice alicepw")
    assert proxy.metric("pushproxy_auth_failures_total") == 3
    assert proxy.metric("pushproxy_logins_total") == 1  # b2's OK
    c.close()
    other.close()


def test_proxy_header_from_untrusted_peer_is_refused(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot)
    s = _connect(proxy.port)
    assert _line(s).startswith(b"* OK")
    s.sendall(build_header("203.0.113.7", 4000, "127.0.0.1", proxy.port))
    assert _line(s).startswith(b"* BYE")
    assert proxy.metric("pushproxy_connections_refused_total", {"reason": "proxy_header"}) == 1
    s.close()
    # Trusted networks configured, but this peer is not in them.
    proxy2 = proxy_factory(dovecot, listen={"proxy_protocol": True, "proxy_protocol_trusted": ["10.0.0.0/8"]})
    s = _connect(proxy2.port)
    assert _line(s).startswith(b"* OK")
    s.sendall(SIGNATURE)
    assert _line(s).startswith(b"* BYE")
    s.close()


def _wait_dovecot_log(dc: Dovecot, needle: str, timeout: float = 10) -> str:
    wait_for(lambda: needle in dc.log_tail(400), timeout, lambda: f"{needle!r} in the Dovecot log:\n{dc.log_tail(40)}")
    return dc.log_tail(400)


@pytest.mark.parametrize("mode", ["id", "proxy-v2"])
def test_client_ip_reaches_dovecot(dovecot_factory, proxy_factory, mode: str) -> None:
    dc = dovecot_factory(login_trusted_networks="127.0.0.0/8", haproxy=(mode == "proxy-v2"))
    upstream = {**upstream_config(dc, "none"), "forward_client_ip": mode}
    if mode == "proxy-v2":
        upstream["port"] = dc.haproxy_port  # this listener requires a PROXY header
    proxy = proxy_factory(dc, security="none", upstream=upstream)
    c = SourceClient(proxy.port, "127.0.0.21")
    # The client's own ID is merged (its x- fields cannot choose the address).
    assert b"i1 OK" in c.command(b"i1", b'ID ("name" "hostile" "x-originating-ip" "10.9.9.9")')
    assert b"a1 OK" in c.command(b"a1", b"LOGIN alice alicepw")
    text = _wait_dovecot_log(dc, "user=<alice>")
    login = [line for line in text.splitlines() if "Login: user=<alice>" in line][-1]
    assert "rip=127.0.0.21" in login and "10.9.9.9" not in login
    c.close()


def test_proxy_header_from_trusted_balancer_flows_end_to_end(dovecot_factory, proxy_factory) -> None:
    dc = dovecot_factory(login_trusted_networks="127.0.0.0/8")
    proxy = proxy_factory(
        dc,
        security="none",
        listen={"proxy_protocol": True, "proxy_protocol_trusted": ["127.0.0.0/8"]},
        upstream={**upstream_config(dc, "none"), "forward_client_ip": "id"},
        session={"allow_plaintext_auth": True},  # the client is no longer on loopback
    )
    header = build_header("203.0.113.7", 40000, "198.51.100.1", 143)
    c = SourceClient(proxy.port, "127.0.0.31", preamble=header)
    assert c.greeting.startswith(b"* OK")
    assert b"a1 OK" in c.command(b"a1", b"LOGIN alice alicepw")
    text = _wait_dovecot_log(dc, "user=<alice>")
    assert "rip=203.0.113.7" in [line for line in text.splitlines() if "Login: user=<alice>" in line][-1]
    c.close()


class GarbageUpstream:
    """An 'IMAP server' that greets, then answers every command with hostile bytes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] garbage ahead\r\n")
                while conn.recv(4096):
                    conn.sendall(self.payload)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    "payload",
    [
        b"* 1 FETCH (BODY[] {99999999999999999999}\r\n",
        b"\x00\xff\r\n* \r\n+\r\n\r\n" * 50 + b"a1 OK [CAPABILITY \xff] x\r\n",
        b"a1 OK\r\na1 OK\r\n* BYE\r\nzz OK\r\n" + b"x" * 3_000_000,
    ],
)
def test_garbage_from_upstream_never_raises(dovecot: Dovecot, proxy_factory, payload: bytes) -> None:
    upstream = GarbageUpstream(payload)
    proxy = proxy_factory(dovecot, upstream={"host": "127.0.0.1", "port": upstream.port, "security": "none"})
    for _ in range(2):
        c = SourceClient(proxy.port)
        c.sock.settimeout(5)
        try:
            c.sock.sendall(b"a1 LOGIN alice alicepw\r\na2 NOOP\r\n")
            while c.sock.recv(65536):
                pass
        except OSError:
            pass
        c.close()
    upstream.close()
    # proxy_factory fails the test if the proxy logged a traceback.
