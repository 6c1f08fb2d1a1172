"""The watcher's upstream IMAP connection: a small asyncio client.

Why not aioimaplib (the stack's IMAP client)?  Version 2.0.3, read for this
purpose, lacks what a long-lived watcher needs: no STARTTLS, no NOTIFY, no
AUTHENTICATE PLAIN, no literals in commands (so non-ASCII logins cannot be
sent correctly), untagged responses that arrive outside IDLE while no command
is pending are dropped, and a ``* BYE`` or a lost connection leaves pending
commands waiting forever.  Each of those would need a patch around its
internals; the part of IMAP a watcher speaks is small enough to own.

Design:

- :class:`_WireProtocol` is an ``asyncio.Protocol`` that cuts the byte stream
  into complete responses (:class:`~pushproxy.watch.imapwire.ResponseAssembler`)
  and queues them.  No StreamReader/StreamWriter pair: fewer objects per
  connection, which matters with 10,000 watchers.
- :class:`ImapConnection` runs one command at a time (a watcher never
  pipelines) and returns the untagged responses that arrived with it; the
  caller decides what they mean.  Every wait is bounded by a timeout.
- A ``* BYE`` or a closed socket raises :class:`ConnectionLost` from whatever
  is waiting, at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal as TypingLiteral
from typing import cast

from pushproxy.config import UpstreamConfig
from pushproxy.imap.parse import StatusResponse, parse_status_response
from pushproxy.watch.imapwire import (
    CommandPart,
    Literal,
    MalformedResponse,
    ResponseAssembler,
    astring,
    parse_capabilities,
)

__all__ = [
    "AuthenticationFailed",
    "CommandFailed",
    "CommandResult",
    "ConnectionLost",
    "ImapConnection",
    "LoginCredentials",
    "TemporaryLoginFailure",
    "UpstreamError",
    "make_tls_context",
]

log = logging.getLogger(__name__)

# NO response codes (RFC 5530) that say "try again later", not "wrong credentials".
_TEMPORARY_CODES = frozenset({"UNAVAILABLE", "LIMIT", "INUSE", "SERVERBUG"})
_MAX_QUEUED = 2000  # queued responses before reading from the socket pauses
_LITERAL_MINUS_MAX = 4096  # RFC 7888: LITERAL- allows non-synchronizing literals up to 4096 bytes


class UpstreamError(Exception):
    """Something went wrong with the upstream connection (transient: reconnect later)."""


class ConnectionLost(UpstreamError):
    """The server closed the connection or said BYE."""


class CommandFailed(UpstreamError):
    """A command was answered NO or BAD."""

    def __init__(self, command: str, status: StatusResponse, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        super().__init__(f"{command} failed: {text[:200]}")
        self.status = status

    @property
    def code(self) -> str | None:
        if self.status.code is None:
            return None
        return self.status.code.decode("ascii", "replace").split(" ", 1)[0].upper()


class AuthenticationFailed(Exception):
    """Upstream refused the credentials: do not retry them."""


class TemporaryLoginFailure(UpstreamError):
    """Upstream refused the login for a reason that may go away (NO [UNAVAILABLE], ...)."""


@dataclass(frozen=True, slots=True)
class LoginCredentials:
    """How to log in upstream.  ``authzid``: SASL PLAIN authorization identity (master users)."""

    login: str
    secret: str
    mechanism: TypingLiteral["login", "plain"] = "login"
    authzid: str | None = None

    def __repr__(self) -> str:  # never show the secret
        extra = f", authzid={self.authzid!r}" if self.authzid else ""
        return f"LoginCredentials(login={self.login!r}, mechanism={self.mechanism}{extra})"


@dataclass(frozen=True, slots=True)
class CommandResult:
    untagged: list[bytes]
    status: StatusResponse
    line: bytes  # the tagged line


def make_tls_context(upstream: UpstreamConfig) -> ssl.SSLContext:
    """The client TLS context for upstream connections (shared by all watchers)."""
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(upstream.ca_file) if upstream.ca_file else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not upstream.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _set_keepalive(transport: asyncio.BaseTransport) -> None:
    """TCP keepalive: a dead peer (NAT timeout, pulled cable) is noticed within minutes."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 120)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


class _WireProtocol(asyncio.Protocol):
    """Bytes in -> complete responses queued; wakes the one waiting reader."""

    __slots__ = ("_assembler", "_lost", "_paused", "_queue", "_waiter", "transport")

    def __init__(self) -> None:
        self._assembler = ResponseAssembler()
        self._queue: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self._paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self._assembler.feed(data)
        except MalformedResponse as exc:
            self._fail(ConnectionLost(f"unreadable response from upstream: {exc}"))
            return
        if responses:
            self._queue.extend(responses)
            if len(self._queue) > _MAX_QUEUED and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            self._lost = ConnectionLost(f"connection lost: {exc}" if exc else "connection closed by upstream")
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._lost = exc
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def buffered(self) -> int:
        return len(self._queue) + self._assembler.pending

    def pop_ready(self) -> bytes | None:
        if self._queue:
            resp = self._queue.popleft()
            if self._paused and len(self._queue) < _MAX_QUEUED // 2 and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return resp
        return None

    async def next_response(self) -> bytes:
        while True:
            resp = self.pop_ready()
            if resp is not None:
                return resp
            if self._lost is not None:
                raise self._lost
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class ImapConnection:
    """One authenticated-or-not IMAP connection; one command at a time."""

    def __init__(self, protocol: _WireProtocol, transport: asyncio.Transport, command_timeout: float) -> None:
        self._protocol = protocol
        self._transport = transport
        self.command_timeout = command_timeout
        self.capabilities: frozenset[str] = frozenset()
        self._tagnum = 0
        self.bye: bytes | None = None

    # ------------------------------------------------------------------ connect

    @classmethod
    async def open(
        cls,
        upstream: UpstreamConfig,
        tls_context: ssl.SSLContext | None,
        *,
        command_timeout: float,
    ) -> ImapConnection:
        """Connect (TLS or STARTTLS as configured) and read the greeting; not yet logged in."""
        loop = asyncio.get_running_loop()
        server_name = upstream.server_name or upstream.host
        implicit_tls = upstream.security == "tls"
        if upstream.security != "none" and tls_context is None:
            tls_context = make_tls_context(upstream)
        async with asyncio.timeout(upstream.connect_timeout):
            transport, protocol = await loop.create_connection(
                _WireProtocol,
                upstream.host,
                upstream.port,
                ssl=tls_context if implicit_tls else None,
                server_hostname=server_name if implicit_tls else None,
            )
        _set_keepalive(transport)
        conn = cls(protocol, transport, command_timeout)
        try:
            async with asyncio.timeout(upstream.connect_timeout):
                await conn._greeting()
                if upstream.security == "starttls":
                    assert tls_context is not None
                    await conn._starttls(tls_context, server_name)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _greeting(self) -> None:
        resp = await self._protocol.next_response()
        status = parse_status_response(resp)
        if status is None or status.tag != b"*":
            raise UpstreamError(f"unexpected greeting {resp[:80]!r}")
        if status.status == b"BYE":
            raise ConnectionLost(f"upstream refused the connection: {resp[:120].decode('utf-8', 'replace')}")
        if status.status != b"OK":
            # PREAUTH would mean someone else's identity: a watcher must log in itself.
            raise UpstreamError(f"unexpected greeting status {status.status.decode()}")
        caps = parse_capabilities(resp)
        if caps is not None:
            self.capabilities = caps

    async def _starttls(self, ctx: ssl.SSLContext, server_name: str) -> None:
        if self.capabilities and "STARTTLS" not in self.capabilities:
            raise UpstreamError("upstream does not offer STARTTLS (upstream.security: starttls)")
        result = await self.command(b"STARTTLS")
        if self._protocol.buffered:
            # Anything after the tagged OK was sent in clear text before the handshake:
            # a man in the middle could have injected it (CVE-2011-0411 style).
            raise UpstreamError("upstream sent data after STARTTLS OK; refusing to continue")
        del result
        loop = asyncio.get_running_loop()
        new_transport = await loop.start_tls(self._transport, self._protocol, ctx, server_hostname=server_name)
        if new_transport is None:
            raise ConnectionLost("TLS handshake failed")
        self._transport = new_transport
        self._protocol.transport = new_transport
        self.capabilities = frozenset()  # pre-TLS capabilities are not to be trusted

    # ------------------------------------------------------------------ commands

    def _next_tag(self) -> bytes:
        self._tagnum += 1
        return b"W%d" % self._tagnum

    def _write(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise ConnectionLost("connection closed")
        self._transport.write(data)

    async def read(self) -> bytes:
        """The next response (no timeout here: callers bound it)."""
        resp = await self._protocol.next_response()
        if resp[:6].upper() == b"* BYE ":
            self.bye = resp
        return resp

    def _literal_prefix(self, size: int) -> bytes | None:
        """``{n+}`` when the server takes non-synchronizing literals of this size, else None."""
        caps = self.capabilities
        if "LITERAL+" in caps or ("LITERAL-" in caps and size <= _LITERAL_MINUS_MAX):
            return b"{%d+}\r\n" % size
        return None

    async def command(self, *parts: CommandPart, timeout: float | None = None, check: bool = True) -> CommandResult:
        """Run ``<tag> <parts...>``; raise CommandFailed on NO/BAD when ``check``."""
        tag = self._next_tag()
        untagged: list[bytes] = []
        name = parts[0].split(b" ", 1)[0].decode("ascii", "replace") if isinstance(parts[0], bytes) else "?"
        async with asyncio.timeout(timeout if timeout is not None else self.command_timeout):
            chunks: list[bytes] = [tag, b" "]
            for part in parts:
                if isinstance(part, Literal):
                    prefix = self._literal_prefix(len(part.data))
                    if prefix is not None:
                        chunks += [prefix, part.data]
                        continue
                    chunks.append(b"{%d}\r\n" % len(part.data))
                    self._write(b"".join(chunks))
                    chunks = []
                    await self._continuation(tag, untagged, name)
                    chunks.append(part.data)
                else:
                    chunks.append(part)
            chunks.append(b"\r\n")
            self._write(b"".join(chunks))
            line = await self._until_tagged(tag, untagged)
        result = CommandResult(untagged, _status(line), line)
        if check and result.status.status != b"OK":
            raise CommandFailed(name, result.status, line)
        return result

    async def _continuation(self, tag: bytes, untagged: list[bytes], name: str) -> None:
        while True:
            resp = await self.read()
            if resp.startswith(b"+"):
                return
            if resp.startswith(tag + b" "):
                raise CommandFailed(name, _status(resp), resp)
            untagged.append(resp)

    async def _until_tagged(self, tag: bytes, untagged: list[bytes]) -> bytes:
        prefix = tag + b" "
        while True:
            resp = await self.read()
            if resp.startswith(prefix):
                return resp
            if not resp.startswith(b"+"):
                untagged.append(resp)

    # ------------------------------------------------------------------ login

    async def login(self, creds: LoginCredentials) -> None:
        """LOGIN or AUTHENTICATE PLAIN; then learn the capabilities.

        Raises AuthenticationFailed for a refusal that retrying will not fix,
        TemporaryLoginFailure for NO [UNAVAILABLE] and friends.
        """
        if not self.capabilities:
            await self.refresh_capabilities()
        use_plain = creds.mechanism == "plain" or "LOGINDISABLED" in self.capabilities
        if use_plain and "AUTH=PLAIN" not in self.capabilities:
            raise TemporaryLoginFailure("upstream offers neither LOGIN nor AUTHENTICATE PLAIN here")
        try:
            if use_plain:
                result = await self._authenticate_plain(creds)
            else:
                result = await self.command(b"LOGIN ", astring(creds.login), b" ", astring(creds.secret), check=False)
        except CommandFailed as exc:  # NO/BAD before the continuation
            result = CommandResult([], exc.status, b"")
        status = result.status
        if status.status != b"OK":
            code = (status.code or b"").decode("ascii", "replace").split(" ", 1)[0].upper()
            if status.status == b"NO" and code in _TEMPORARY_CODES:
                raise TemporaryLoginFailure(f"upstream login refused for now ({code})")
            # NO [AUTHENTICATIONFAILED], any other NO, or BAD: retrying the same
            # credentials would fail again (and count against the account's lockout).
            raise AuthenticationFailed(f"upstream refused the login ({status.status.decode()} {code})".strip())
        caps = None
        for resp in [result.line, *result.untagged]:
            caps = parse_capabilities(resp) or caps
        if caps is not None:
            self.capabilities = caps
        else:
            await self.refresh_capabilities()

    async def _authenticate_plain(self, creds: LoginCredentials) -> CommandResult:
        authzid = (creds.authzid or "").encode("utf-8")
        blob = base64.b64encode(authzid + b"\0" + creds.login.encode("utf-8") + b"\0" + creds.secret.encode("utf-8"))
        if "SASL-IR" in self.capabilities:
            return await self.command(b"AUTHENTICATE PLAIN ", blob, check=False)
        tag = self._next_tag()
        untagged: list[bytes] = []
        async with asyncio.timeout(self.command_timeout):
            self._write(tag + b" AUTHENTICATE PLAIN\r\n")
            await self._continuation(tag, untagged, "AUTHENTICATE")
            self._write(blob + b"\r\n")
            line = await self._until_tagged(tag, untagged)
        return CommandResult(untagged, _status(line), line)

    async def refresh_capabilities(self) -> frozenset[str]:
        result = await self.command(b"CAPABILITY")
        for resp in result.untagged:
            caps = parse_capabilities(resp)
            if caps is not None:
                self.capabilities = caps
        return self.capabilities

    # ------------------------------------------------------------------ IDLE

    async def idle(
        self,
        deadline: float,
        wake: asyncio.Event,
        interesting: Callable[[bytes], bool],
    ) -> list[bytes]:
        """IDLE until an interesting response, the deadline (monotonic) or ``wake``.

        Returns every untagged response seen, in order (those that ended the
        IDLE and those read while finishing it with DONE).
        """
        tag = self._next_tag()
        collected: list[bytes] = []
        async with asyncio.timeout(self.command_timeout):
            self._write(tag + b" IDLE\r\n")
            await self._continuation(tag, collected, "IDLE")
        done = any(interesting(r) for r in collected) or wake.is_set()
        read_task: asyncio.Task[bytes] | None = None
        wake_task: asyncio.Task[bool] | None = None
        ended_by_server: bytes | None = None
        try:
            while not done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if read_task is None:
                    read_task = asyncio.ensure_future(self.read())
                if wake_task is None:
                    wake_task = asyncio.ensure_future(wake.wait())
                finished, _ = await asyncio.wait(
                    (read_task, wake_task), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if read_task in finished:
                    resp = read_task.result()  # raises ConnectionLost
                    read_task = None
                    if resp.startswith(tag + b" "):
                        ended_by_server = resp  # the server ended IDLE itself
                        break
                    if resp.startswith(b"+"):
                        continue
                    collected.append(resp)
                    if interesting(resp) or self.bye is not None:
                        done = True
                if wake_task in finished:
                    done = True
            if ended_by_server is not None:
                return collected
            # End the IDLE; a read already in flight continues with the next response.
            async with asyncio.timeout(self.command_timeout):
                self._write(b"DONE\r\n")
                while True:
                    if read_task is not None:
                        resp = await read_task
                        read_task = None
                    else:
                        resp = await self.read()
                    if resp.startswith(tag + b" "):
                        break
                    if not resp.startswith(b"+"):
                        collected.append(resp)
        finally:
            for task in (read_task, wake_task):
                if task is not None and not task.done():
                    task.cancel()
        return collected

    # ------------------------------------------------------------------ end

    async def logout(self, timeout: float = 5.0) -> None:
        """LOGOUT politely (bounded), then close."""
        try:
            if not self._transport.is_closing():
                await self.command(b"LOGOUT", timeout=timeout, check=False)
        except (UpstreamError, TimeoutError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    @property
    def closed(self) -> bool:
        return self._transport.is_closing()


def _status(line: bytes) -> StatusResponse:
    status = parse_status_response(line)
    if status is None:
        raise UpstreamError(f"malformed tagged response {line[:80]!r}")
    return status
