"""One client connection and its upstream connection: the relay and its state machine.

Bytes come in through :meth:`Session.client_data` and :meth:`Session.upstream_data`;
bytes go out through the :class:`SessionIO` the adapter gave us.  The session
never touches a socket, so the Twisted protocols in ``connection.py`` stay thin
and the tests can drive it directly.

The session owns the relay (both framers' loops, the zero-copy forwarding) and
its :class:`~pushproxy.proxy.phase.Phase` -- whether the client's commands are
read now or wait in the queue, and why; only this module changes it (the parts
ask, through the small Protocol each declares).  Each part keeps its own state
behind a narrow interface (h11's ``Connection`` and aiosmtpd's
one-method-per-command ``SMTP`` are the models):

- :class:`~pushproxy.proxy.upstream_start.UpstreamStart`: the proxy's greeting, the upstream handshake
  (:class:`~pushproxy.proxy.handshake.UpstreamHandshake`'s sans-IO steps) carried out;
- :class:`~pushproxy.proxy.routing.CommandRouter`: reads client commands, one route per command name;
- :class:`~pushproxy.proxy.responses.ResponseRouter`: each upstream response to its command, login outcomes;
- :class:`~pushproxy.proxy.ledger.CommandLedger`: commands in flight, the login rules;
- :class:`~pushproxy.proxy.capture.CredentialCapture`: a login's credentials, the session's identity;
- :class:`~pushproxy.proxy.local.LocalAnswers`: what the proxy answers itself (in command order);
- :class:`~pushproxy.proxy.output.ClientOutput`: what the client is owed (held back by the auth penalty);
- :class:`~pushproxy.proxy.own.OwnCommands`: extensions' commands on this upstream connection;
- :class:`~pushproxy.background.TaskSet`: what it spawned (kept until done).

Invariants:
- every byte the proxy does not deliberately change is forwarded unchanged and
  in order (literal bodies as slices, never scanned);
- commands answered by the proxy are answered only when every earlier command
  has its tagged response, and later commands wait behind them;
- malformed input gets ``BAD`` (or ``BYE`` when the stream cannot be framed)
  and the framer stays in sync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from operator import attrgetter, is_
from typing import Any

from pushproxy.background import TaskSet
from pushproxy.extensions.base import CredentialSink
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.imap import response as r
from pushproxy.imap.capabilities import ConnectionFacts
from pushproxy.imap.framing import Framer, FramingError, Line
from pushproxy.imap.parse import StatusResponse
from pushproxy.proxy.capture import CredentialCapture
from pushproxy.proxy.context import SessionContextImpl
from pushproxy.proxy.handshake import UpstreamHandshake
from pushproxy.proxy.ledger import CommandLedger
from pushproxy.proxy.local import LocalAnswers
from pushproxy.proxy.output import ClientOutput
from pushproxy.proxy.own import OwnCommands
from pushproxy.proxy.penalty import AuthPenalty
from pushproxy.proxy.phase import Phase
from pushproxy.proxy.responses import ResponseRouter
from pushproxy.proxy.routing import CommandRouter
from pushproxy.proxy.session_io import SessionEvents, SessionIO, SessionSettings
from pushproxy.proxy.upstream_start import UpstreamStart

__all__ = ["Phase", "Session", "SessionIO", "SessionSettings"]

log = logging.getLogger("pushproxy.session")

_frame_data = attrgetter("data")  # of a frame from the framer
_UPSTREAM_MAX_LINE = 1 << 20  # longer upstream lines are streamed, not buffered

CONNECTING, RELAYING, AWAITING_LOGIN = Phase.CONNECTING, Phase.RELAYING, Phase.AWAITING_LOGIN
AWAITING_DRAIN, PENALTY, CLOSED = Phase.AWAITING_DRAIN, Phase.PENALTY, Phase.CLOSED


class Session:
    """The state machine of one proxied connection."""

    def __init__(
        self,
        io: SessionIO,
        *,
        session_id: str,
        peer: str,
        client_tls: bool,
        settings: SessionSettings,
        extensions: ExtensionManager,
        credentials: CredentialSink,
        events: SessionEvents | None = None,
        client_ip: str = "",
        penalty: AuthPenalty | None = None,
    ) -> None:
        self.io = io
        self.session_id = session_id
        self.peer = peer
        self.client_ip = client_ip
        self.settings = settings
        self._extensions = extensions
        self._credentials = credentials
        events = events if events is not None else SessionEvents()
        self.facts = ConnectionFacts(
            client_tls=client_tls,
            starttls_offered=settings.starttls_offered,
            plaintext_auth_allowed=settings.plaintext_auth_allowed,
        )
        self.context = SessionContextImpl(self)
        self.output = ClientOutput(io)  # what the client is owed, written at the end of each read

        # The collaborators.
        self.ledger = CommandLedger()
        self.capture = CredentialCapture()
        self.local = LocalAnswers(
            self, io, self.facts, self.ledger, extensions, self.context,
            session_id=session_id, events=events,
        )  # fmt: skip
        self.router = CommandRouter(
            self, io, settings, self.facts, self.ledger, self.capture, self.local,
            intercepted=extensions.command_names, observed=extensions.observed_commands,
            claimed=extensions.claimed_commands,
            claims=lambda name, line: extensions.claims(name, line, self.context),
        )  # fmt: skip
        self.responses = ResponseRouter(
            self, self.output.lines, self.ledger, self.router, self.local, self.capture, self.facts,
            session_id=session_id, extensions=extensions, context=self.context, credentials=credentials,
            penalty=penalty, client_ip=client_ip, events=events,
        )  # fmt: skip
        self.own = OwnCommands(self, io, self.ledger)
        self.handshake = UpstreamHandshake(settings.upstream_security)
        self.upstream_start = UpstreamStart(
            self, io, self.facts, self.responses, self.handshake, upstream_tls=settings.upstream_security == "tls"
        )
        self.upstream_framer = Framer(server=True, max_line=_UPSTREAM_MAX_LINE)

        self.started = time.monotonic()
        self.last_client_activity = self.started
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0
        self.phase = CONNECTING
        self._queue: deque[object] = deque()  # client events waiting for the phase to be RELAYING
        self._background = TaskSet(log)  # spawned, kept until done

    # ------------------------------------------------------------------ state
    @property
    def closed(self) -> bool:
        return self.phase is CLOSED

    @property
    def upstream_ready(self) -> bool:
        return self.handshake.ready

    @property
    def in_idle(self) -> bool:
        return self.router.in_idle

    @property
    def authenticated(self) -> bool:
        return self.facts.authenticated

    @property
    def login(self) -> str | None:
        return self.capture.login

    @property
    def account(self) -> str | None:
        return self.capture.account

    @property
    def upstream_capabilities(self) -> frozenset[str]:
        return self.responses.upstream_capabilities

    # --------------------------------------------------------------- upstream
    def greet(self, capabilities: list[bytes] | None) -> None:
        """Greet the client from the proxy; upstream is opened at the client's first bytes."""
        self.upstream_start.greet(capabilities)

    def upstream_connected(self) -> None:
        self.upstream_start.connected()

    def upstream_data(self, data: bytes) -> None:
        self.bytes_from_upstream += len(data)
        try:
            events = self.upstream_framer.receive_data(data)
        except Exception:
            log.warning("session %s: unframeable data from upstream, closing", self.session_id)
            self.fatal("Proxy lost track of the upstream stream", "UNAVAILABLE")
            return
        output = self.output
        out = output.lines
        handshake, ledger, own, response = self.handshake, self.ledger, self.own, self.responses.line
        for ev in events:
            if own.current is not None:
                own.event(ev)
            elif type(ev) is Line and not ev.continued:
                if handshake.ready:
                    response(ev)
                else:
                    self.upstream_start.line(ev.data)
            else:  # literal chunks, continued lines, parts of overlong lines
                if ledger.special and ledger.held:
                    self.responses.release_held()
                out.append(ev.data)  # type: ignore[union-attr]
        if (
            self.upstream_framer.exact
            and len(out) == len(events) > 0
            and output.delayed is None
            and all(map(is_, out, map(_frame_data, events)))
        ):
            # Every frame of this chunk goes on unchanged and nothing was held
            # back: forward the received object itself (zero copy, no join).
            out.clear()
            self.io.to_client(data)
        else:
            output.flush()
        if self.phase is RELAYING and self._queue:
            self._pump()

    def upstream_closed(self) -> None:
        if self.closed:
            return
        if not self.handshake.ready:
            self.fatal("Upstream server unavailable", "UNAVAILABLE")
            return
        self.own.fail("upstream connection closed")
        self.close()

    def upstream_failed(self, reason: str) -> None:
        """The upstream connection could not be made (or its TLS failed)."""
        log.warning("session %s: upstream unavailable: %s", self.session_id, reason)
        self.fatal("Upstream server unavailable, try again later", "UNAVAILABLE")

    def login_wait_over(self) -> None:
        if self.phase is AWAITING_LOGIN:
            self.phase = RELAYING

    def penalise(self, delay: float) -> None:
        self.output.hold_back()
        self.hold(PENALTY)
        asyncio.get_running_loop().call_later(delay, self._penalty_served)

    def _penalty_served(self) -> None:
        if self.closed:
            self.output.drop_held()
            return
        self.output.release()
        self.resume()

    # ----------------------------------------------------------------- client
    def client_data(self, data: bytes) -> None:
        self.bytes_from_client += len(data)
        self.last_client_activity = time.monotonic()
        router = self.router
        framer = router.framer
        try:
            events = framer.receive_data(data)
        except FramingError as exc:
            log.info("session %s: unframeable client data (%s), closing", self.session_id, exc)
            self.fatal(f"Protocol error: {exc}", "TOOBIG")
            return
        if self.phase is not RELAYING or self._queue:
            self.upstream_start.request()
            self._queue.extend(events)
            if self.phase is not RELAYING:
                self.io.pause_client()
            self._pump()
            return
        event = router.event
        for i, ev in enumerate(events):
            event(ev)
            if router.framer is not framer:
                break  # STARTTLS: whatever followed it in clear text is dropped
            if self.phase is not RELAYING:
                self._queue.extend(events[i + 1 :])
                if self._queue:
                    self.io.pause_client()
                break
        self.flush_client()

    def _pump(self) -> None:
        router, queue = self.router, self._queue
        framer = router.framer
        while queue and self.phase is RELAYING:
            router.event(queue.popleft())
            if router.framer is not framer:
                queue.clear()  # STARTTLS: pipelined clear text is dropped
                framer = router.framer
        if self.phase is RELAYING and not queue:
            self.io.resume_client()
        self.flush_client()

    # ---------------------------------------------- what the router asks of us
    def wait_for_login(self, ev: Line) -> None:
        self._queue.appendleft(ev)
        self.phase = AWAITING_LOGIN

    def wait_for_drain(self, ev: Line) -> None:
        self._queue.appendleft(ev)
        self.phase = AWAITING_DRAIN
        self.local.after_drain(self.resume)

    # ------------------------------------------ what the local answers ask of us
    def resume(self) -> None:
        """The client's commands may go again."""
        if self.phase is CLOSED:
            return
        self.phase = RELAYING
        self._pump()

    def hold(self, phase: Phase) -> None:
        if self.phase is not CLOSED:
            self.phase = phase

    def restart_client_stream(self) -> None:
        self._queue.clear()
        self.router.restart_framer()

    # --------------------------------------------- what extensions ask of us
    def reply_untagged(self, payload: bytes) -> None:
        self.io.to_client(r.untagged(payload))

    async def upstream_command(self, command: bytes, timeout: float) -> tuple[list[bytes], StatusResponse]:
        return await self.own.run(command, timeout)

    # ------------------------------------------------------------- plumbing
    def flush_client(self) -> None:
        self.output.flush()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._background.spawn(coro)  # kept: the loop keeps only a weak reference to a task

    def fatal(self, text: str, code: str | None = None) -> None:
        if self.closed:
            return
        self.output.unhold()
        self.output.flush()
        self.io.to_client(r.bye(text, code))
        self.close()

    def timeout(self, text: str) -> None:
        self.fatal(text)

    def internal_error(self, side: str, exc: Exception) -> None:
        """An exception escaped the handling of ``side``'s bytes: end the session cleanly."""
        log.error(
            "session %s: internal error on %s input (%s: %s), closing", self.session_id, side, type(exc).__name__, exc
        )
        self.fatal("Internal proxy error", "UNAVAILABLE")

    def close(self) -> None:
        if self.closed:
            return
        self.phase = CLOSED
        self.flush_client()
        self.local.cancel()
        self.own.fail("session closed")
        self.io.close()

    def client_lost(self) -> None:
        """The client's connection is gone (the adapter closes upstream itself)."""
        self.phase = CLOSED

    async def finish(self) -> None:
        """After both connections are gone: tell the extensions and the credential sink."""
        await self._extensions.session_closed(self.context)
        try:
            await self._credentials.session_closed(self.session_id)
        except Exception:
            log.exception("session %s: credential sink failed", self.session_id)
