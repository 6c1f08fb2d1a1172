"""One client connection and its upstream connection: the session state machine.

Bytes come in through :meth:`Session.client_data` and :meth:`Session.upstream_data`;
bytes go out through the :class:`SessionIO` the adapter gave us.  The session
never touches a socket, so the Twisted protocols in ``connection.py`` stay thin
and the tests can drive it directly.

The parts: :mod:`.handshake` (upstream greeting, STARTTLS, capability
rewriting), :mod:`.responses` (upstream responses, the outcome of a login),
:mod:`.routing` (client commands, a table from command name to
handler), :mod:`.ledger` (commands in flight and the login rules: one login at
a time, identity from the matched command), :mod:`.capture` (credentials for
the watchers), :mod:`.local` (ordered local answers), :mod:`.own` (the proxy's
own upstream commands).  This module holds the relay itself.

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
from collections.abc import Awaitable, Callable
from operator import attrgetter, is_

from pushproxy.extensions.base import CredentialSink
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.imap import response as r
from pushproxy.imap.capabilities import CapabilityPolicy, ConnectionFacts
from pushproxy.imap.framing import Framer, FramingError, Line
from pushproxy.proxy.handshake import UpstreamHandshake
from pushproxy.proxy.ledger import CommandLedger
from pushproxy.proxy.local import LocalAnswers
from pushproxy.proxy.own import OwnCommands, SessionContextImpl
from pushproxy.proxy.penalty import AuthPenalty
from pushproxy.proxy.responses import UpstreamResponses
from pushproxy.proxy.routing import ClientCommands, routes_for
from pushproxy.proxy.state import CommandMode, SessionIO, SessionSettings

__all__ = ["Session", "SessionIO", "SessionSettings"]

log = logging.getLogger("pushproxy.session")

_frame_data = attrgetter("data")  # of a frame from the framer

_UPSTREAM_MAX_LINE = 1 << 20  # longer upstream lines are streamed, not buffered
_MAX_HELD_UNTAGGED = 64  # untagged lines kept back during a login exchange


class Session(UpstreamResponses, ClientCommands, LocalAnswers, OwnCommands):
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
        on_intercepted: Callable[[str], None] | None = None,
        client_ip: str = "",
        penalty: AuthPenalty | None = None,
        on_auth_failed: Callable[[], None] | None = None,
        on_upstream_capabilities: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self.io = io
        self.session_id = session_id
        self.peer = peer
        self.client_ip = client_ip
        self.settings = settings
        self.extensions = extensions
        # Command names as they come off the wire (upper-cased bytes): no str per command.
        self._extension_names = extensions.command_names
        self._routes = routes_for(extensions.observed_commands)
        self.credentials = credentials
        self._on_intercepted = on_intercepted
        self._penalty = penalty
        self._on_auth_failed = on_auth_failed
        self._on_upstream_capabilities = on_upstream_capabilities
        self.facts = ConnectionFacts(
            client_tls=client_tls,
            starttls_offered=settings.starttls_offered,
            plaintext_auth_allowed=settings.plaintext_auth_allowed,
        )
        self.policy = CapabilityPolicy(
            add_pre_auth=extensions.pre_auth_capabilities,
            add_post_auth=extensions.post_auth_capabilities,
            restrict_sasl=bool(extensions),
        )
        self.client_framer = Framer(server=False, max_line=settings.max_line)
        self.upstream_framer = Framer(server=True, max_line=_UPSTREAM_MAX_LINE)
        self.handshake = UpstreamHandshake(settings.upstream_security)
        self.ledger = CommandLedger()

        self.started = time.monotonic()
        self.last_client_activity = self.started
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0
        self.closed = False
        self.login = None
        self.account = None
        self.upstream_capabilities = frozenset()

        self._held = True  # client events wait until the upstream is ready
        self._held_by_login = False
        self._queue = deque()
        self._continuation_credits = 0
        self._awaiting_literal = None
        self._idle = None
        self._cmd_mode = CommandMode.NONE
        self._cmd_tag = b""
        self._cmd_name = b""
        self._cmd_pending = None
        self._cmd_buf = []
        self._cmd_size = 0
        self._id_sent = False
        self._own = None
        self._local_task = None
        self._drain_waiter = None
        self._out_client: list[bytes] = []
        self._greeted = False  # the proxy greeted the client itself (upstream opened lazily)
        self._upstream_requested = True
        self._delayed_out: list[bytes] | None = None  # output held back by the auth penalty

    # ------------------------------------------------------------------ state
    @property
    def upstream_ready(self) -> bool:
        return self.handshake.ready

    @property
    def in_idle(self) -> bool:
        return self._idle is not None

    # --------------------------------------------------------------- upstream
    def upstream_connected(self) -> None:
        if self.settings.upstream_security == "tls":
            self.io.start_upstream_tls()

    def upstream_data(self, data: bytes) -> None:
        self.bytes_from_upstream += len(data)
        try:
            events = self.upstream_framer.receive_data(data)
        except Exception:
            log.warning("session %s: unframeable data from upstream, closing", self.session_id)
            self._fatal("Proxy lost track of the upstream stream", "UNAVAILABLE")
            return
        out = self._out_client
        handshake = self.handshake
        for ev in events:
            if self._own is not None:
                self._own_event(ev)
            elif type(ev) is Line and not ev.continued:
                if handshake.ready:
                    self._upstream_line(ev)
                else:
                    self._handshake_line(ev.data)
            else:  # literal chunks, continued lines, parts of overlong lines
                if self.ledger.special:
                    login = self.ledger.login
                    if login is not None and login.held:
                        self._release_login_untagged(login)
                out.append(ev.data)  # type: ignore[union-attr]
        if (
            self.upstream_framer.exact
            and len(out) == len(events) > 0
            and self._delayed_out is None
            and all(map(is_, out, map(_frame_data, events)))
        ):
            # Every frame of this chunk goes on unchanged and nothing was held
            # back: forward the received object itself (zero copy, no join).
            out.clear()
            self.io.to_client(data)
        else:
            self._flush_client()
        if not self._held and self._queue:
            self._pump()

    def upstream_closed(self) -> None:
        if self.closed:
            return
        if not self.handshake.ready:
            self._fatal("Upstream server unavailable", "UNAVAILABLE")
            return
        self._fail_own("upstream connection closed")
        self.close()

    def upstream_failed(self, reason: str) -> None:
        """The upstream connection could not be made (or its TLS failed)."""
        log.warning("session %s: upstream unavailable: %s", self.session_id, reason)
        self._fatal("Upstream server unavailable, try again later", "UNAVAILABLE")

    # ----------------------------------------------------------------- client
    def client_data(self, data: bytes) -> None:
        self.bytes_from_client += len(data)
        self.last_client_activity = time.monotonic()
        framer = self.client_framer
        try:
            events = framer.receive_data(data)
        except FramingError as exc:
            log.info("session %s: unframeable client data (%s), closing", self.session_id, exc)
            self._fatal(f"Protocol error: {exc}", "TOOBIG")
            return
        if self._held or self._queue:
            if not self._upstream_requested:
                self._upstream_requested = True
                self.io.open_upstream()
            self._queue.extend(events)
            if self._held:
                self.io.pause_client()
            self._pump()
            return
        for i, ev in enumerate(events):
            self._client_event(ev)
            if self.client_framer is not framer:
                break  # STARTTLS: whatever followed it in clear text is dropped
            if self._held:
                self._queue.extend(events[i + 1 :])
                if self._queue:
                    self.io.pause_client()
                break
        self._flush_client()

    def _pump(self) -> None:
        framer = self.client_framer
        while self._queue and not self._held and not self.closed:
            self._client_event(self._queue.popleft())
            if self.client_framer is not framer:
                self._queue.clear()  # STARTTLS: pipelined clear text is dropped
                framer = self.client_framer
        if not self._held and not self._queue:
            self.io.resume_client()
        self._flush_client()

    # ------------------------------------------------------------- plumbing
    def _flush_client(self) -> None:
        if self._out_client:
            out = self._out_client
            if self._delayed_out is not None:
                self._delayed_out.extend(out)
            else:
                self.io.to_client(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_task_error)

    def _fatal(self, text: str, code: str | None = None) -> None:
        if self.closed:
            return
        if self._delayed_out is not None:
            self._out_client[:0] = self._delayed_out
            self._delayed_out = None
        self._flush_client()
        self.io.to_client(r.bye(text, code))
        self.close()

    def timeout(self, text: str) -> None:
        self._fatal(text)

    def internal_error(self, side: str, exc: Exception) -> None:
        """An exception escaped the handling of ``side``'s bytes: end the session cleanly."""
        log.error(
            "session %s: internal error on %s input (%s: %s), closing", self.session_id, side, type(exc).__name__, exc
        )
        self._fatal("Internal proxy error", "UNAVAILABLE")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._flush_client()
        if self._local_task is not None and not self._local_task.done():
            self._local_task.cancel()
        self._fail_own("session closed")
        self.io.close()

    async def finish(self) -> None:
        """After both connections are gone: tell the extensions and the credential sink."""
        await self.extensions.session_closed(SessionContextImpl(self))
        try:
            await self.credentials.session_closed(self.session_id)
        except Exception:
            log.exception("session %s: credential sink failed", self.session_id)


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
