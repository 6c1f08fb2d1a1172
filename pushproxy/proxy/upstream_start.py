"""The start of a session's upstream connection, carried out: the proxy's own greeting, the handshake's steps.

A session either greets the client from the proxy (the capabilities of an
earlier connection are known) and opens upstream only at the client's first
bytes, or waits for upstream's greeting.  :class:`UpstreamStart` keeps which
(``greeted``, ``requested``) and turns each :class:`~pushproxy.proxy.handshake.Step`
of the sans-IO :class:`~pushproxy.proxy.handshake.UpstreamHandshake` into I/O:
STARTTLS upstream, the greeting passed to the client (rewritten), a BYE
passed on, or the session ended with a reason.  When the handshake is done,
the session resumes reading the client's commands (:class:`StartHost`).
"""

from __future__ import annotations

from typing import Protocol

from pushproxy.imap.capabilities import ConnectionFacts
from pushproxy.proxy.handshake import Action, UpstreamHandshake
from pushproxy.proxy.ledger import CommandLedger
from pushproxy.proxy.responses import ResponseRouter
from pushproxy.proxy.session_io import SessionIO


class StartHost(Protocol):
    """What the upstream start asks of its session."""

    def resume(self) -> None:
        """Upstream is ready: the client's commands may go."""

    def fatal(self, text: str, code: str | None = None) -> None: ...

    def close(self) -> None: ...


class UpstreamStart:
    """Greeting and handshake of one session's upstream connection."""

    def __init__(
        self,
        host: StartHost,
        io: SessionIO,
        facts: ConnectionFacts,
        responses: ResponseRouter,
        handshake: UpstreamHandshake,
        *,
        upstream_tls: bool,
    ) -> None:
        self._host = host
        self._io = io
        self._facts = facts
        self._responses = responses
        self._handshake = handshake  # the session's: it asks whether upstream is ready
        self._upstream_tls = upstream_tls
        self.greeted = False  # the proxy greeted the client itself (upstream opened lazily)
        self.requested = True  # upstream was asked for (at once, unless the proxy greets)

    def greet(self, capabilities: list[bytes] | None) -> None:
        """Greet the client from the proxy; upstream is opened at the client's first bytes (:meth:`request`)."""
        self.greeted = True
        self.requested = False
        self._io.to_client(self._responses.proxy_greeting(capabilities))

    def request(self) -> None:
        """The client sent its first bytes: open upstream if that was left for now."""
        if not self.requested:
            self.requested = True
            self._io.open_upstream()

    def connected(self) -> None:
        if self._upstream_tls:
            self._io.start_upstream_tls()

    def line(self, line: bytes) -> None:
        """A line of upstream's greeting phase."""
        step = self._handshake.line(line)
        action = step.action
        if action is Action.SEND:
            self._io.to_upstream(step.data)
        elif action is Action.START_TLS_AND_SEND:
            self._io.start_upstream_tls()
            self._io.to_upstream(step.data)
        elif action is Action.FATAL:
            self._host.fatal(step.text, "UNAVAILABLE")
        elif action is Action.BYE:
            self._io.to_client(step.data)
            self._host.close()
        elif action is Action.READY:
            if step.preauth:
                CommandLedger.preauthenticated(self._facts)
            greeting = self._responses.greeting(step.data, step.status)
            if not self.greeted:
                self._io.to_client(greeting)
            self._host.resume()
