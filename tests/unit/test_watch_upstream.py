"""The watcher's aioimaplib-based connection against scripted servers: literals, IDLE, BYE, timeouts, STARTTLS."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

import pytest

from pushproxy.config import UpstreamConfig
from pushproxy.watch.connect import login, open_connection
from pushproxy.watch.upstream import WatcherProtocol
from pushproxy.watch.upstream_types import (
    AuthenticationFailed,
    ConnectionLost,
    LoginCredentials,
    TemporaryLoginFailure,
    UpstreamError,
)

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(autouse=True)
def predictable_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WatcherProtocol, "tag_prefix", "W")


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.server: asyncio.Server | None = None
        self.errors: list[BaseException] = []
        self.done = asyncio.Event()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            self.done.set()
            writer.close()

    async def __aenter__(self) -> UpstreamConfig:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return UpstreamConfig(host="127.0.0.1", port=port, security="none", connect_timeout=2.0)

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        if self.errors:
            raise self.errors[0]


GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] fake ready\r\n"


async def expect(reader: asyncio.StreamReader, want: bytes) -> bytes:
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line == want, line
    return line


async def test_login_with_synchronizing_literal() -> None:
    password = "pässwörd"
    raw = password.encode()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(GREETING)
        await expect(r, b'W1 LOGIN "alice" {%d}\r\n' % len(raw))
        w.write(b"+ go ahead\r\n")
        assert await r.readexactly(len(raw) + 2) == raw + b"\r\n"
        w.write(b"W1 OK [CAPABILITY IMAP4rev1 IDLE NOTIFY] logged in\r\n")
        await expect(r, b"W2 LOGOUT\r\n")
        w.write(b"* BYE bye\r\nW2 OK done\r\n")

    async with FakeServer(script) as upstream:
        conn = await open_connection(upstream, None, command_timeout=2)
        await login(conn, LoginCredentials("alice", password))
        assert "NOTIFY" in conn.capabilities
        await conn.logout()


async def test_login_with_literal_plus_and_capability_command() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"* OK hi\r\n")
        await expect(r, b"W1 CAPABILITY\r\n")
        w.write(b"* CAPABILITY IMAP4rev1 LITERAL+\r\nW1 OK\r\n")
        line = await r.readline()
        assert line == b"W2 LOGIN {5+}\r\n"
        assert await r.readexactly(5) == "usér".encode()
        assert await r.readline() == b' "a\\"b"\r\n'
        w.write(b"W2 OK ok\r\n")
        await expect(r, b"W3 CAPABILITY\r\n")
        w.write(b"* CAPABILITY IMAP4rev1 IDLE\r\nW3 OK\r\n")
        await r.read()

    async with FakeServer(script) as upstream:
        conn = await open_connection(upstream, None, command_timeout=2)
        await login(conn, LoginCredentials("usér", 'a"b'))
        assert conn.capabilities == {"IMAP4REV1", "IDLE"}
        conn.abort()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"W1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", AuthenticationFailed),
        (b"W1 NO wrong\r\n", AuthenticationFailed),
        (b"W1 BAD syntax\r\n", AuthenticationFailed),
        (b"W1 NO [UNAVAILABLE] Temporary authentication failure.\r\n", TemporaryLoginFailure),
    ],
)
async def test_login_refusals(answer: bytes, error: type[Exception]) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(GREETING)
        await r.readline()
        w.write(answer)
        await r.read()

    async with FakeServer(script) as upstream:
        conn = await open_connection(upstream, None, command_timeout=2)
        with pytest.raises(error):
            await login(conn, LoginCredentials("alice", "pw"))
        conn.abort()


async def test_authenticate_plain_without_sasl_ir() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(GREETING)
        await expect(r, b"W1 AUTHENTICATE PLAIN\r\n")
        w.write(b"+ \r\n")
        blob = await r.readline()
        assert base64.b64decode(blob.strip()) == b"alice\0admin\0adminpw"
        w.write(b"W1 OK [CAPABILITY IMAP4rev1 IDLE] ok\r\n")
        await r.read()

    async with FakeServer(script) as upstream:
        conn = await open_connection(upstream, None, command_timeout=2)
        await login(conn, LoginCredentials("admin", "adminpw", mechanism="plain", authzid="alice"))
        conn.abort()


async def logged_in_script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(GREETING)
    await r.readline()
    w.write(b"W1 OK [CAPABILITY IMAP4rev1 IDLE] ok\r\n")


async def test_idle_ends_on_interesting_response_and_sends_done() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await logged_in_script(r, w)
        await expect(r, b"W2 IDLE\r\n")
        w.write(b"+ idling\r\n")
        await asyncio.sleep(0.05)
        w.write(b"* 3 RECENT\r\n")
        await asyncio.sleep(0.05)
        w.write(b"* 4 EXISTS\r\n")
        await expect(r, b"DONE\r\n")
        w.write(b"* 4 RECENT\r\nW2 OK Idle completed.\r\n")
        await expect(r, b"W3 NOOP\r\n")
        w.write(b"W3 OK\r\n")
        await r.read()

    async with FakeServer(script) as upstream:
        conn = await open_connection(upstream, None, command_timeout=2)
        await login(conn, LoginCredentials("alice", "pw"))
        got = await conn.idle(time.monotonic() + 10, asyncio.Event(), lambda r: r.kind == "EXISTS")
        assert [r.raw for r in got] == [b"* 3 RECENT\r\n", b"* 4 EXISTS\r\n", b"* 4 RECENT\r\n"]
        await conn.command(b"NOOP")  # the stream is in step after IDLE
        conn.abort()


async def test_idle_wake_and_deadline() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await logged_in_script(r, w)
        for tag in (b"W2", b"W3"):
            await expect(r, tag + b" IDLE\r\n")
            w.write(b"+ idling\r\n")
            await expect(r, b"DONE\r\n")
            w.write(tag + b" OK done\r\n")
        await r.read()

    async with FakeServer(script) as upstream:
        conn = await open_connection(upstream, None, command_timeout=2)
        await login(conn, LoginCredentials("alice", "pw"))
        wake = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, wake.set)
        assert await conn.idle(time.monotonic() + 30, wake, lambda r: False) == []
        start = time.monotonic()
        assert await conn.idle(time.monotonic() + 0.2, asyncio.Event(), lambda r: False) == []
        assert time.monotonic() - start >= 0.15
        conn.abort()


async def test_bye_during_idle_raises_at_once() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await logged_in_script(r, w)
        await expect(r, b"W2 IDLE\r\n")
        w.write(b"+ idling\r\n")
        await asyncio.sleep(0.05)
        w.write(b"* BYE Server shutting down.\r\n")
        await w.drain()
        # and the server goes away without answering DONE

    async with FakeServer(script) as upstream:
        conn = await open_connection(upstream, None, command_timeout=5)
        await login(conn, LoginCredentials("alice", "pw"))
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            await conn.idle(time.monotonic() + 60, asyncio.Event(), lambda r: False)
        assert time.monotonic() - start < 4  # not the command timeout, not the IDLE deadline
        assert conn.bye is not None


async def test_silent_server_times_out() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await logged_in_script(r, w)
        await r.read()  # never answers

    async with FakeServer(script) as upstream:
        conn = await open_connection(upstream, None, command_timeout=2)
        await login(conn, LoginCredentials("alice", "pw"))
        conn.command_timeout = 0.2
        with pytest.raises(TimeoutError):
            await conn.command(b"NOOP")
        conn.abort()


async def test_silent_greeting_times_out() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()

    async with FakeServer(script) as upstream:
        upstream.connect_timeout = 0.2
        with pytest.raises(TimeoutError):
            await open_connection(upstream, None, command_timeout=2)


async def test_greeting_bye() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"* BYE Too many connections\r\n")

    async with FakeServer(script) as upstream:
        with pytest.raises(ConnectionLost):
            await open_connection(upstream, None, command_timeout=2)


async def test_starttls_refuses_injected_plaintext() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        await expect(r, b"W1 STARTTLS\r\n")
        w.write(b"W1 OK Begin TLS negotiation now.\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n")
        await r.read()

    async with FakeServer(script) as upstream:
        upstream.security = "starttls"
        with pytest.raises(UpstreamError, match="after STARTTLS"):
            await open_connection(upstream, None, command_timeout=2)


async def test_starttls_not_offered() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
        await r.read()

    async with FakeServer(script) as upstream:
        upstream.security = "starttls"
        with pytest.raises(UpstreamError, match="STARTTLS"):
            await open_connection(upstream, None, command_timeout=2)
