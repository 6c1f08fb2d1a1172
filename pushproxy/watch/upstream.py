"""The watcher's upstream IMAP connection: aioimaplib's protocol, extended for long-lived watching.

:class:`WatcherProtocol` subclasses :class:`aioimaplib.IMAP4ClientProtocol`
(connection lifecycle, session state, capabilities, tag generation) and adds
what a watcher needs and aioimaplib 2.0 lacks:

- reading: aioimaplib cuts responses with regular expressions, re-joins its
  buffer on every read (quadratic in a response's size) and recurses once per
  line; here every byte goes through the one sans-IO core
  (:class:`~pushproxy.imap.assemble.ResponseAssembler`, linear whatever the
  chunking) and every response is read by :mod:`pushproxy.imap.data`;
- a queue of unsolicited responses (aioimaplib drops untagged responses that
  arrive outside IDLE while no command is pending): :meth:`idle` hands them
  to the watcher, with those that arrived between commands;
- STARTTLS (through :mod:`pushproxy.watch.tlsbio`, which resumes sessions),
  refusing anything the server sent in clear text after its OK;
- NOTIFY, ENABLE, EXAMINE with QRESYNC, LOGIN and AUTHENTICATE: any command
  through :meth:`command`, with literals (synchronising or LITERAL+/-) and a
  client response after the server's continuation request;
- prompt failure: a ``* BYE`` (outside LOGOUT) or a lost connection fails
  whatever waits at once with :class:`ConnectionLost`;
- a deadline on every await (``command_timeout``; IDLE's own deadline).

One command at a time: a watcher never pipelines.

Connecting and logging in (the procedure around this protocol) is
:mod:`pushproxy.watch.connect`; the errors and results it raises and returns
are :mod:`pushproxy.watch.upstream_types`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

from aioimaplib import AUTH, LOGOUT, NONAUTH, IMAP4ClientProtocol

from pushproxy.imap.assemble import MalformedResponse, ResponseAssembler
from pushproxy.imap.commands import CommandPart, Literal
from pushproxy.imap.data import Response, parse_capabilities, read_response
from pushproxy.watch.tlsbio import start_tls
from pushproxy.watch.upstream_types import CommandFailed, CommandResult, ConnectionLost, UpstreamError

__all__ = ["WatcherProtocol"]

# -- aioimaplib's internals: every use of them is here (tests/unit/test_aioimaplib_internals.py checks each,
# pyproject.toml pins the range).  Otherwise the subclass uses only the base's __init__, connection_made
# (transport, state CONNECTED), new_tag(), state, capabilities and the state names.

# aioimaplib's own command machinery (a Condition, a Queue and an Event: six deques, about
# 4 KB) is never used here (commands go through command(), responses through the core): at
# 10,000 watchers it would be 40 MB.  Only the base's execute/wait/_continuation read it.
_UNUSED_BASE_STATE = ("state_condition", "idle_queue", "_idle_event")


def _shed_base_machinery(protocol: IMAP4ClientProtocol) -> None:
    for name in _UNUSED_BASE_STATE:
        delattr(protocol, name)


def _set_tags(protocol: IMAP4ClientProtocol, prefix: str) -> None:
    """Tags ``<prefix>1``, ``<prefix>2`` ... (new_tag reads tagpre and tagnum)."""
    protocol.tagpre, protocol.tagnum = prefix, 1


_MAX_QUEUED = 2000  # unsolicited responses queued before reading from the socket pauses
_LITERAL_MINUS_MAX = 4096  # RFC 7888: LITERAL- allows non-synchronizing literals up to 4096 bytes


class _Pending:
    __slots__ = ("future", "name", "tag", "untagged")

    def __init__(self, tag: bytes, name: str, future: asyncio.Future[Response]) -> None:
        self.tag = tag
        self.name = name
        self.future = future
        self.untagged: list[Response] = []


class WatcherProtocol(IMAP4ClientProtocol):
    """aioimaplib's client protocol with the pieces a watcher needs (see the module doc)."""

    tag_prefix: str | None = None  # tests: predictable tags (aioimaplib picks a random prefix)

    def __init__(self, command_timeout: float) -> None:
        super().__init__(None)
        _shed_base_machinery(self)
        if self.tag_prefix is not None:
            _set_tags(self, self.tag_prefix)
        self.transport: asyncio.Transport | None = None
        self.command_timeout = command_timeout
        self._assembler = ResponseAssembler()
        self._greeting: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending: _Pending | None = None
        self._continuation: asyncio.Future[Response] | None = None
        self._unsolicited: list[Response] = []  # not a deque: 600 bytes less per connection
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self._paused = False
        self.bye: Response | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        try:
            for raw in self._assembler.feed(data):
                self._dispatch(read_response(raw))
        except MalformedResponse as exc:
            self._fail(ConnectionLost(f"unreadable response from upstream: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLost(f"connection lost: {exc}" if exc else "connection closed by upstream"))

    def _dispatch(self, resp: Response) -> None:
        if not self._greeting.done():
            self._greeting.set_result(resp)
            return
        if resp.tag == b"+":
            if self._continuation is not None and not self._continuation.done():
                self._continuation.set_result(resp)
            return
        pending = self._pending
        if resp.tagged:
            if pending is not None and resp.tag == pending.tag and not pending.future.done():
                # Done at once: whatever follows in the same read is not this command's.
                self._pending = None
                pending.future.set_result(resp)
            else:
                self._fail(ConnectionLost(f"unexpected tagged response: {resp.text}"))
            return
        if resp.kind == "BYE":
            self.bye = resp
            if pending is None or pending.name != "LOGOUT":
                self._fail(ConnectionLost(f"upstream said BYE: {resp.text}"))
                return
        if pending is not None and pending.name != "IDLE":
            pending.untagged.append(resp)
            return
        self._unsolicited.append(resp)
        if len(self._unsolicited) > _MAX_QUEUED and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        self.state = LOGOUT
        futures: list[asyncio.Future[Any] | None] = [self._greeting, self._continuation, self._waiter]
        if self._pending is not None:
            futures.append(self._pending.future)
        for fut in futures:
            if fut is not None and not fut.done():
                fut.set_exception(self._lost)
                fut.exception()  # retrieved: nobody may be waiting on it any more
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    # ------------------------------------------------------------------ connection

    @property
    def closed(self) -> bool:
        return self._lost is not None or self.transport is None or self.transport.is_closing()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_greeting(self) -> None:
        async with asyncio.timeout(self.command_timeout):
            greeting = await self._greeting
        if greeting.kind == "BYE":
            raise ConnectionLost(f"upstream refused the connection: {greeting.text}")
        if greeting.kind != "OK" or greeting.tag != b"*":
            # PREAUTH would mean someone else's identity: a watcher must log in itself.
            raise UpstreamError(f"unexpected greeting: {greeting.text}")
        self.state = NONAUTH
        caps = parse_capabilities(greeting)
        if caps is not None:
            self.capabilities = set(caps)

    async def starttls(self, ctx: ssl.SSLContext, server_name: str) -> None:
        if self.capabilities and "STARTTLS" not in self.capabilities:
            raise UpstreamError("upstream does not offer STARTTLS (upstream.security: starttls)")
        await self.command(b"STARTTLS")
        if self._unsolicited or self._assembler.pending:
            # Anything after the tagged OK was sent in clear text before the handshake:
            # a man in the middle could have injected it (CVE-2011-0411 style).
            raise UpstreamError("upstream sent data after STARTTLS OK; refusing to continue")
        assert self.transport is not None
        host, port = (self.transport.get_extra_info("peername") or ("?", 0))[:2]
        key = (str(host), int(port), server_name)
        async with asyncio.timeout(self.command_timeout):
            self.transport = await start_tls(self.transport, self, ctx, server_name, key)
        self.capabilities = set()  # pre-TLS capabilities are not to be trusted

    # ------------------------------------------------------------------ commands

    def _write(self, data: bytes) -> None:
        if self._lost is not None:
            raise self._lost
        if self.transport is None or self.transport.is_closing():
            raise ConnectionLost("connection closed")
        self.transport.write(data)

    def _start(self, name: str) -> _Pending:
        if self._pending is not None:
            raise UpstreamError(f"{name} while {self._pending.name} is pending")
        if self._lost is not None:
            raise self._lost
        tag = self.new_tag().encode("ascii")
        self._pending = _Pending(tag, name, asyncio.get_running_loop().create_future())
        return self._pending

    def _literal_prefix(self, size: int) -> bytes | None:
        """``{n+}`` when the server takes non-synchronizing literals of this size, else None."""
        caps = self.capabilities
        if "LITERAL+" in caps or ("LITERAL-" in caps and size <= _LITERAL_MINUS_MAX):
            return b"{%d+}\r\n" % size
        return None

    async def _await_continuation(self) -> None:
        pending = self._pending
        assert pending is not None
        self._continuation = asyncio.get_running_loop().create_future()
        try:
            done, _ = await asyncio.wait((self._continuation, pending.future), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._continuation = None
        if pending.future in done:
            raise CommandFailed(pending.name, pending.future.result())
        for fut in done:
            fut.result()  # raises ConnectionLost

    async def command(
        self, *parts: CommandPart, response: bytes | None = None, timeout: float | None = None, check: bool = False
    ) -> CommandResult:
        """Run ``<tag> <parts...>``; CommandFailed on NO/BAD when ``check``.

        ``response``: a line sent once the server asks for it with a
        continuation request (AUTHENTICATE without SASL-IR).
        """
        first = parts[0]
        name = first.split(b" ", 1)[0].decode("ascii", "replace").upper() if isinstance(first, bytes) else "?"
        pending = self._start(name)
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.command_timeout):
                chunks: list[bytes] = [pending.tag, b" "]
                for part in parts:
                    if isinstance(part, Literal):
                        prefix = self._literal_prefix(len(part.data))
                        if prefix is not None:
                            chunks += [prefix, part.data]
                            continue
                        chunks.append(b"{%d}\r\n" % len(part.data))
                        self._write(b"".join(chunks))
                        chunks = []
                        await self._await_continuation()
                        chunks.append(part.data)
                    else:
                        chunks.append(part)
                if response is not None:
                    chunks.append(b"\r\n")
                    self._write(b"".join(chunks))
                    await self._await_continuation()
                    chunks = [response]
                chunks.append(b"\r\n")
                self._write(b"".join(chunks))
                status = await pending.future
        finally:
            if self._pending is pending:
                self._pending = None
        result = CommandResult(pending.untagged, status)
        if check and not result.ok:
            raise CommandFailed(name, status)
        return result

    # ------------------------------------------------------------------ login (see pushproxy.watch.connect)

    def logged_in(self, capabilities: Iterable[str] | None) -> None:
        """The login succeeded; ``capabilities`` if its answer listed them."""
        self.state = AUTH
        if capabilities is not None:
            self.capabilities = set(capabilities)

    async def refresh_capabilities(self) -> set[str]:
        result = await self.command(b"CAPABILITY", check=True)
        for resp in result.untagged:
            caps = parse_capabilities(resp)
            if caps is not None:
                self.capabilities = set(caps)
        return self.capabilities

    # ------------------------------------------------------------------ unsolicited responses and IDLE

    def take_unsolicited(self) -> list[Response]:
        """The unsolicited responses received since the last call (between commands)."""
        out = list(self._unsolicited)
        self._unsolicited.clear()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return out

    async def _next_unsolicited(self, timeout: float) -> bool:
        """Wait (bounded) until an unsolicited response is queued; False on timeout."""
        if self._unsolicited:
            return True
        if self._lost is not None:
            raise self._lost
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            return False
        finally:
            self._waiter = None
        return True

    async def idle(
        self, deadline: float, wake: asyncio.Event, interesting: Callable[[Response], bool]
    ) -> list[Response]:
        """IDLE until an interesting response, the deadline (monotonic) or ``wake``.

        Returns every unsolicited response seen, in order (those queued
        before, those that ended the IDLE and those read while ending it).
        """
        collected = self.take_unsolicited()
        if any(interesting(r) for r in collected) or wake.is_set():
            return collected
        pending = self._start("IDLE")
        try:
            async with asyncio.timeout(self.command_timeout):
                self._write(pending.tag + b" IDLE\r\n")
                await self._await_continuation()
            wake_task = asyncio.ensure_future(wake.wait())
            try:
                while not wake.is_set() and not pending.future.done():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    reader = asyncio.ensure_future(self._next_unsolicited(remaining))
                    try:
                        await asyncio.wait((reader, wake_task, pending.future), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        if not reader.done():
                            reader.cancel()
                    if reader.done() and not reader.cancelled():
                        reader.result()  # raises ConnectionLost
                    fresh = self.take_unsolicited()
                    collected += fresh
                    if any(interesting(r) for r in fresh):
                        break
            finally:
                if not wake_task.done():
                    wake_task.cancel()
            async with asyncio.timeout(self.command_timeout):
                if not pending.future.done():
                    self._write(b"DONE\r\n")
                await pending.future  # the server may also have ended the IDLE itself
        finally:
            if self._pending is pending:
                self._pending = None
        return collected + self.take_unsolicited()

    # ------------------------------------------------------------------ end

    async def logout(self, timeout: float = 5.0) -> None:
        """LOGOUT politely (bounded), then close."""
        try:
            if not self.closed:
                await self.command(b"LOGOUT", timeout=timeout)
        except (UpstreamError, TimeoutError, OSError):
            pass
        finally:
            if self.transport is not None:
                self.transport.close()
