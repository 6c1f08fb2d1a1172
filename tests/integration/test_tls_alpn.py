"""ALPN on the client-facing TLS: ``imap`` and no ALPN are served, anything else is refused with one log line.

Delta Chat offers ALPN ``imap`` on implicit TLS on every port but 993; with
Twisted 26 a server context without acceptable protocols aborted those
handshakes (issue 22 point 1).  The listener here is on a random port.
Clients resume their TLS sessions (tickets), on implicit TLS and STARTTLS.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.dovecot import Dovecot
from tests.support.waiting import wait_for

TLS = {"imaps": "auto"}


def _tls_proxy(dovecot: Dovecot, proxy_factory):
    return proxy_factory(
        dovecot,
        listen={**TLS, "tls_cert_file": str(dovecot.cert_file), "tls_key_file": str(dovecot.key_file)},
    )


def _context(dovecot: Dovecot, alpn: list[str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


@contextlib.contextmanager
def _tls_client(dovecot: Dovecot, port: int, alpn: list[str] | None) -> Iterator[ssl.SSLSocket]:
    """A client on implicit TLS to ``port``, offering ``alpn``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with _context(dovecot, alpn).wrap_socket(raw, server_hostname="localhost") as tls:
            yield tls


def _read_until(sock: socket.socket, needle: bytes, data: bytes = b"") -> bytes:
    """``data`` and what the peer sends next, until ``needle`` is in it or the peer closes."""
    sock.settimeout(10)
    while needle not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _login(sock: ssl.SSLSocket) -> bytes:
    greeting = _read_until(sock, b"\r\n")
    sock.sendall(b"a1 LOGIN alice alicepw\r\n")
    return _read_until(sock, b"a1 ", greeting)


@pytest.mark.parametrize("alpn", [["imap"], ["h2", "imap"], None])
def test_implicit_tls_accepts_imap_alpn_and_none(dovecot: Dovecot, proxy_factory, alpn) -> None:
    proxy = _tls_proxy(dovecot, proxy_factory)
    assert proxy.imaps_port != 993
    with _tls_client(dovecot, proxy.imaps_port, alpn) as tls:
        assert tls.selected_alpn_protocol() == ("imap" if alpn else None)
        assert b"a1 OK" in _login(tls)


def test_starttls_accepts_imap_alpn(dovecot: Dovecot, proxy_factory) -> None:
    proxy = _tls_proxy(dovecot, proxy_factory)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        greeting = _read_until(raw, b"\r\n")
        raw.sendall(b"s1 STARTTLS\r\n")
        assert b"s1 OK" in _read_until(raw, b"s1 OK", greeting)
        with _context(dovecot, ["imap"]).wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "imap"
            tls.sendall(b"a0 NOOP\r\n")
            assert b"a0 OK" in _read_until(tls, b"a0 ")


def test_other_alpn_refused_with_one_log_line(dovecot: Dovecot, proxy_factory) -> None:
    proxy = _tls_proxy(dovecot, proxy_factory)
    with pytest.raises(ssl.SSLError, match=r"NO_APPLICATION_PROTOCOL|no application protocol"):
        with _tls_client(dovecot, proxy.imaps_port, ["h2", "http/1.1"]):
            pass
    wait_for(lambda: "ALPN offered h2,http/1.1" in proxy.log_text(), what="the refusal's log line")
    log = proxy.log_text()
    assert log.count("ALPN offered") == 1
    assert "Traceback" not in log
    # The listener still serves the next client.
    with _tls_client(dovecot, proxy.imaps_port, ["imap"]) as tls:
        assert b"a1 OK" in _login(tls)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_s_client_alpn_imap(dovecot: Dovecot, proxy_factory) -> None:
    """The issue's reproduction: ``openssl s_client -alpn imap`` gets the greeting."""
    proxy = _tls_proxy(dovecot, proxy_factory)
    done = subprocess.run(
        ["openssl", "s_client", "-alpn", "imap", "-CAfile", str(dovecot.ca_file), "-connect",
         f"127.0.0.1:{proxy.imaps_port}", "-servername", "localhost", "-quiet"],
        input=b"a1 LOGOUT\r\n", capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    assert b"* OK" in done.stdout, done.stderr[-500:]
    assert b"a1 OK" in done.stdout


def test_clients_resume_tls_sessions(dovecot: Dovecot, proxy_factory) -> None:
    proxy = _tls_proxy(dovecot, proxy_factory)
    ctx = _context(dovecot, None)
    session = None
    reused = []
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", proxy.imaps_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                assert b"a1 OK" in _login(tls)  # TLS 1.3: the tickets come before the greeting
                reused.append(tls.session_reused)
                session = tls.session
    assert reused == [False, True, True]
    session = None
    reused = []
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
            greeting = _read_until(raw, b"\r\n")
            raw.sendall(b"s1 STARTTLS\r\n")
            assert b"s1 OK" in _read_until(raw, b"s1 OK", greeting)
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                assert b"a1 OK" in _login_after_starttls(tls)
                reused.append(tls.session_reused)
                session = tls.session
    assert reused == [False, True]


def _login_after_starttls(sock: ssl.SSLSocket) -> bytes:
    sock.sendall(b"a1 LOGIN alice alicepw\r\n")
    return _read_until(sock, b"a1 ")
