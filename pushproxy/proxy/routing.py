"""The command router: reads the client's commands and sends each to one route, by command name.

Most commands are relayed upstream unchanged; the routes
(:mod:`pushproxy.proxy.routes`, a table of one function per command name, like
aiosmtpd's one method per command) name the few the proxy handles itself, and
extension commands (XAPPLEPUSHSERVICE, WEBPUSH ...) are intercepted.  A route
acts through the router's methods (``forward``, ``intercept``, ``discard`` ...:
:class:`~pushproxy.proxy.routes.Routed`).  The router owns the client's framer and what it knows of the
command being read (its mode, tag, name and kept bytes), of IDLE and of the
upstream's continuation requests; the ID commands that go upstream before
login are its :class:`~pushproxy.proxy.upstream_id.UpstreamId`.  Refusals,
STARTTLS and extension commands are answered through
:class:`~pushproxy.proxy.local.LocalAnswers`; whatever needs the whole session
(waiting, closing) it asks of its :class:`RouterHost`.  The login rules
themselves live in :mod:`pushproxy.proxy.ledger`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Protocol

from pushproxy.extensions.base import Reply
from pushproxy.imap import response as r
from pushproxy.imap.capabilities import ConnectionFacts
from pushproxy.imap.framing import Framer, Line, LineTooLong, LiteralChunk
from pushproxy.imap.parse import is_valid_tag, split_tag_command
from pushproxy.proxy.capture import MAX_CAPTURE, CredentialCapture
from pushproxy.proxy.ledger import CommandLedger, Pending
from pushproxy.proxy.local import LocalAnswers
from pushproxy.proxy.routes import route_extension, routes_for
from pushproxy.proxy.session_io import SessionIO, SessionSettings
from pushproxy.proxy.upstream_id import UpstreamId

MAX_INTERCEPTED = 65536  # an intercepted command, literals included


class CommandMode(Enum):
    """What happens to the rest of the client command being read."""

    NONE = "none"  # between commands
    FORWARD = "forward"  # relayed upstream as it comes
    CAPTURE = "capture"  # relayed, and kept for credential capture (LOGIN / AUTHENTICATE)
    INTERCEPT = "intercept"  # kept, answered by an extension
    REWRITE = "rewrite"  # kept, sent upstream rewritten (ID before login)
    DISCARD = "discard"  # dropped (a refused command's literal and continuation lines)


# Module constants: the per-event checks below are on the relay's hot path.
NONE, FORWARD, CAPTURE = CommandMode.NONE, CommandMode.FORWARD, CommandMode.CAPTURE
INTERCEPT, REWRITE, DISCARD = CommandMode.INTERCEPT, CommandMode.REWRITE, CommandMode.DISCARD


class RouterHost(Protocol):
    """What the router asks of its session."""

    def wait_for_login(self, ev: Line) -> None:
        """``ev`` came while a login is in flight: it waits for the login's outcome (or a "+")."""

    def wait_for_drain(self, ev: Line) -> None:
        """``ev`` goes again once nothing is in flight upstream."""

    def fatal(self, text: str, code: str | None = None) -> None: ...


class CommandRouter:
    """The client side of a session: reading commands and routing them."""

    def __init__(
        self,
        host: RouterHost,
        io: SessionIO,
        settings: SessionSettings,
        facts: ConnectionFacts,
        ledger: CommandLedger,
        capture: CredentialCapture,
        local: LocalAnswers,
        *,
        intercepted: frozenset[bytes],
        observed: frozenset[bytes],
        claimed: frozenset[bytes] = frozenset(),
        claims: Callable[[bytes, bytes], bool] | None = None,
    ) -> None:
        self._host = host
        self._io = io
        # settings, facts, ledger, local, tag, name: read by the routes (routes.Routed), written here only.
        self.settings = settings
        self.facts = facts
        self.ledger = ledger
        self._capture = capture
        self.local = local  # answers (refusals, extension commands) in command order
        # Command names as they come off the wire (upper-cased bytes): no str per command.
        self._intercepted = intercepted
        self._routes = routes_for(observed, claimed)
        # (name, first line) -> whether an extension takes this relayed command over (Extension.claims)
        self._claims = claims
        self.framer = Framer(server=False, max_line=settings.max_line)
        self._mode = NONE
        self.tag = b""
        self.name = b""
        self._pending: Pending | None = None  # the forwarded command being read
        self._buf: list[bytes] = []
        self._size = 0
        self._credits = 0  # "+" from upstream for IDLE / AUTHENTICATE, the client's next line answers
        self._awaiting_literal: Pending | None = None  # its sync literal awaits "+"
        self._idle: Pending | None = None
        self._upstream_id = UpstreamId(io, ledger, settings.client_address)

    @property
    def in_idle(self) -> bool:
        return self._idle is not None

    def restart_framer(self) -> None:
        """STARTTLS: the client's stream starts afresh (what it pipelined in clear text is dropped)."""
        self.framer = Framer(server=False, max_line=self.settings.max_line)

    # -- from the upstream side -----------------------------------------------------------
    def continuation(self) -> bool:
        """Upstream sent "+": False when it was for a literal, True when the client's next line answers it."""
        if self._awaiting_literal is not None:
            self._awaiting_literal = None
            return False
        self._credits += 1
        return True

    def answered(self, pending: Pending) -> None:
        """Upstream sent the tagged response of ``pending``."""
        if self._awaiting_literal is pending:
            # Upstream refused the command before asking for its literal.
            self._awaiting_literal = None
            self.framer.cancel_literal()
            if self._pending is pending:
                self._mode = DISCARD
        if self._idle is pending:
            self._idle = None
        self._credits = 0

    # -- client events ----------------------------------------------------------------------
    def event(self, ev: object) -> None:
        if type(ev) is LiteralChunk:
            mode = self._mode
            if mode is FORWARD:
                self._io.to_upstream(ev.data)
            elif mode is CAPTURE:
                self._io.to_upstream(ev.data)
                self._collect(ev.data)
            elif mode is INTERCEPT or mode is REWRITE:
                self._collect(ev.data)
            # DISCARD: dropped
        elif type(ev) is Line:
            if ev.continued:
                self._continued_line(ev)
            else:
                self._first_line(ev)
        elif type(ev) is LineTooLong:
            self._overlong(ev)

    def _continued_line(self, ev: Line) -> None:
        mode = self._mode
        if mode is FORWARD or mode is CAPTURE:
            if ev.literal is not None and not self._literal_allowed(ev):
                return
            self._io.to_upstream(ev.data)
            if mode is CAPTURE:
                self._collect(ev.data)
            if ev.literal is not None and ev.literal.sync:
                self._awaiting_literal = self._pending
        elif mode is INTERCEPT or mode is REWRITE:
            self._collect(ev.data)
            if ev.literal is not None:
                self._intercept_literal(ev)
                return
        elif mode is DISCARD and ev.literal is not None and ev.literal.sync:
            self.framer.cancel_literal()  # we never send "+" for it
            self._mode = NONE
            return
        if ev.literal is None:
            self._command_complete()

    def _first_line(self, ev: Line) -> None:
        line = ev.data
        if self._credits > 0:
            # The answer to a "+" (DONE after IDLE, a SASL response).
            self._credits -= 1
            if self.ledger.login is not None and self._capture.sasl_waiting:
                self._capture.sasl_response(line)
            self._io.to_upstream(line)
            return
        if self.ledger.login is not None:
            # One login at a time, and what follows it runs in the state it ends in.
            self._host.wait_for_login(ev)
            return
        head = split_tag_command(line)
        if head is None or not is_valid_tag(head[0]):
            if line.strip() == b"":
                return  # stray empty line: ignore like Dovecot does
            self.discard(ev)
            reason = "Expected a tag and a command name" if head is None else "Invalid tag"
            self.local.reply(guess_tag(line), Reply("BAD", reason))
            return
        tag, name = head
        self.tag, self.name = tag, name
        if name in self._intercepted:
            route_extension(self, ev)
            return
        route = self._routes.get(name)
        if route is None:
            self.forward(ev)  # most commands: relayed unchanged
        else:
            route(self, ev)

    # -- what a route does with the command (pushproxy.proxy.routes) -----------------------
    def forward(self, ev: Line, *, observed: bool = False) -> None:
        self._mode = FORWARD
        self._forward_first_line(ev, login=False, observed=observed)

    def forward_login(self, ev: Line) -> None:
        self._mode = CAPTURE
        self._buf = [ev.data]
        self._size = len(ev.data)
        self._capture.begin()
        self._forward_first_line(ev, login=True)

    def intercept(self, ev: Line) -> None:
        self._keep(ev, INTERCEPT)

    def rewrite(self, ev: Line) -> None:
        self._keep(ev, REWRITE)

    def claimed(self, ev: Line) -> bool:
        return self._claims is not None and self._claims(self.name, ev.data)

    def wait_for_drain(self, ev: Line) -> None:
        self._host.wait_for_drain(ev)

    def _forward_first_line(self, ev: Line, *, login: bool, observed: bool = False) -> None:
        if ev.literal is not None and not self._literal_allowed(ev):
            return
        if login:
            self._upstream_id.before_login()
        pending = self.ledger.sent(self.tag, login=login, observed=self.name if observed else None)
        self._pending = pending
        self._io.to_upstream(ev.data)
        if self.name == b"IDLE":
            self._idle = pending
        if ev.literal is not None:
            if ev.literal.sync:
                self._awaiting_literal = pending
            return
        self._command_complete()

    def _keep(self, ev: Line, mode: CommandMode) -> None:
        """Read the whole command (literals included) before acting on it."""
        self._mode = mode
        self._buf = [ev.data]
        self._size = len(ev.data)
        if ev.literal is not None:
            self._intercept_literal(ev)
        else:
            self._command_complete()

    # -- the rest of a command -----------------------------------------------------------
    def _literal_allowed(self, ev: Line) -> bool:
        """Enforce the pre-authentication literal cap; False when the command was refused."""
        assert ev.literal is not None
        if self.facts.authenticated or ev.literal.size <= self.settings.max_preauth_literal:
            return True
        if ev.literal.nonsync:
            # The client is already sending it: no way to stay in sync cheaply.
            self._host.fatal("Literal too large before authentication", "TOOBIG")
            return False
        self.framer.cancel_literal()
        self._mode = NONE
        if ev.continued:
            # Part of this command already went upstream: end it there, so
            # upstream answers the tag (BAD) and both sides stay in sync.
            self._io.to_upstream(b"\r\n")
            return False
        self.local.reply(self.tag, Reply("BAD", "Literal too large before authentication", "TOOBIG"))
        return False

    def _intercept_literal(self, ev: Line) -> None:
        assert ev.literal is not None
        if self._size + ev.literal.size > MAX_INTERCEPTED:
            if ev.literal.nonsync:
                self._host.fatal("Command too long", "TOOBIG")
                return
            self.framer.cancel_literal()
            self._mode = NONE
            self.local.reply(self.tag, Reply("BAD", "Command too long", "TOOBIG"))
            return
        if ev.literal.sync:
            self._io.to_client(r.continuation())

    def _collect(self, data: bytes) -> None:
        self._size += len(data)
        if self._mode is CAPTURE and self._size > MAX_CAPTURE:
            self._mode = FORWARD  # too big to be a password: stop copying
            self._buf = []
            return
        self._buf.append(data)

    def _command_complete(self) -> None:
        mode = self._mode
        self._mode = NONE
        if mode is NONE or mode is FORWARD or mode is DISCARD:
            return
        data = b"".join(self._buf)
        self._buf = []
        if mode is CAPTURE:
            if self._pending is not None:
                self._capture.command(self.name, data)
        elif mode is INTERCEPT:
            self.local.extension_command(self.tag, data)
        elif mode is REWRITE:
            refusal = self._upstream_id.client_id(self.tag, data)
            if refusal is not None:
                self.local.reply(self.tag, refusal)

    def discard(self, ev: Line) -> None:
        """Drop the rest of a refused command, or one the proxy answers (its literal and continuation lines)."""
        if ev.literal is None:
            self._mode = NONE
        elif ev.literal.sync:
            self.framer.cancel_literal()  # we never send "+"
            self._mode = NONE
        else:
            self._mode = DISCARD

    def _overlong(self, ev: LineTooLong) -> None:
        if ev.continued and (self._mode is FORWARD or self._mode is CAPTURE):
            # Part of this command already went upstream: end it there.
            self._io.to_upstream(b"\r\n")
            self._mode = DISCARD if ev.skipped_literal else NONE
            return
        head = split_tag_command(ev.head)
        tag = head[0] if head is not None and is_valid_tag(head[0]) else b"*"
        self._mode = DISCARD if ev.skipped_literal else NONE
        self.local.reply(tag, Reply("BAD", f"Line too long (limit {self.settings.max_line} bytes)", "TOOBIG"))


def guess_tag(line: bytes) -> bytes:
    """The tag of a malformed command when it is a valid tag, else ``*``."""
    word = line.split(b" ", 1)[0].strip()
    return word if is_valid_tag(word) else b"*"
