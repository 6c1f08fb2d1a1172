"""Ordered delivery of the answers the proxy gives itself.

Extension commands, STARTTLS and refusals are answered only once every earlier
command has its tagged response from upstream, and the client's later commands
wait behind them (the session's phase is AWAITING_DRAIN, then ANSWERING), so
the client sees answers in command order.  :class:`LocalAnswers` keeps what
waits for the drain (one step at most: the client is held meanwhile) and the
task that computes an answer; a handler's exception becomes a retryable ``NO``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from pushproxy.extensions.base import Reply, SessionContext
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.imap import response as r
from pushproxy.imap.capabilities import ConnectionFacts
from pushproxy.imap.parse import ParseError, parse_command
from pushproxy.proxy.ledger import CommandLedger
from pushproxy.proxy.phase import Phase
from pushproxy.proxy.session_io import SessionEvents, SessionIO
from pushproxy.store.errors import StoreUnavailable

log = logging.getLogger("pushproxy.session")

Answer = Callable[[], Awaitable[Reply]]


class AnswerHost(Protocol):
    """What the local answers ask of their session."""

    @property
    def closed(self) -> bool: ...

    def hold(self, phase: Phase) -> None:
        """The client's commands wait (in ``phase``)."""

    def flush_client(self) -> None:
        """Write what the client is owed so far (earlier commands' responses)."""

    def resume(self) -> None:
        """The client's commands may go again."""

    def restart_client_stream(self) -> None:
        """STARTTLS: what the client pipelined in clear text is dropped, its framer starts afresh."""


class LocalAnswers:
    def __init__(
        self,
        host: AnswerHost,
        io: SessionIO,
        facts: ConnectionFacts,
        ledger: CommandLedger,
        extensions: ExtensionManager,
        context: SessionContext,
        *,
        session_id: str,
        events: SessionEvents,
    ) -> None:
        self._host = host
        self._io = io
        self._facts = facts
        self._ledger = ledger
        self._extensions = extensions
        self._context = context
        self._session_id = session_id
        self._events = events
        self._waiter: Callable[[], None] | None = None  # runs when nothing is in flight upstream
        self._task: asyncio.Task[None] | None = None

    def reply(self, tag: bytes, reply: Reply) -> None:
        """Answer ``tag`` with ``reply``, in order."""

        async def answer() -> Reply:
            return reply

        self._answer(tag, answer, name=None)

    def extension_command(self, tag: bytes, data: bytes) -> None:
        """An intercepted command (its whole bytes, literals inline): its extension answers, in order."""
        try:
            cmd = parse_command(data)
        except ParseError as exc:
            self.reply(tag, Reply("BAD", f"Invalid arguments: {exc}"))
            return
        self._events.intercepted(cmd.name)
        extensions, context = self._extensions, self._context

        async def run() -> Reply:
            return await extensions.answer(cmd, context)  # NO [UNAVAILABLE] if the handler raised

        self._answer(tag, run, name=cmd.name)

    def starttls(self, tag: bytes, offered: bool) -> None:
        """STARTTLS from the client (``offered``: the listener has a certificate and no TLS yet)."""
        if self._facts.client_tls:
            self.reply(tag, Reply("BAD", "TLS is already active"))
            return
        if not offered or self._facts.authenticated:
            self.reply(tag, Reply("BAD", "STARTTLS is not available"))
            return

        def start() -> None:
            # Anything the client pipelined after STARTTLS was sent in clear
            # text and must not be trusted (CVE-2011-0411 style injection).
            self._host.restart_client_stream()
            self._io.to_client(r.tagged(tag, "OK", "Begin TLS negotiation now"))
            self._io.start_client_tls()
            self._facts.client_tls = True
            self._host.resume()

        self._host.hold(Phase.AWAITING_DRAIN)
        self.after_drain(start)

    def after_drain(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every forwarded command has its tagged response."""
        if not self._ledger:
            fn()
        else:
            self._waiter = fn  # called when the last tagged response arrives

    def drained(self) -> None:
        """A tagged response arrived: the waiting step goes when it was the last in flight."""
        if not self._ledger and self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            self._host.flush_client()
            waiter()

    def cancel(self) -> None:
        """The session is closed: nothing more is answered."""
        self._waiter = None
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _answer(self, tag: bytes, answer: Answer, name: str | None) -> None:
        self._host.hold(Phase.AWAITING_DRAIN)

        def go() -> None:
            self._host.hold(Phase.ANSWERING)
            self._task = asyncio.ensure_future(self._run(tag, answer, name))

        self.after_drain(go)

    async def _run(self, tag: bytes, answer: Answer, name: str | None) -> None:
        try:
            reply = await answer()
        except StoreUnavailable as exc:
            # The store logged the episode once (pushproxy/store/errors.py); the client learns why.
            log.debug("session %s: %s answered NO, %s (%s)", self._session_id, name, exc.reason, exc)
            reply = Reply("NO", exc.reason, "UNAVAILABLE")
        except Exception:
            log.exception("session %s: handler for %s failed", self._session_id, name)
            # Transient faults must not become NO (iOS then waits a day): say BAD only
            # for what the handler itself judged malformed; this is an internal error.
            reply = Reply("NO", "Internal error in the proxy, please retry", "UNAVAILABLE")
        self._task = None
        if self._host.closed:
            return
        self._host.flush_client()
        self._io.to_client(r.tagged(tag, reply.status, reply.text, reply.code))
        self._host.resume()
