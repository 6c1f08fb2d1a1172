"""The response router: the upstream's greeting and each complete line after it, to where it belongs.

Untagged responses are relayed as they come (capability lists rewritten); a
tagged response is matched to its command in the ledger, in order, and only
the tagged OK of a login sent in the not-authenticated state logs the session
in; a failed one counts against the client IP's auth penalty.  What goes to the
client is appended to the session's output lines, which the session writes at
the end of each read; what changes the session's phase (a "+" the client
answers, a login's outcome, a penalty) it is told through :class:`ResponseHost`.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from pushproxy.extensions.base import CredentialSink, SessionContext
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.imap.capabilities import CapabilityPolicy, ConnectionFacts, rewrite_atoms
from pushproxy.imap.framing import Line
from pushproxy.imap.parse import StatusResponse, parse_status_response
from pushproxy.proxy.capture import CredentialCapture
from pushproxy.proxy.handshake import has_capability_code, rewrite_code, rewrite_untagged
from pushproxy.proxy.ledger import CommandLedger, Pending
from pushproxy.proxy.local import LocalAnswers
from pushproxy.proxy.penalty import AuthPenalty
from pushproxy.proxy.routing import CommandRouter
from pushproxy.proxy.session_io import SessionEvents

log = logging.getLogger("pushproxy.session")

# "* CAPABILITY ..." or "* OK/NO/BYE [CAPABILITY ...]": the only untagged lines rewritten.
_MAY_CARRY_CAPABILITIES = frozenset({b"CAP", b"OK ", b"NO ", b"BYE"})


class ResponseHost(Protocol):
    """What the response router tells its session."""

    def fatal(self, text: str, code: str | None = None) -> None: ...

    def login_wait_over(self) -> None:
        """Commands held behind the login in flight may go: it has its outcome, or upstream sent a "+"."""

    def penalise(self, delay: float) -> None:
        """Hold back the failed login's NO, and all after it, for ``delay`` seconds."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` off the relay (its failure is logged)."""


class ResponseRouter:
    def __init__(
        self,
        host: ResponseHost,
        out: list[bytes],
        ledger: CommandLedger,
        router: CommandRouter,
        local: LocalAnswers,
        capture: CredentialCapture,
        facts: ConnectionFacts,
        *,
        session_id: str,
        extensions: ExtensionManager,
        context: SessionContext,
        credentials: CredentialSink,
        penalty: AuthPenalty | None = None,
        client_ip: str = "",
        events: SessionEvents,
    ) -> None:
        self._host = host
        self._out = out
        self._ledger = ledger
        self._router = router
        self._local = local
        self._capture = capture
        self._policy = CapabilityPolicy(
            add_pre_auth=extensions.pre_auth_capabilities,
            add_post_auth=extensions.post_auth_capabilities,
            restrict_sasl=bool(extensions),
        )
        self._facts = facts
        self._session_id = session_id
        self._extensions = extensions
        self._context = context
        self._credentials = credentials
        self._penalty = penalty
        self._client_ip = client_ip
        self._events = events
        self.upstream_capabilities: frozenset[str] = frozenset()  # as upstream listed them at login

    def proxy_greeting(self, capabilities: list[bytes] | None) -> bytes:
        """The proxy's own greeting, with the upstream's capabilities learnt before (rewritten)."""
        code = b""
        if capabilities:
            code = b"[CAPABILITY " + b" ".join(rewrite_atoms(capabilities, self._policy, self._facts)) + b"] "
        return b"* OK " + code + b"Proxy ready\r\n"

    def greeting(self, line: bytes, status: StatusResponse | None) -> bytes:
        """The upstream's greeting (after the handshake), rewritten; its capabilities are remembered."""
        if status is not None and has_capability_code(status):
            if status.status == b"OK":
                self._events.upstream_capabilities(status.code.split()[1:])  # type: ignore[union-attr]
            line = rewrite_code(line, status, self._policy, self._facts)
        return line

    def line(self, ev: Line) -> None:
        line = ev.data
        first = line[:1]
        if first == b"*":  # the common case first: this runs for every untagged line
            ledger = self._ledger
            if ledger.special:
                if ledger.own_in_flight and ledger.inflight[0].own:
                    return  # a response to the proxy's own command (ID)
                if ledger.login is not None:
                    # Inside a login exchange a capability list must describe the state
                    # the exchange ends in: keep it until the tagged response.
                    if ev.literal is None and ledger.hold_untagged(line):
                        return
                    self.release_held()
            if line[2:5].upper() in _MAY_CARRY_CAPABILITIES:
                line = rewrite_untagged(line, self._policy, self._facts)
            self._out.append(line)
            return
        if first == b"+":
            if self._ledger.held:
                self.release_held()
            if self._router.continuation():
                self._host.login_wait_over()  # the client's answer to this "+" may wait in the queue
            self._out.append(line)
            return
        status = parse_status_response(line)
        if status is None:
            self._out.append(line)
            return
        self._tagged(status, line)

    def release_held(self) -> None:
        """The untagged lines of the login exchange go on (rewritten for the state it ends in)."""
        out = self._out
        for line in self._ledger.take_held():
            out.append(rewrite_untagged(line, self._policy, self._facts))

    def _tagged(self, status: StatusResponse, line: bytes) -> None:
        ledger = self._ledger
        login_in_flight = ledger.login is not None
        pending = ledger.match(status.tag)
        if pending is None:
            if login_in_flight:
                # Nothing but the login is in flight: upstream is not speaking IMAP to us.
                log.warning("session %s: upstream answered a command it was not sent", self._session_id)
                self._host.fatal("Proxy lost track of the upstream stream", "UNAVAILABLE")
                return
            self._out.append(line)  # answers nothing in flight: pass on, change nothing
            return
        if pending.own:
            return
        if pending.observed is not None and status.status == b"OK":
            self._observed_ok(pending.observed)
        self._router.answered(pending)
        logged_in = pending.login and self._login_settled(pending, status)
        if has_capability_code(status):
            if logged_in:
                atoms = status.code.split()[1:]  # type: ignore[union-attr]
                self.upstream_capabilities = frozenset(a.decode("ascii", "replace").upper() for a in atoms)
            line = rewrite_code(line, status, self._policy, self._facts)
        self._out.append(line)
        self._local.drained()

    def _login_settled(self, pending: Pending, status: StatusResponse) -> bool:
        logged_in = CommandLedger.settle_login(pending, status, self._facts)
        creds = self._capture.settle(logged_in)
        if creds is not None:
            account = self._capture.account or ""
            log.info("session %s: authenticated as %s", self._session_id, account)
            self._host.spawn(self._credentials.logged_in(account, creds[0], creds[1], self._session_id))
        self.release_held()
        self._host.login_wait_over()
        if status.status == b"NO":
            self._login_failed()
        elif logged_in:
            self._events.logged_in()
        return logged_in

    def _login_failed(self) -> None:
        self._events.auth_failed()
        if self._penalty is None or not self._client_ip:
            return
        delay = self._penalty.delay(self._client_ip)
        self._penalty.failed(self._client_ip)
        if delay > 0:
            self._host.penalise(delay)

    def _observed_ok(self, name: bytes) -> None:
        """Tell the extensions observing this command of its OK (off the relay: a task each)."""
        self._host.spawn(self._extensions.command_succeeded(name, self._context))
