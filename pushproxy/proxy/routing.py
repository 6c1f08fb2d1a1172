"""Client command routing: each command line goes to one handler, by command name.

Most commands are relayed upstream unchanged (``_route_forward``); the table
:data:`ROUTES` names the few the proxy handles itself, like aiosmtpd's one
method per command.  Extension commands (XAPPLEPUSHSERVICE, WEBPUSH ...) are
intercepted.  The login rules themselves live in :mod:`pushproxy.proxy.ledger`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from pushproxy.extensions.base import Reply
from pushproxy.imap import response as r
from pushproxy.imap.framing import Line, LineTooLong, LiteralChunk
from pushproxy.imap.parse import ParseError, is_valid_tag, split_tag_command
from pushproxy.proxy.capture import MAX_CAPTURE, capture_of
from pushproxy.proxy.client_id import ClientAddress, id_command, merged_id_command
from pushproxy.proxy.state import CommandMode, SessionState

MAX_INTERCEPTED = 65536  # an intercepted command, literals included

# Module constants: the per-event checks below are on the relay's hot path.
NONE, FORWARD, CAPTURE = CommandMode.NONE, CommandMode.FORWARD, CommandMode.CAPTURE
INTERCEPT, REWRITE, DISCARD = CommandMode.INTERCEPT, CommandMode.REWRITE, CommandMode.DISCARD


class ClientCommands(SessionState):
    """The client side of a session: reading commands and routing them."""

    def _client_event(self, ev: object) -> None:
        if type(ev) is LiteralChunk:
            mode = self._cmd_mode
            if mode is FORWARD:
                self.io.to_upstream(ev.data)
            elif mode is CAPTURE:
                self.io.to_upstream(ev.data)
                self._collect(ev.data)
            elif mode is INTERCEPT or mode is REWRITE:
                self._collect(ev.data)
            # DISCARD: dropped
        elif type(ev) is Line:
            if ev.continued:
                self._client_continued_line(ev)
            else:
                self._client_first_line(ev)
        elif type(ev) is LineTooLong:
            self._client_overlong(ev)

    def _client_continued_line(self, ev: Line) -> None:
        mode = self._cmd_mode
        if mode is FORWARD or mode is CAPTURE:
            if ev.literal is not None and not self._literal_allowed(ev):
                return
            self.io.to_upstream(ev.data)
            if mode is CAPTURE:
                self._collect(ev.data)
            if ev.literal is not None and ev.literal.sync:
                self._awaiting_literal = self._cmd_pending
        elif mode is INTERCEPT or mode is REWRITE:
            self._collect(ev.data)
            if ev.literal is not None:
                self._intercept_literal(ev)
                return
        elif mode is DISCARD and ev.literal is not None and ev.literal.sync:
            self.client_framer.cancel_literal()  # we never send "+" for it
            self._cmd_mode = NONE
            return
        if ev.literal is None:
            self._command_complete()

    def _client_first_line(self, ev: Line) -> None:
        line = ev.data
        if self._continuation_credits > 0:
            # The answer to a "+" (DONE after IDLE, a SASL response).
            self._continuation_credits -= 1
            login = self.ledger.login
            if login is not None and login.sasl_waiting:
                login.capture = ("sasl", line.strip())
                login.sasl_waiting = False
            self.io.to_upstream(line)
            return
        if self.ledger.login is not None:
            # One login at a time, and what follows it runs in the state it ends in.
            self._wait(ev)
            self._held_by_login = True
            return
        head = split_tag_command(line)
        if head is None or not is_valid_tag(head[0]):
            if line.strip() == b"":
                return  # stray empty line: ignore like Dovecot does
            self._begin_discard(ev)
            reason = "Expected a tag and a command name" if head is None else "Invalid tag"
            self._local_reply(guess_tag(line), Reply("BAD", reason))
            return
        tag, name = head
        self._cmd_tag, self._cmd_name = tag, name
        if name in self._extension_names:
            self._route_extension(ev)
            return
        self._routes.get(name, ClientCommands._route_forward)(self, ev)

    # -- the routes -------------------------------------------------------------------
    def _route_forward(self, ev: Line) -> None:
        self._cmd_mode = FORWARD
        self._forward_first_line(ev, login=False)

    def _route_observed(self, ev: Line) -> None:
        """Relayed like any command; an extension hears of its tagged OK (``observed_commands``)."""
        self._route_forward(ev)
        pending = self._cmd_pending
        if self.authenticated and pending is not None and pending.tag == self._cmd_tag:
            pending.observed = self._cmd_name

    def _route_extension(self, ev: Line) -> None:
        if not self.authenticated:
            self._begin_discard(ev)
            self._local_reply(self._cmd_tag, Reply("BAD", f"{self._cmd_name.decode()} is only valid after login"))
            return
        self._keep(ev, INTERCEPT)

    def _route_starttls(self, ev: Line) -> None:
        self._begin_discard(ev)
        self._starttls(self._cmd_tag)

    def _route_compress(self, ev: Line) -> None:
        self._begin_discard(ev)
        self._local_reply(self._cmd_tag, Reply("NO", "Compression is not available through this proxy"))

    def _route_id(self, ev: Line) -> None:
        if self.authenticated:
            self._route_forward(ev)
            return
        # Rewritten before it goes: a client must not choose the address upstream
        # records (x- fields), and with forward_client_ip: id it carries the proxy's.
        self._keep(ev, REWRITE)

    def _route_login(self, ev: Line) -> None:
        refusal = self.ledger.login_refusal(self.facts)
        if refusal is not None:
            self._begin_discard(ev)
            self._local_reply(self._cmd_tag, refusal)
            return
        if self.ledger:
            # Forwarded only when nothing else is in flight, so that the next
            # tagged response from upstream is its answer, whatever the tags.
            self._wait(ev)
            self._after_drain(self._release)
            return
        self._cmd_mode = CAPTURE
        self._cmd_buf = [ev.data]
        self._cmd_size = len(ev.data)
        self._forward_first_line(ev, login=True)

    def _forward_first_line(self, ev: Line, *, login: bool) -> None:
        if ev.literal is not None and not self._literal_allowed(ev):
            return
        if login and self.settings.client_address is not None and not self._id_sent:
            self._send_own_id(self.settings.client_address)
        pending = self.ledger.sent(self._cmd_tag, login=login)
        self._cmd_pending = pending
        self.io.to_upstream(ev.data)
        if self._cmd_name == b"IDLE":
            self._idle = pending
        if ev.literal is not None:
            if ev.literal.sync:
                self._awaiting_literal = pending
            return
        self._command_complete()

    def _keep(self, ev: Line, mode: CommandMode) -> None:
        """Read the whole command (literals included) before acting on it."""
        self._cmd_mode = mode
        self._cmd_buf = [ev.data]
        self._cmd_size = len(ev.data)
        if ev.literal is not None:
            self._intercept_literal(ev)
        else:
            self._command_complete()

    # -- holding the client -------------------------------------------------------------
    def _wait(self, ev: Line) -> None:
        """Put ``ev`` back at the head of the queue and stop reading the client."""
        self._queue.appendleft(ev)
        self._held = True

    def _release(self) -> None:
        self._held = False
        self._pump()

    # -- the rest of a command -----------------------------------------------------------
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
        self._cmd_mode = NONE
        if ev.continued:
            # Part of this command already went upstream: end it there, so
            # upstream answers the tag (BAD) and both sides stay in sync.
            self.io.to_upstream(b"\r\n")
            return False
        self._local_reply(self._cmd_tag, Reply("BAD", "Literal too large before authentication", "TOOBIG"))
        return False

    def _intercept_literal(self, ev: Line) -> None:
        assert ev.literal is not None
        if self._cmd_size + ev.literal.size > MAX_INTERCEPTED:
            if ev.literal.nonsync:
                self._fatal("Command too long", "TOOBIG")
                return
            self.client_framer.cancel_literal()
            self._cmd_mode = NONE
            self._local_reply(self._cmd_tag, Reply("BAD", "Command too long", "TOOBIG"))
            return
        if ev.literal.sync:
            self.io.to_client(r.continuation())

    def _collect(self, data: bytes) -> None:
        self._cmd_size += len(data)
        if self._cmd_mode is CAPTURE and self._cmd_size > MAX_CAPTURE:
            self._cmd_mode = FORWARD  # too big to be a password: stop copying
            self._cmd_buf = []
            return
        self._cmd_buf.append(data)

    def _command_complete(self) -> None:
        mode = self._cmd_mode
        self._cmd_mode = NONE
        if mode is NONE or mode is FORWARD or mode is DISCARD:
            return
        data = b"".join(self._cmd_buf)
        self._cmd_buf = []
        if mode is CAPTURE:
            pending = self._cmd_pending
            if pending is not None:
                pending.capture, pending.sasl_waiting = capture_of(self._cmd_name, data)
        elif mode is INTERCEPT:
            self._intercept(self._cmd_tag, data)
        elif mode is REWRITE:
            self._forward_client_id(self._cmd_tag, data)

    def _begin_discard(self, ev: Line) -> None:
        """Drop the rest of a refused command (its literal and continuation lines)."""
        if ev.literal is None:
            self._cmd_mode = NONE
        elif ev.literal.sync:
            self.client_framer.cancel_literal()  # we never send "+"
            self._cmd_mode = NONE
        else:
            self._cmd_mode = DISCARD

    def _client_overlong(self, ev: LineTooLong) -> None:
        if ev.continued and (self._cmd_mode is FORWARD or self._cmd_mode is CAPTURE):
            # Part of this command already went upstream: end it there.
            self.io.to_upstream(b"\r\n")
            self._cmd_mode = DISCARD if ev.skipped_literal else NONE
            return
        head = split_tag_command(ev.head)
        tag = head[0] if head is not None and is_valid_tag(head[0]) else b"*"
        self._cmd_mode = DISCARD if ev.skipped_literal else NONE
        self._local_reply(tag, Reply("BAD", f"Line too long (limit {self.settings.max_line} bytes)", "TOOBIG"))

    # -- ID: the client's address for upstream --------------------------------------------
    def _send_own_id(self, address: ClientAddress) -> None:
        """Before the first login: tell upstream the client's address (answers swallowed)."""
        tag = self.ledger.next_own_tag(b"PPI")
        self.ledger.sent_own(tag)
        self._id_sent = True
        self.io.to_upstream(id_command(tag, address.id_fields()))

    def _forward_client_id(self, tag: bytes, data: bytes) -> None:
        try:
            command = merged_id_command(data, self.settings.client_address)
        except ParseError as exc:
            self._local_reply(tag, Reply("BAD", f"Invalid arguments: {exc}"))
            return
        self._id_sent = self.settings.client_address is not None
        self.ledger.sent(tag)
        self.io.to_upstream(command)


ROUTES: dict[bytes, Callable[[ClientCommands, Line], None]] = {
    b"LOGIN": ClientCommands._route_login,
    b"AUTHENTICATE": ClientCommands._route_login,
    b"STARTTLS": ClientCommands._route_starttls,
    b"COMPRESS": ClientCommands._route_compress,
    b"ID": ClientCommands._route_id,
}


Route = Callable[[ClientCommands, Line], None]


@functools.cache
def routes_for(observed: frozenset[bytes]) -> dict[bytes, Route]:
    """:data:`ROUTES` plus the commands extensions observe (one table lookup per command, as before)."""
    routes: dict[bytes, Route] = dict.fromkeys(observed, ClientCommands._route_observed)
    routes.update(ROUTES)  # the proxy's own handling of a command comes first
    return routes


def guess_tag(line: bytes) -> bytes:
    """The tag of a malformed command when it is a valid tag, else ``*``."""
    word = line.split(b" ", 1)[0].strip()
    return word if is_valid_tag(word) else b"*"
