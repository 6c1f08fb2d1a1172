"""The relay path under load: bytes identical to a direct connection, whatever the reader's pace.

The proxy sends at once when a transport has nothing queued and leaves the
rest to Twisted (pushproxy/proxy/transport.py); a reader with a small receive
buffer makes the kernel take partial writes, so the queued remainder, the
producer pause/resume and the TLS layer are all exercised.
"""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.support.dovecot import Dovecot, make_message

_PIPELINE = b"".join(b"p%d NOOP\r\n" % i for i in range(200))


def _session(port: int, ctx: ssl.SSLContext | None, script: bytes, last_tag: bytes) -> bytes:
    """Log in, run ``script`` (pipelined), read slowly up to ``last_tag``'s answer; the bytes after LOGIN."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    raw.settimeout(20)
    raw.connect(("127.0.0.1", port))
    sock = ctx.wrap_socket(raw, server_hostname="localhost") if ctx is not None else raw
    buf = bytearray()

    def until(needle: bytes) -> None:
        while needle not in buf:
            chunk = sock.recv(1024)  # small reads: the proxy's writes back up
            assert chunk, f"connection closed before {needle!r}"
            buf.extend(chunk)

    until(b"\r\n")
    sock.sendall(b"l1 LOGIN alice alicepw\r\nl2 EXAMINE INBOX\r\n")
    until(b"\r\nl2 OK")
    until(b"\r\n")  # the end of l2's line: Dovecot's own timings follow in it
    del buf[:]
    sock.sendall(script)
    until(b"\r\n" + last_tag + b" OK")
    sock.close()
    return bytes(buf)


def _digest(stream: bytes) -> tuple[bytes, list[bytes], set[bytes]]:
    """The bulk FETCH answer exactly; then the tagged lines in order, without Dovecot's
    timings ("(0.001 + 0.000 secs)"), and the untagged ones as a set (Dovecot slips
    unsolicited flag updates in wherever its timing puts them)."""
    bulk, _, rest = stream.partition(b"\r\nf1 OK")
    lines = rest.split(b"\r\n")[1:]
    tagged = [line.split(b" (")[0] for line in lines if line[:1] not in (b"*", b"")]
    return bulk, tagged, {line for line in lines if line[:1] == b"*"}


@pytest.mark.parametrize("tls", [False, True])
def test_bulk_fetch_and_pipelined_commands_are_byte_identical(dovecot: Dovecot, proxy_factory, tls: bool) -> None:
    for i in range(3):
        dovecot.deliver("alice", make_message(f"big {i}", size=1_500_000))
    if tls:
        proxy = proxy_factory(
            dovecot,
            security="tls",
            listen={"imaps": "auto", "tls_cert_file": str(dovecot.cert_file), "tls_key_file": str(dovecot.key_file)},
        )
        ctx: ssl.SSLContext | None = ssl.create_default_context(cafile=str(dovecot.ca_file))
        port, direct_port = proxy.imaps_port, dovecot.imaps_port
    else:
        proxy = proxy_factory(dovecot, security="none")
        ctx, port, direct_port = None, proxy.port, dovecot.imap_port
    script = b"f1 FETCH 1:* (BODY.PEEK[] RFC822.SIZE)\r\n" + _PIPELINE + b"f2 UID FETCH 1:* (FLAGS)\r\n"
    via_proxy = _session(port, ctx, script, b"f2")
    direct = _session(direct_port, ctx, script, b"f2")
    assert len(via_proxy) > 4_500_000
    assert _digest(via_proxy) == _digest(direct)
