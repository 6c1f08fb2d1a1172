"""Delta Chat's METADATA commands replayed byte for byte through a real proxy in front of a real Dovecot.

The forms are chatmail/core's: 2.65 sends ``SETMETADATA "INBOX"
(/private/devicetoken "openpgp:...")`` (quoted), older cores the same with a
``{n+}`` literal; ``GETMETADATA "" (/shared/comment ...)`` on every new
connection.  With METADATA on upstream everything but the device token goes
to Dovecot; with it off the proxy answers (RFC 5464) itself.
"""

from __future__ import annotations

import socket

import pytest

from tests.support.deltachat_env import stored_tokens
from tests.support.dovecot import Dovecot

TOKEN = "openpgp:" + "wV0GIQZErtwEO31W8g8V7/EP7v3PIdUL" * 20  # the shape of 2.65's, 648 characters


class Raw:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.until(b"\r\n")

    def until(self, marker: bytes) -> bytes:
        """Everything up to and including the first ``marker`` (a line end)."""
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed waiting for {marker!r}: {self.buf[-300:]!r}")
            self.buf += chunk
        end = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def cmd(self, tag: bytes, line: bytes) -> bytes:
        self.sock.sendall(tag + b" " + line + b"\r\n")
        return self._tagged(tag)

    def _tagged(self, tag: bytes) -> bytes:
        """The lines up to the tagged response of ``tag`` (literals in responses are short here)."""
        out = b""
        while True:
            line = self.until(b"\r\n")
            out += line
            if line.startswith(tag + b" "):
                return out

    def close(self) -> None:
        self.sock.close()


def _proxy(dovecot: Dovecot, proxy_factory):
    return proxy_factory(
        dovecot, watch={"credentials": "vault"}, deltachat={"enabled": True, "notify_url": "http://127.0.0.1:9/n"}
    )


@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "no-metadata"])
def test_delta_chat_metadata_commands_replayed(dovecot_factory, proxy_factory, metadata: bool) -> None:
    dovecot = dovecot_factory(metadata=metadata)
    proxy = _proxy(dovecot, proxy_factory)
    c = Raw(proxy.port)
    try:
        login = c.cmd(b"a1", b"LOGIN alice alicepw")
        caps = c.cmd(b"a2", b"CAPABILITY")
        assert b"a1 OK" in login
        atoms = caps.split(b"\r\n")[0].upper().split()
        assert atoms.count(b"XDELTAPUSH") == 1 and atoms.count(b"METADATA") == 1

        # What 2.65 sends on connecting, then its quoted registration.
        get = c.cmd(b"a3", b'GETMETADATA "" (/shared/comment /shared/admin /shared/vendor/deltachat/irohrelay '
                           b"/shared/vendor/deltachat/turn /shared/vendor/deltachat/maxsmtprecipients "
                           b"/shared/vendor/deltachat/appversions)")  # fmt: skip
        assert b"a3 OK" in get
        assert b"a4 OK" in c.cmd(b"a4", b'SETMETADATA "INBOX" (/private/devicetoken "' + TOKEN.encode() + b'")')
        assert stored_tokens(proxy.config_file) == [("alice", TOKEN)]

        # Other entries: Dovecot's when it has METADATA, refused when it has not.
        other = c.cmd(b"a5", b'SETMETADATA "INBOX" (/private/comment "hello")')
        read = c.cmd(b"a6", b'GETMETADATA "INBOX" (/private/comment /private/devicetoken)')
        assert b"a6 OK" in read
        assert TOKEN.encode() not in read  # write-only, and never stored upstream
        if metadata:
            assert b"a5 OK" in other and b"hello" in read
        else:
            assert b"a5 NO" in other and b"* METADATA" not in read

        # The older cores' literal form, and a synchronising literal (continuation first).
        c.sock.sendall(b"b1 SETMETADATA INBOX (/private/devicetoken {%d+}\r\n%s)\r\n" % (len(TOKEN), TOKEN.encode()))
        assert b"b1 OK" in c._tagged(b"b1")
        c.sock.sendall(b"b2 SETMETADATA INBOX (/private/devicetoken {%d}\r\n" % len(TOKEN))
        assert c.until(b"\r\n").startswith(b"+ ")
        c.sock.sendall(TOKEN.encode() + b")\r\n")
        assert b"b2 OK" in c._tagged(b"b2")
        assert stored_tokens(proxy.config_file) == [("alice", TOKEN)]  # one device, renewed

        # Refusals keep the stream in sync.
        long = c.cmd(b"c1", b'SETMETADATA INBOX (/private/devicetoken "openpgp:' + b"x" * 5000 + b'")')
        assert b"c1 NO [METADATA MAXSIZE 4096]" in long
        assert b"c2 BAD" in c.cmd(b"c2", b"SETMETADATA INBOX (/private/devicetoken)")
        assert b"c3 OK" in c.cmd(b"c3", b"NOOP")

        # NIL deletes.
        assert b"d1 OK" in c.cmd(b"d1", b"SETMETADATA INBOX (/private/devicetoken NIL)")
        assert stored_tokens(proxy.config_file) == []
        c.cmd(b"z", b"LOGOUT")
    finally:
        c.close()
    assert "Traceback" not in proxy.log_text()
    assert TOKEN not in proxy.log_text()  # never logged


@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "no-metadata"])
def test_device_token_after_a_literal_is_intercepted(dovecot_factory, proxy_factory, metadata: bool) -> None:
    """A SETMETADATA whose first line ends in a literal may name /private/devicetoken further on (the
    claim cannot read the literal): the proxy reads it whole, bounded, and answers it; the token never
    goes upstream, the command's other entries do (when upstream has METADATA)."""
    dovecot = dovecot_factory(metadata=metadata)
    proxy = _proxy(dovecot, proxy_factory)
    c = Raw(proxy.port)
    box, name, after = (f"openpgp:{form}" for form in ("mailbox-literal", "name-literal", "after-a-value"))
    try:
        assert b"a1 OK" in c.cmd(b"a1", b"LOGIN alice alicepw")
        # The mailbox as a synchronising literal: the proxy asks for it.
        c.sock.sendall(b"e1 SETMETADATA {5}\r\n")
        assert c.until(b"\r\n").startswith(b"+ ")
        c.sock.sendall(b'INBOX (/private/devicetoken "%s")\r\n' % box.encode())
        assert b"e1 OK" in c._tagged(b"e1")
        # The entry name as a literal.
        c.sock.sendall(b'e2 SETMETADATA INBOX ({20+}\r\n/private/devicetoken "%s")\r\n' % name.encode())
        assert b"e2 OK" in c._tagged(b"e2")
        # The token after another entry's literal value: that entry goes upstream, the token does not.
        c.sock.sendall(b'e3 SETMETADATA INBOX (/private/comment {5+}\r\nhello /private/devicetoken "%s")\r\n'
                       % after.encode())  # fmt: skip
        e3 = c._tagged(b"e3")
        # A literal where the list belongs (the key after it): malformed, answered here, stream in sync.
        c.sock.sendall(b"e4 SETMETADATA INBOX {21+}\r\n/private/devicetoken x\r\n")
        assert b"e4 BAD" in c._tagged(b"e4")
        # Another entry's literal value alone: relayed by the proxy when upstream has METADATA.
        c.sock.sendall(b"e5 SETMETADATA INBOX (/private/comment {3+}\r\nbye)\r\n")
        e5 = c._tagged(b"e5")
        # Bounded: a synchronising literal past the intercept limit is refused before it is sent.
        c.sock.sendall(b"e6 SETMETADATA INBOX (/private/comment {70000}\r\n")
        assert b"e6 BAD [TOOBIG]" in c._tagged(b"e6")
        assert b"e7 OK" in c.cmd(b"e7", b"NOOP")
        read = c.cmd(b"e8", b'GETMETADATA "INBOX" (/private/comment /private/devicetoken)')
        assert b"e8 OK" in read and b"openpgp:" not in read  # never stored upstream
        stored = {token for _, token in stored_tokens(proxy.config_file)}
        if metadata:
            assert b"e3 OK" in e3 and b"e5 OK" in e5 and b"bye" in read
            assert stored == {box, name, after}
        else:  # only the token can be set here: a command with other entries sets nothing
            assert b"e3 NO" in e3 and b"e5 NO" in e5 and b"* METADATA" not in read
            assert stored == {box, name}
        c.sock.sendall(b"e9 SETMETADATA INBOX (/private/comment {70000+}\r\n")  # already on its way: BYE
        assert c.until(b"\r\n").startswith(b"* BYE [TOOBIG]")
    finally:
        c.close()
    assert "Traceback" not in proxy.log_text()
    assert all(token not in proxy.log_text() for token in (box, name, after))


def test_admin_cli_lists_and_removes_tokens(dovecot: Dovecot, proxy_factory) -> None:
    import subprocess
    import sys

    proxy = _proxy(dovecot, proxy_factory)
    c = Raw(proxy.port)
    try:
        c.cmd(b"a1", b"LOGIN bob bobpw")
        assert b"a2 OK" in c.cmd(b"a2", b'SETMETADATA "INBOX" (/private/devicetoken "' + TOKEN.encode() + b'")')
    finally:
        c.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pushproxy", "deltachat", *args, "--config", str(proxy.config_file)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    listing = cli("list")
    assert listing.returncode == 0 and "bob" in listing.stdout and "1 Delta Chat token(s)" in listing.stdout
    assert TOKEN not in listing.stdout and TOKEN[:20] not in listing.stdout
    assert cli("remove", "--account", "bob").returncode == 0
    assert stored_tokens(proxy.config_file) == []
    assert cli("remove", "--account", "bob").returncode == 1  # nothing left to remove
