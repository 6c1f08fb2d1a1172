"""The command router: reads the client's commands and sends each to one route, by command name.

Most commands are relayed upstream unchanged (``_route_forward``); the table
:data:`ROUTES` names the few the proxy handles itself, like aiosmtpd's one
method per command.  Extension commands (XAPPLEPUSHSERVICE, WEBPUSH ...) are
intercepted.  The router owns the client's framer and what it knows of the
command being read (its mode, tag, name and kept bytes), of IDLE and of the
upstream's continuation requests; the ID commands that go upstream before
login are its :class:`~pushproxy.proxy.upstream_id.UpstreamId`.  Refusals,
STARTTLS and extension commands are answered through
:class:`~pushproxy.proxy.local.LocalAnswers`; whatever needs the whole session
(waiting, closing) it asks of its :class:`RouterHost`.  The login rules
themselves live in :mod:`pushproxy.proxy.ledger`.
"""

from __future__ import annotations

import functools
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
        self._settings = settings
        self._facts = facts
        self._ledger = ledger
        self._capture = capture
        self._local = local  # answers (refusals, extension commands) in command order
        # Command names as they come off the wire (upper-cased bytes): no str per command.
        self._intercepted = intercepted
        self._routes = routes_for(observed, claimed)
        # (name, first line) -> whether an extension takes this relayed command over (Extension.claims)
        self._claims = claims
        self.framer = Framer(server=False, max_line=settings.max_line)
        self._mode = NONE
        self._tag = b""
        self._name = b""
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
        self.framer = Framer(server=False, max_line=self._settings.max_line)

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
            if self._ledger.login is not None and self._capture.sasl_waiting:
                self._capture.sasl_response(line)
            self._io.to_upstream(line)
            return
        if self._ledger.login is not None:
            # One login at a time, and what follows it runs in the state it ends in.
            self._host.wait_for_login(ev)
            return
        head = split_tag_command(line)
        if head is None or not is_valid_tag(head[0]):
            if line.strip() == b"":
                return  # stray empty line: ignore like Dovecot does
            self._begin_discard(ev)
            reason = "Expected a tag and a command name" if head is None else "Invalid tag"
            self._local.reply(guess_tag(line), Reply("BAD", reason))
            return
        tag, name = head
        self._tag, self._name = tag, name
        if name in self._intercepted:
            self._route_extension(ev)
            return
        self._routes.get(name, CommandRouter._route_forward)(self, ev)

    # -- the routes -------------------------------------------------------------------
    def _route_forward(self, ev: Line) -> None:
        self._mode = FORWARD
        self._forward_first_line(ev, login=False)

    def _route_observed(self, ev: Line) -> None:
        """Relayed like any command; an extension hears of its tagged OK (``observed_commands``)."""
        self._mode = FORWARD
        self._forward_first_line(ev, login=False, observed=self._facts.authenticated)

    def _route_claimed(self, ev: Line) -> None:
        """Answered by an extension when its claim wants this one (``Extension.claims``), else relayed."""
        if self._facts.authenticated and self._claims is not None and self._claims(self._name, ev.data):
            self._keep(ev, INTERCEPT)
        else:
            self._route_forward(ev)

    def _route_extension(self, ev: Line) -> None:
        if not self._facts.authenticated:
            self._begin_discard(ev)
            self._local.reply(self._tag, Reply("BAD", f"{self._name.decode()} is only valid after login"))
            return
        self._keep(ev, INTERCEPT)

    def _route_starttls(self, ev: Line) -> None:
        self._begin_discard(ev)
        self._local.starttls(self._tag, self._settings.starttls_offered)

    def _route_compress(self, ev: Line) -> None:
        self._begin_discard(ev)
        self._local.reply(self._tag, Reply("NO", "Compression is not available through this proxy"))

    def _route_id(self, ev: Line) -> None:
        if self._facts.authenticated:
            self._route_forward(ev)
            return
        # Rewritten before it goes: a client must not choose the address upstream
        # records (x- fields), and with forward_client_ip: id it carries the proxy's.
        self._keep(ev, REWRITE)

    def _route_login(self, ev: Line) -> None:
        refusal = CommandLedger.login_refusal(self._facts)
        if refusal is not None:
            self._begin_discard(ev)
            self._local.reply(self._tag, refusal)
            return
        if self._ledger:
            # Forwarded only when nothing else is in flight, so that the next
            # tagged response from upstream is its answer, whatever the tags.
            self._host.wait_for_drain(ev)
            return
        self._mode = CAPTURE
        self._buf = [ev.data]
        self._size = len(ev.data)
        self._capture.begin()
        self._forward_first_line(ev, login=True)

    def _forward_first_line(self, ev: Line, *, login: bool, observed: bool = False) -> None:
        if ev.literal is not None and not self._literal_allowed(ev):
            return
        if login:
            self._upstream_id.before_login()
        pending = self._ledger.sent(self._tag, login=login, observed=self._name if observed else None)
        self._pending = pending
        self._io.to_upstream(ev.data)
        if self._name == b"IDLE":
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
        if self._facts.authenticated or ev.literal.size <= self._settings.max_preauth_literal:
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
        self._local.reply(self._tag, Reply("BAD", "Literal too large before authentication", "TOOBIG"))
        return False

    def _intercept_literal(self, ev: Line) -> None:
        assert ev.literal is not None
        if self._size + ev.literal.size > MAX_INTERCEPTED:
            if ev.literal.nonsync:
                self._host.fatal("Command too long", "TOOBIG")
                return
            self.framer.cancel_literal()
            self._mode = NONE
            self._local.reply(self._tag, Reply("BAD", "Command too long", "TOOBIG"))
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
                self._capture.command(self._name, data)
        elif mode is INTERCEPT:
            self._local.extension_command(self._tag, data)
        elif mode is REWRITE:
            refusal = self._upstream_id.client_id(self._tag, data)
            if refusal is not None:
                self._local.reply(self._tag, refusal)

    def _begin_discard(self, ev: Line) -> None:
        """Drop the rest of a refused command (its literal and continuation lines)."""
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
        self._local.reply(tag, Reply("BAD", f"Line too long (limit {self._settings.max_line} bytes)", "TOOBIG"))


Route = Callable[[CommandRouter, Line], None]

ROUTES: dict[bytes, Route] = {
    b"LOGIN": CommandRouter._route_login,
    b"AUTHENTICATE": CommandRouter._route_login,
    b"STARTTLS": CommandRouter._route_starttls,
    b"COMPRESS": CommandRouter._route_compress,
    b"ID": CommandRouter._route_id,
}


@functools.cache
def routes_for(observed: frozenset[bytes], claimed: frozenset[bytes] = frozenset()) -> dict[bytes, Route]:
    """:data:`ROUTES` plus the commands extensions observe or claim (one table lookup per command, as before)."""
    routes: dict[bytes, Route] = dict.fromkeys(observed, CommandRouter._route_observed)
    routes.update(dict.fromkeys(claimed, CommandRouter._route_claimed))
    routes.update(ROUTES)  # the proxy's own handling of a command comes first
    return routes


def guess_tag(line: bytes) -> bytes:
    """The tag of a malformed command when it is a valid tag, else ``*``."""
    word = line.split(b" ", 1)[0].strip()
    return word if is_valid_tag(word) else b"*"
