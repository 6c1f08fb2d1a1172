"""The upstream side of a running session: greeting, responses, the outcome of a login.

Untagged responses and literals are relayed as they come (capability lists
rewritten); a tagged response is matched to its command in the ledger, in
order, and only the tagged OK of a login sent in the not-authenticated state
logs the session in.  A failed login's NO is held back for the client IP's
auth penalty.
"""

from __future__ import annotations

import asyncio
import logging

from pushproxy.accounts import normalise_account
from pushproxy.imap.capabilities import rewrite_atoms
from pushproxy.imap.framing import Line
from pushproxy.imap.parse import StatusResponse, parse_status_response
from pushproxy.proxy.capture import credentials_of
from pushproxy.proxy.handshake import Action, has_capability_code, rewrite_code, rewrite_untagged
from pushproxy.proxy.ledger import Pending
from pushproxy.proxy.own import SessionContextImpl
from pushproxy.proxy.state import CommandMode, SessionState

log = logging.getLogger("pushproxy.session")

MAX_HELD_UNTAGGED = 64  # untagged lines kept back during a login exchange
# "* CAPABILITY ..." or "* OK/NO/BYE [CAPABILITY ...]": the only untagged lines rewritten.
_MAY_CARRY_CAPABILITIES = frozenset({b"CAP", b"OK ", b"NO ", b"BYE"})


class UpstreamResponses(SessionState):
    def _handshake_line(self, line: bytes) -> None:
        step = self.handshake.line(line)
        action = step.action
        if action is Action.SEND:
            self.io.to_upstream(step.data)
        elif action is Action.START_TLS_AND_SEND:
            self.io.start_upstream_tls()
            self.io.to_upstream(step.data)
        elif action is Action.FATAL:
            self._fatal(step.text, "UNAVAILABLE")
        elif action is Action.BYE:
            self.io.to_client(step.data)
            self.close()
        elif action is Action.READY:
            if step.preauth:
                self.facts.authenticated = True
            self._send_greeting(step.data, step.status)

    def greet(self, capabilities: list[bytes] | None) -> None:
        """Greet the client from the proxy; upstream is opened at the client's first bytes."""
        self._greeted = True
        self._upstream_requested = False
        code = b""
        if capabilities:
            code = b"[CAPABILITY " + b" ".join(rewrite_atoms(capabilities, self.policy, self.facts)) + b"] "
        self.io.to_client(b"* OK " + code + b"Proxy ready\r\n")

    def _send_greeting(self, line: bytes, status: StatusResponse | None) -> None:
        if status is not None and has_capability_code(status):
            if self._on_upstream_capabilities is not None and status.status == b"OK":
                self._on_upstream_capabilities(status.code.split()[1:])  # type: ignore[union-attr]
            line = rewrite_code(line, status, self.policy, self.facts)
        if not self._greeted:
            self.io.to_client(line)
        self._held = False
        self._pump()

    def _upstream_line(self, ev: Line) -> None:
        line = ev.data
        first = line[:1]
        if first == b"*":  # the common case first: this runs for every untagged line
            ledger = self.ledger
            if ledger.special:
                if ledger.own_in_flight and ledger.inflight[0].own:
                    return  # a response to the proxy's own command (ID)
                login = ledger.login
                if login is not None:
                    # Inside a login exchange a capability list must describe the state
                    # the exchange ends in: keep it until the tagged response.
                    if ev.literal is None and len(login.held) < MAX_HELD_UNTAGGED:
                        login.held.append(line)
                        return
                    self._release_login_untagged(login)
            if line[2:5].upper() in _MAY_CARRY_CAPABILITIES:
                line = rewrite_untagged(line, self.policy, self.facts)
            self._out_client.append(line)
            return
        if first == b"+":
            login = self.ledger.login
            if login is not None and login.held:
                self._release_login_untagged(login)
            if self._awaiting_literal is not None:
                self._awaiting_literal = None
            else:
                self._continuation_credits += 1
                if self._held_by_login:
                    # The client's answer to this "+" waits in the queue.
                    self._held_by_login = False
                    self._held = False
            self._out_client.append(line)
            return
        status = parse_status_response(line)
        if status is None:
            self._out_client.append(line)
            return
        self._tagged_from_upstream(status, line)

    def _release_login_untagged(self, login: Pending) -> None:
        out = self._out_client
        for line in login.held:
            out.append(rewrite_untagged(line, self.policy, self.facts))
        login.held.clear()

    def _tagged_from_upstream(self, status: StatusResponse, line: bytes) -> None:
        ledger = self.ledger
        login_in_flight = ledger.login is not None
        pending = ledger.match(status.tag)
        if pending is None:
            if login_in_flight:
                # Nothing but the login is in flight: upstream is not speaking IMAP to us.
                log.warning("session %s: upstream answered a command it was not sent", self.session_id)
                self._fatal("Proxy lost track of the upstream stream", "UNAVAILABLE")
                return
            self._out_client.append(line)  # answers nothing in flight: pass on, change nothing
            return
        if pending.own:
            return
        if pending.observed is not None and status.status == b"OK":
            self._observed_ok(pending.observed)
        if self._awaiting_literal is pending:
            # Upstream refused the command before asking for its literal.
            self._awaiting_literal = None
            self.client_framer.cancel_literal()
            if self._cmd_pending is pending:
                self._cmd_mode = CommandMode.DISCARD
        if self._idle is pending:
            self._idle = None
        self._continuation_credits = 0
        logged_in = False
        if pending.login:
            logged_in = ledger.settle_login(pending, status, self.facts)
            if logged_in and pending.capture is not None:
                self._authenticated_by(pending.capture)
            self._release_login_untagged(pending)
            if self._held_by_login:
                self._held_by_login = False
                self._held = False
            if status.status == b"NO":
                self._login_failed()
        if has_capability_code(status):
            if logged_in:
                atoms = status.code.split()[1:]  # type: ignore[union-attr]
                self.upstream_capabilities = frozenset(a.decode("ascii", "replace").upper() for a in atoms)
            line = rewrite_code(line, status, self.policy, self.facts)
        self._out_client.append(line)
        self._drained()

    def _observed_ok(self, name: bytes) -> None:
        """Tell the extensions observing this command of its OK (off the relay: a task each)."""
        self._spawn(self.extensions.command_succeeded(name, SessionContextImpl(self)))  # type: ignore[arg-type]

    def _authenticated_by(self, capture: tuple[str, bytes]) -> None:
        creds = credentials_of(capture)
        if creds is None:
            return
        login, secret = creds
        self.login = login
        self.account = normalise_account(login)
        log.info("session %s: authenticated as %s", self.session_id, self.account)
        self._spawn(self.credentials.logged_in(self.account, login, secret, self.session_id))

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
