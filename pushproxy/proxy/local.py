"""Ordered delivery of the answers the proxy gives itself.

Extension commands, STARTTLS and refusals are answered only once every earlier
command has its tagged response from upstream, and the client's later commands
wait behind them (``_held``), so the client sees answers in command order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pushproxy.extensions.base import Reply
from pushproxy.imap import response as r
from pushproxy.imap.framing import Framer
from pushproxy.imap.parse import ParseError, parse_command
from pushproxy.proxy.own import SessionContextImpl
from pushproxy.proxy.state import SessionState
from pushproxy.store.errors import StoreUnavailable

log = logging.getLogger("pushproxy.session")


class LocalAnswers(SessionState):
    def _local_reply(self, tag: bytes, reply: Reply) -> None:
        async def answer() -> Reply:
            return reply

        self._run_local(tag, answer, name=None)

    def _starttls(self, tag: bytes) -> None:
        if self.facts.client_tls:
            self._local_reply(tag, Reply("BAD", "TLS is already active"))
            return
        if not self.settings.starttls_offered or self.authenticated:
            self._local_reply(tag, Reply("BAD", "STARTTLS is not available"))
            return

        def start() -> None:
            # Anything the client pipelined after STARTTLS was sent in clear
            # text and must not be trusted (CVE-2011-0411 style injection).
            self._queue.clear()
            self.client_framer = Framer(server=False, max_line=self.settings.max_line)
            self.io.to_client(r.tagged(tag, "OK", "Begin TLS negotiation now"))
            self.io.start_client_tls()
            self.facts.client_tls = True
            self._held = False
            self._pump()

        self._held = True
        self._after_drain(start)

    def _intercept(self, tag: bytes, data: bytes) -> None:
        try:
            cmd = parse_command(data)
        except ParseError as exc:
            self._local_reply(tag, Reply("BAD", f"Invalid arguments: {exc}"))
            return
        if self._on_intercepted is not None:
            self._on_intercepted(cmd.name)
        ctx = SessionContextImpl(self)  # type: ignore[arg-type]

        async def run() -> Reply:
            return await self.extensions.answer(cmd, ctx)  # NO [UNAVAILABLE] if the handler raised

        self._run_local(tag, run, name=cmd.name)

    def _run_local(self, tag: bytes, fn: Callable[[], Awaitable[Reply]], name: str | None) -> None:
        """Answer a command in the proxy, in tag order."""
        self._held = True

        def go() -> None:
            self._local_task = asyncio.ensure_future(self._local(tag, fn, name))

        self._after_drain(go)

    def _after_drain(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every forwarded command has its tagged response."""
        if not self.ledger:
            fn()
        else:
            self._drain_waiter = fn  # called when the last tagged response arrives

    def _drained(self) -> None:
        if not self.ledger and self._drain_waiter is not None:
            waiter, self._drain_waiter = self._drain_waiter, None
            self._flush_client()
            waiter()

    async def _local(self, tag: bytes, fn: Callable[[], Awaitable[Reply]], name: str | None) -> None:
        try:
            reply = await fn()
        except StoreUnavailable as exc:
            # The store logged the episode once (pushproxy/store/errors.py); the client learns why.
            log.debug("session %s: %s answered NO, %s (%s)", self.session_id, name, exc.reason, exc)
            reply = Reply("NO", exc.reason, "UNAVAILABLE")
        except Exception:
            log.exception("session %s: handler for %s failed", self.session_id, name)
            # Transient faults must not become NO (iOS then waits a day): say BAD only
            # for what the handler itself judged malformed; this is an internal error.
            reply = Reply("NO", "Internal error in the proxy, please retry", "UNAVAILABLE")
        if self.closed:
            return
        self._flush_client()
        self.io.to_client(r.tagged(tag, reply.status, reply.text, reply.code))
        self._local_task = None
        self._held = False
        self._pump()
