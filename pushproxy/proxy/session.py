"""One client connection and its upstream connection: the session state machine.

Bytes come in through :meth:`Session.client_data` and :meth:`Session.upstream_data`;
bytes go out through the :class:`SessionIO` the adapter gave us.  The session
never touches a socket, so the Twisted protocols in ``server.py`` stay thin and
the tests can drive it directly.

Invariants:
- every byte the proxy does not deliberately change is forwarded unchanged and
  in order (literal bodies as slices, never scanned);
- commands answered by the proxy (extensions, STARTTLS, refusals) are answered
  only when every earlier command has its tagged response, and the client's
  later commands wait behind them, so the stream stays in tag order;
- a malformed or overlong command gets ``BAD`` and the framer stays in sync.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from pushproxy.accounts import normalise_account
from pushproxy.extensions.base import (
    CredentialSink,
    ExtensionRegistry,
    Reply,
    UpstreamCommandError,
)
from pushproxy.imap import response as r
from pushproxy.imap.capabilities import (
    CapabilityPolicy,
    ConnectionFacts,
    is_capability_data,
    rewrite_atoms,
    rewrite_capability_code,
    rewrite_capability_data,
)
from pushproxy.imap.framing import Framer, FramingError, Line, LineTooLong, LiteralChunk
from pushproxy.imap.parse import (
    ParseError,
    StatusResponse,
    as_text,
    is_valid_tag,
    parse_command,
    parse_status_response,
    split_tag_command,
)
from pushproxy.proxy.client_id import ClientAddress, id_command, merged_id_command
from pushproxy.proxy.penalty import AuthPenalty

log = logging.getLogger("pushproxy.session")

_MAX_CAPTURE = 16384  # LOGIN / AUTHENTICATE bytes kept for credential capture
_MAX_INTERCEPTED = 65536  # an intercepted command, literals included
_UPSTREAM_MAX_LINE = 1 << 20  # longer upstream lines are streamed, not buffered
_MAX_HELD_UNTAGGED = 64  # untagged lines kept back during a login exchange


class SessionIO(Protocol):
    def to_client(self, data: bytes) -> None: ...
    def to_upstream(self, data: bytes) -> None: ...
    def start_client_tls(self) -> None: ...
    def start_upstream_tls(self) -> None: ...
    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...
    def close(self) -> None: ...
    def open_upstream(self) -> None: ...


@dataclass(slots=True)
class SessionSettings:
    upstream_security: str = "none"  # none | starttls | tls
    max_line: int = 65536
    max_preauth_literal: int = 8192
    plaintext_auth_allowed: bool = True  # on a connection without TLS
    starttls_offered: bool = False
    # upstream.forward_client_ip: id -- the client's address goes upstream in an ID command.
    client_address: ClientAddress | None = None


class _Pending:
    """A command forwarded upstream and awaiting its tagged response.

    ``auth`` marks a LOGIN / AUTHENTICATE: it is only ever forwarded when no other
    command is in flight, so its tagged response is the next tagged response.
    ``own`` marks a command the proxy itself sent (its responses are swallowed).
    """

    __slots__ = ("auth", "capture", "held", "own", "sasl_waiting", "tag")

    def __init__(self, tag: bytes, *, auth: bool = False, own: bool = False) -> None:
        self.tag = tag
        self.auth = auth
        self.own = own
        self.capture: tuple[str, bytes] | None = None  # ("login" | "sasl", bytes)
        self.sasl_waiting = False  # AUTHENTICATE PLAIN without initial response
        self.held: list[bytes] = []  # untagged responses of an auth exchange, rewritten at its end


class _OwnCommand:
    __slots__ = ("current", "future", "tag", "untagged")

    def __init__(self, tag: bytes, future: asyncio.Future[tuple[list[bytes], StatusResponse]]) -> None:
        self.tag = tag
        self.future = future
        self.untagged: list[bytes] = []
        self.current: list[bytes] | None = None  # an untagged response being assembled


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
        extensions: ExtensionRegistry,
        credentials: CredentialSink,
        on_intercepted: Callable[[str], None] | None = None,
        client_ip: str = "",
        penalty: AuthPenalty | None = None,
        on_auth_failed: Callable[[], None] | None = None,
        on_upstream_capabilities: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self.io = io
        self.client_ip = client_ip
        self._penalty = penalty
        self._on_auth_failed = on_auth_failed
        self._on_upstream_capabilities = on_upstream_capabilities
        self.session_id = session_id
        self.peer = peer
        self.settings = settings
        self.extensions = extensions
        self.credentials = credentials
        self._on_intercepted = on_intercepted
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

        self.started = time.monotonic()
        self.last_client_activity = self.started
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0
        self.closed = False
        self.login: str | None = None
        self.account: str | None = None
        self.upstream_capabilities: frozenset[str] = frozenset()

        # Upstream handshake: greeting -> [STARTTLS -> CAPABILITY] -> ready.
        self._up_state = "greeting"
        self._greeting_text = b""
        self._handshake_caps: list[bytes] = []

        self._inflight: deque[_Pending] = deque()  # forwarded upstream, awaiting their tagged response
        self._held = True  # client events wait until the upstream is ready
        self._queue: deque[object] = deque()
        self._continuation_credits = 0  # "+" from upstream for IDLE / AUTHENTICATE
        self._awaiting_literal: _Pending | None = None  # its sync literal awaits "+"
        self._idle: _Pending | None = None
        # The command being read from the client, when it is not simply forwarded.
        self._cmd_mode = "none"  # none | forward | capture | intercept | discard
        self._cmd_tag = b""
        self._cmd_name = b""
        self._cmd_pending: _Pending | None = None  # the forwarded command being read
        self._cmd_buf: list[bytes] = []
        self._cmd_size = 0
        self._auth: _Pending | None = None  # the LOGIN / AUTHENTICATE in flight
        self._held_by_auth = False  # later commands wait for the login's outcome
        self._own: _OwnCommand | None = None
        self._own_in_flight = 0  # the proxy's own commands among _inflight
        self._own_counter = 0
        self._out_client: list[bytes] = []
        self._local_task: asyncio.Task[None] | None = None
        self._greeted = False  # the proxy greeted the client itself (upstream opened lazily)
        self._upstream_requested = True
        self._id_sent = False  # the ID carrying the client's address went upstream
        self._delayed_out: list[bytes] | None = None  # output held back by the auth penalty
        self._drain_waiter: Callable[[], None] | None = None

    # ------------------------------------------------------------------ state
    @property
    def authenticated(self) -> bool:
        return self.facts.authenticated

    @property
    def upstream_ready(self) -> bool:
        return self._up_state == "ready"

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
        for ev in events:
            if self._own is not None:
                self._own_event(ev)
            elif type(ev) is Line:
                if ev.continued:
                    if self._auth is not None:
                        self._release_auth_untagged(self._auth)
                    out.append(ev.data)
                elif self._up_state != "ready":
                    self._handshake_line(ev.data)
                else:
                    self._upstream_line(ev.data, ev.literal is None)
            else:
                if self._auth is not None:
                    self._release_auth_untagged(self._auth)
                out.append(ev.data)  # type: ignore[union-attr]
        self._flush_client()
        if not self._held and self._queue:
            self._pump()

    def upstream_closed(self) -> None:
        if self.closed:
            return
        if self._up_state != "ready":
            self._fatal("Upstream server unavailable", "UNAVAILABLE")
            return
        if self._own is not None and not self._own.future.done():
            self._own.future.set_exception(UpstreamCommandError("upstream connection closed"))
        self.close()

    def upstream_failed(self, reason: str) -> None:
        """The upstream connection could not be made (or its TLS failed)."""
        log.warning("session %s: upstream unavailable: %s", self.session_id, reason)
        self._fatal("Upstream server unavailable, try again later", "UNAVAILABLE")

    def _handshake_line(self, line: bytes) -> None:
        status = parse_status_response(line)
        if self._up_state == "greeting":
            if status is None or status.tag != b"*" or status.status not in (b"OK", b"PREAUTH", b"BYE"):
                self._fatal("Upstream server sent an invalid greeting", "UNAVAILABLE")
                return
            if status.status == b"BYE":
                self.io.to_client(line)
                self.close()
                return
            if self.settings.upstream_security == "starttls":
                if status.status == b"PREAUTH":
                    self._fatal("Upstream greeted with PREAUTH; STARTTLS impossible", "UNAVAILABLE")
                    return
                self._greeting_text = line[status.code_end + 1 if status.code_end > 0 else 5 :].rstrip(b"\r\n")
                self._up_state = "starttls"
                self.io.to_upstream(b"PP0 STARTTLS\r\n")
                return
            if status.status == b"PREAUTH":
                self.facts.authenticated = True
            self._up_state = "ready"
            self._send_greeting(line, status)
            return
        if self._up_state == "starttls":
            if status is None or status.tag != b"PP0":
                return  # untagged chatter before the answer
            if status.status != b"OK":
                self._fatal("Upstream refused STARTTLS", "UNAVAILABLE")
                return
            self.io.start_upstream_tls()
            self._up_state = "capability"
            self.io.to_upstream(b"PP1 CAPABILITY\r\n")
            return
        if self._up_state == "capability":
            if is_capability_data(line):
                self._handshake_caps = line.rstrip(b"\r\n").split()[2:]
                return
            if status is not None and status.tag == b"PP1":
                if status.status != b"OK":
                    self._fatal("Upstream refused CAPABILITY", "UNAVAILABLE")
                    return
                self._up_state = "ready"
                greeting = (
                    b"* OK [CAPABILITY "
                    + b" ".join(self._handshake_caps)
                    + b"] "
                    + (self._greeting_text or b"ready")
                    + b"\r\n"
                )
                self._send_greeting(greeting, parse_status_response(greeting))

    def greet(self, capabilities: list[bytes] | None) -> None:
        """Greet the client from the proxy; upstream is opened at the client's first bytes."""
        self._greeted = True
        self._upstream_requested = False
        code = b""
        if capabilities:
            code = b"[CAPABILITY " + b" ".join(rewrite_atoms(capabilities, self.policy, self.facts)) + b"] "
        self.io.to_client(b"* OK " + code + b"Proxy ready\r\n")

    def _send_greeting(self, line: bytes, status: StatusResponse | None) -> None:
        if status is not None and status.code is not None and status.code[:11].upper() == b"CAPABILITY ":
            if self._on_upstream_capabilities is not None and status.status == b"OK":
                self._on_upstream_capabilities(status.code.split()[1:])
            line = rewrite_capability_code(line, status.code_start, status.code_end, self.policy, self.facts)
        if not self._greeted:
            self.io.to_client(line)
        self._held = False
        self._pump()

    def _upstream_line(self, line: bytes, complete: bool) -> None:
        out = self._out_client
        first = line[:1]
        auth = self._auth
        if first == b"+":
            if auth is not None:
                self._release_auth_untagged(auth)
            if self._awaiting_literal is not None:
                self._awaiting_literal = None
            else:
                self._continuation_credits += 1
                if self._held_by_auth:
                    # The client's answer to this "+" waits in the queue.
                    self._held_by_auth = False
                    self._held = False
            out.append(line)
            return
        if first == b"*":
            if self._own_in_flight and self._inflight and self._inflight[0].own:
                return  # a response to the proxy's own command (ID)
            if auth is not None:
                # Inside a login exchange a capability list must describe the state
                # the exchange ends in: keep it until the tagged response.
                if complete and len(auth.held) < _MAX_HELD_UNTAGGED:
                    auth.held.append(line)
                    return
                self._release_auth_untagged(auth)
            out.append(self._rewrite_untagged(line))
            return
        status = parse_status_response(line)
        if status is None:
            out.append(line)
            return
        self._tagged_from_upstream(status, line)

    def _rewrite_untagged(self, line: bytes) -> bytes:
        if is_capability_data(line):
            return rewrite_capability_data(line, self.policy, self.facts)
        if line[2:5] in (b"OK ", b"NO ", b"BYE") and b"[CAPABILITY " in line[:20].upper():
            st = parse_status_response(line)
            if st is not None and st.code is not None:
                return rewrite_capability_code(line, st.code_start, st.code_end, self.policy, self.facts)
        return line

    def _release_auth_untagged(self, auth: _Pending) -> None:
        if auth.held:
            out = self._out_client
            for line in auth.held:
                out.append(self._rewrite_untagged(line))
            auth.held.clear()

    def _match(self, tag: bytes) -> _Pending | None:
        """The in-flight command a tagged response answers: the oldest one, in order.

        Plain commands answered out of order are found by tag further in; a login
        or the proxy's own command never is (it is only ever the oldest).
        """
        inflight = self._inflight
        if not inflight:
            return None
        head = inflight[0]
        if head.tag == tag:
            return inflight.popleft()
        for pending in inflight:
            if pending.tag == tag and not (pending.auth or pending.own):
                inflight.remove(pending)
                return pending
        return None

    def _tagged_from_upstream(self, status: StatusResponse, line: bytes) -> None:
        pending = self._match(status.tag)
        if pending is None:
            if self._auth is not None:
                # Nothing but the login is in flight: upstream is not speaking IMAP to us.
                log.warning("session %s: upstream answered a command it was not sent", self.session_id)
                self._fatal("Proxy lost track of the upstream stream", "UNAVAILABLE")
                return
            self._out_client.append(line)  # answers nothing in flight: pass on, change nothing
            return
        if pending.own:
            self._own_in_flight -= 1
            return
        if self._awaiting_literal is pending:
            # Upstream refused the command before asking for its literal.
            self._awaiting_literal = None
            self.client_framer.cancel_literal()
            if self._cmd_pending is pending:
                self._cmd_mode = "discard"
        if self._idle is pending:
            self._idle = None
        self._continuation_credits = 0
        auth_ok = False
        if pending.auth:
            self._auth = None
            # The one place identity changes: the tagged OK of the login command that
            # was sent in the not-authenticated state, matched in order.
            if status.status == b"OK" and not self.facts.authenticated:
                auth_ok = True
                self.facts.authenticated = True
                if pending.capture is not None:
                    self._authenticated_by(pending.capture)
            self._release_auth_untagged(pending)
            if self._held_by_auth:
                self._held_by_auth = False
                self._held = False
            if status.status == b"NO":
                self._login_failed()
        if status.code is not None and status.code[:11].upper() == b"CAPABILITY ":
            if auth_ok:
                self.upstream_capabilities = frozenset(
                    a.decode("ascii", "replace").upper() for a in status.code.split()[1:]
                )
            line = rewrite_capability_code(line, status.code_start, status.code_end, self.policy, self.facts)
        self._out_client.append(line)
        if not self._inflight and self._drain_waiter is not None:
            waiter, self._drain_waiter = self._drain_waiter, None
            self._flush_client()
            waiter()

    def _login_failed(self) -> None:
        """Hold back the NO (and all after it) for the client IP's penalty."""
        if self._on_auth_failed is not None:
            self._on_auth_failed()
        if self._penalty is None or not self.client_ip:
            return
        delay = self._penalty.delay(self.client_ip)
        self._penalty.failed(self.client_ip)
        if delay <= 0:
            return
        self._delayed_out = []
        self._held = True
        asyncio.get_running_loop().call_later(delay, self._penalty_served)

    def _penalty_served(self) -> None:
        out, self._delayed_out = self._delayed_out, None
        if self.closed:
            return
        if out:
            self.io.to_client(b"".join(out))
        self._held = False
        self._pump()

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

    def _client_event(self, ev: object) -> None:
        if type(ev) is LiteralChunk:
            self._client_literal(ev)
        elif type(ev) is Line:
            if ev.continued:
                self._client_continued_line(ev)
            else:
                self._client_first_line(ev)
        elif type(ev) is LineTooLong:
            self._client_overlong(ev)

    def _client_literal(self, ev: LiteralChunk) -> None:
        mode = self._cmd_mode
        if mode == "forward":
            self.io.to_upstream(ev.data)
        elif mode == "capture":
            self.io.to_upstream(ev.data)
            self._collect(ev.data)
        elif mode == "intercept" or mode == "rewrite":
            self._collect(ev.data)
        # discard: drop

    def _client_continued_line(self, ev: Line) -> None:
        mode = self._cmd_mode
        if mode in ("forward", "capture"):
            if ev.literal is not None and not self._literal_allowed(ev):
                return
            self.io.to_upstream(ev.data)
            if mode == "capture":
                self._collect(ev.data)
            if ev.literal is not None and ev.literal.sync:
                self._awaiting_literal = self._cmd_pending
        elif mode == "intercept" or mode == "rewrite":
            self._collect(ev.data)
            if ev.literal is not None:
                self._intercept_literal(ev)
                return
        elif mode == "discard" and ev.literal is not None and ev.literal.sync:
            self.client_framer.cancel_literal()  # we never send "+" for it
            self._cmd_mode = "none"
            return
        if ev.literal is None:
            self._command_complete()

    def _client_first_line(self, ev: Line) -> None:
        line = ev.data
        if self._continuation_credits > 0:
            # The answer to a "+" (DONE after IDLE, a SASL response).
            self._continuation_credits -= 1
            auth = self._auth
            if auth is not None and auth.sasl_waiting:
                auth.capture = ("sasl", line.strip())
                auth.sasl_waiting = False
            self.io.to_upstream(line)
            return
        if self._auth is not None:
            # One login at a time, and what follows it runs in the state it ends in.
            self._wait(ev)
            self._held_by_auth = True
            return
        head = split_tag_command(line)
        if head is None or not is_valid_tag(head[0]):
            if line.strip() == b"":
                return  # stray empty line: ignore like Dovecot does
            self._begin_discard(ev)
            reason = "Expected a tag and a command name" if head is None else "Invalid tag"
            self._local_reply(_guess_tag(line), Reply("BAD", reason))
            return
        tag, name = head
        self._cmd_tag, self._cmd_name = tag, name
        handler = self.extensions.handlers.get(name.decode("ascii"))
        if handler is not None:
            if not self.authenticated:
                self._begin_discard(ev)
                self._local_reply(tag, Reply("BAD", f"{name.decode()} is only valid after login"))
                return
            self._cmd_mode = "intercept"
            self._cmd_buf = [line]
            self._cmd_size = len(line)
            if ev.literal is not None:
                self._intercept_literal(ev)
            else:
                self._command_complete()
            return
        if name == b"STARTTLS":
            self._begin_discard(ev)
            self._starttls(tag)
            return
        if name == b"COMPRESS":
            self._begin_discard(ev)
            self._local_reply(tag, Reply("NO", "Compression is not available through this proxy"))
            return
        if name == b"ID" and not self.authenticated:
            # Rewritten before it goes: a client must not choose the address upstream
            # records (x- fields), and with forward_client_ip: id it carries the proxy's.
            self._cmd_mode = "rewrite"
            self._cmd_buf = [line]
            self._cmd_size = len(line)
            if ev.literal is not None:
                self._intercept_literal(ev)
            else:
                self._command_complete()
            return
        is_auth = name in (b"LOGIN", b"AUTHENTICATE")
        if is_auth:
            if self.authenticated:
                self._begin_discard(ev)
                self._local_reply(tag, Reply("BAD", "Already authenticated"))
                return
            if not self.facts.client_tls and not self.facts.plaintext_auth_allowed:
                self._begin_discard(ev)
                self._local_reply(
                    tag,
                    Reply("NO", "Plaintext authentication disallowed on non-secure connections", "PRIVACYREQUIRED"),
                )
                return
            if self._inflight:
                # Forwarded only when nothing else is in flight, so that the next
                # tagged response from upstream is its answer, whatever the tags.
                self._wait(ev)
                self._after_drain(self._release)
                return
            self._cmd_mode = "capture"
            self._cmd_buf = [line]
            self._cmd_size = len(line)
        else:
            self._cmd_mode = "forward"
        if ev.literal is not None and not self._literal_allowed(ev):
            return
        pending = _Pending(tag, auth=is_auth)
        if is_auth:
            self._auth = pending
            if self.settings.client_address is not None and not self._id_sent:
                self._send_own_id(self.settings.client_address)
        self._cmd_pending = pending
        self._inflight.append(pending)
        self.io.to_upstream(line)
        if name == b"IDLE":
            self._idle = pending
        if ev.literal is not None:
            if ev.literal.sync:
                self._awaiting_literal = pending
            return
        self._command_complete()

    def _wait(self, ev: Line) -> None:
        """Put ``ev`` back at the head of the queue and stop reading the client."""
        self._queue.appendleft(ev)
        self._held = True

    def _release(self) -> None:
        self._held = False
        self._pump()

    def _literal_allowed(self, ev: Line) -> bool:
        """Enforce the pre-authentication literal cap; False when the command was refused."""
        assert ev.literal is not None
        if self.authenticated or ev.literal.size <= self.settings.max_preauth_literal:
            return True
        if ev.literal.nonsync:
            # The client is already sending it: no way to stay in sync cheaply.
            self._fatal("Literal too large before authentication", "TOOBIG")
            return False
        self.client_framer.cancel_literal()
        if ev.continued:
            # Part of this command already went upstream: end it there, so
            # upstream answers the tag (BAD) and both sides stay in sync.
            self.io.to_upstream(b"\r\n")
            self._cmd_mode = "none"
            return False
        self._cmd_mode = "none"
        self._local_reply(self._cmd_tag, Reply("BAD", "Literal too large before authentication", "TOOBIG"))
        return False

    def _intercept_literal(self, ev: Line) -> None:
        assert ev.literal is not None
        size = ev.literal.size
        if self._cmd_size + size > _MAX_INTERCEPTED:
            if ev.literal.nonsync:
                self._fatal("Command too long", "TOOBIG")
                return
            self.client_framer.cancel_literal()
            self._cmd_mode = "none"
            self._local_reply(self._cmd_tag, Reply("BAD", "Command too long", "TOOBIG"))
            return
        if ev.literal.sync:
            self.io.to_client(r.continuation())
        if size == 0:
            return

    def _collect(self, data: bytes) -> None:
        self._cmd_size += len(data)
        if self._cmd_mode == "capture" and self._cmd_size > _MAX_CAPTURE:
            self._cmd_mode = "forward"  # too big to be a password: stop copying
            self._cmd_buf = []
            return
        self._cmd_buf.append(data)

    def _command_complete(self) -> None:
        mode = self._cmd_mode
        self._cmd_mode = "none"
        if mode == "capture":
            data = b"".join(self._cmd_buf)
            self._cmd_buf = []
            if self._cmd_pending is not None:
                self._begin_capture(self._cmd_pending, data)
        elif mode == "intercept":
            data = b"".join(self._cmd_buf)
            self._cmd_buf = []
            self._intercept(self._cmd_tag, data)
        elif mode == "rewrite":
            data = b"".join(self._cmd_buf)
            self._cmd_buf = []
            self._forward_client_id(self._cmd_tag, data)

    def _send_own_id(self, address: ClientAddress) -> None:
        """Before the first login: tell upstream the client's address (answers swallowed)."""
        self._own_counter += 1
        tag = b"PPI%d" % self._own_counter
        self._inflight.append(_Pending(tag, own=True))
        self._own_in_flight += 1
        self._id_sent = True
        self.io.to_upstream(id_command(tag, address.id_fields()))

    def _forward_client_id(self, tag: bytes, data: bytes) -> None:
        try:
            command = merged_id_command(data, self.settings.client_address)
        except ParseError as exc:
            self._local_reply(tag, Reply("BAD", f"Invalid arguments: {exc}"))
            return
        self._id_sent = self.settings.client_address is not None
        self._inflight.append(_Pending(tag))
        self.io.to_upstream(command)

    def _begin_discard(self, ev: Line) -> None:
        """Drop the rest of a refused command (its literal and continuation lines)."""
        if ev.literal is None:
            self._cmd_mode = "none"
        elif ev.literal.sync:
            self.client_framer.cancel_literal()  # we never send "+"
            self._cmd_mode = "none"
        else:
            self._cmd_mode = "discard"

    def _client_overlong(self, ev: LineTooLong) -> None:
        if ev.continued and self._cmd_mode in ("forward", "capture"):
            # Part of this command already went upstream: end it there.
            self.io.to_upstream(b"\r\n")
            self._cmd_mode = "discard" if ev.skipped_literal else "none"
            return
        head = split_tag_command(ev.head)
        tag = head[0] if head is not None else b"*"
        self._cmd_mode = "discard" if ev.skipped_literal else "none"
        self._local_reply(tag, Reply("BAD", f"Line too long (limit {self.settings.max_line} bytes)", "TOOBIG"))

    # ------------------------------------------------------- credential capture
    def _begin_capture(self, pending: _Pending, data: bytes) -> None:
        name = self._cmd_name
        if name == b"LOGIN":
            pending.capture = ("login", data)
        elif name == b"AUTHENTICATE":
            try:
                cmd = parse_command(data)
            except ParseError:
                return
            if not cmd.args or as_text(cmd.args[0], "mechanism").upper() != "PLAIN":
                return  # not capturable: passed through, no push credentials
            if len(cmd.args) > 1:
                pending.capture = ("sasl", as_text(cmd.args[1], "response").encode())
            else:
                pending.capture = ("sasl", b"")
                pending.sasl_waiting = True

    def _authenticated_by(self, capture: tuple[str, bytes]) -> None:
        kind, data = capture
        login = secret = None
        try:
            if kind == "login":
                cmd = parse_command(data)
                if len(cmd.args) == 2:
                    login = as_text(cmd.args[0], "user")
                    secret = as_text(cmd.args[1], "password")
            elif data and data != b"=":
                authzid, authcid, password = base64.b64decode(data, validate=True).split(b"\0")
                if authzid in (b"", authcid):
                    login, secret = authcid.decode("utf-8"), password.decode("utf-8")
        except (ParseError, ValueError, binascii.Error, UnicodeDecodeError):
            login = secret = None
        if login is None or secret is None:
            return
        self.login = login
        self.account = normalise_account(login)
        log.info("session %s: authenticated as %s", self.session_id, self.account)
        self._spawn(self.credentials.logged_in(self.account, login, secret, self.session_id))

    # ---------------------------------------------------------- local answers
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
        handler = self.extensions.handlers[cmd.name]
        if self._on_intercepted is not None:
            self._on_intercepted(cmd.name)

        async def run() -> Reply:
            return await handler(cmd, _Context(self))

        self._run_local(tag, run, name=cmd.name)

    def _run_local(self, tag: bytes, fn: Callable[[], Awaitable[Reply]], name: str | None) -> None:
        """Answer a command in the proxy, in tag order."""
        self._held = True

        def go() -> None:
            self._local_task = asyncio.ensure_future(self._local(tag, fn, name))

        self._after_drain(go)

    def _after_drain(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every forwarded command has its tagged response."""
        if not self._inflight:
            fn()
        else:
            self._drain_waiter = fn  # called from _tagged_from_upstream

    async def _local(self, tag: bytes, fn: Callable[[], Awaitable[Reply]], name: str | None) -> None:
        try:
            reply = await fn()
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

    # ------------------------------------------- the proxy's own upstream commands
    def reply_untagged(self, payload: bytes) -> None:
        self.io.to_client(r.untagged(payload))

    async def upstream_command(self, command: bytes, timeout: float) -> tuple[list[bytes], StatusResponse]:
        if self._inflight or self._own is not None:
            raise UpstreamCommandError("a command is already in flight")
        if self.closed:
            raise UpstreamCommandError("session closed")
        self._own_counter += 1
        tag = b"PPX%d" % self._own_counter
        future: asyncio.Future[tuple[list[bytes], StatusResponse]] = asyncio.get_running_loop().create_future()
        self._own = _OwnCommand(tag, future)
        self.io.to_upstream(tag + b" " + command + b"\r\n")
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # The connection's state is unknown now: closing is the only safe move.
            self._fatal("Upstream server did not answer", "UNAVAILABLE")
            raise UpstreamCommandError("timeout") from None
        finally:
            self._own = None

    def _own_event(self, ev: object) -> None:
        own = self._own
        assert own is not None
        if type(ev) is Line:
            if ev.continued and own.current is not None:
                own.current.append(ev.data)
            else:
                status = parse_status_response(ev.data) if ev.data[:1] != b"*" else None
                if status is not None and status.tag == own.tag:
                    if not own.future.done():
                        own.future.set_result((own.untagged, status))
                    return
                if ev.data[:1] == b"*":
                    own.current = [ev.data]
                else:
                    return
            if ev.literal is None and own.current is not None:
                own.untagged.append(b"".join(own.current))
                own.current = None
        elif own.current is not None:
            own.current.append(ev.data)  # type: ignore[attr-defined]

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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._flush_client()
        if self._local_task is not None and not self._local_task.done():
            self._local_task.cancel()
        if self._own is not None and not self._own.future.done():
            self._own.future.set_exception(UpstreamCommandError("session closed"))
        self.io.close()

    async def finish(self) -> None:
        """After both connections are gone: tell the extensions and the credential sink."""
        ctx = _Context(self)
        for ext in self.extensions.extensions:
            try:
                await ext.session_closed(ctx)
            except Exception:
                log.exception("session %s: %s.session_closed failed", self.session_id, ext.name)
        try:
            await self.credentials.session_closed(self.session_id)
        except Exception:
            log.exception("session %s: credential sink failed", self.session_id)


def _guess_tag(line: bytes) -> bytes:
    """The tag of a malformed command when it is a valid tag, else ``*``."""
    word = line.split(b" ", 1)[0].strip()
    return word if len(word) <= 64 and is_valid_tag(word) else b"*"


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


class _Context:
    """The SessionContext handed to extension handlers."""

    __slots__ = ("_s",)

    def __init__(self, session: Session) -> None:
        self._s = session

    @property
    def session_id(self) -> str:
        return self._s.session_id

    @property
    def account(self) -> str | None:
        return self._s.account if self._s.authenticated else None

    @property
    def login(self) -> str | None:
        return self._s.login

    @property
    def upstream_capabilities(self) -> frozenset[str]:
        return self._s.upstream_capabilities

    def reply_untagged(self, payload: bytes) -> None:
        self._s.reply_untagged(payload)

    async def upstream_command(self, command: bytes, timeout: float = 30.0) -> tuple[list[bytes], StatusResponse]:
        return await self._s.upstream_command(command, timeout)
