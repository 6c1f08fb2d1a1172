"""The protocol-level rules of a session, in one place: what is in flight, who is logged in.

- Responses are matched to commands **in order**: a tagged response answers the
  oldest command in flight.  Plain commands that upstream answers out of order
  are found by tag further in; a login and the proxy's own commands never are.
- LOGIN / AUTHENTICATE are accepted only in the not-authenticated state, one at
  a time, and forwarded only when nothing else is in flight: the next tagged
  response from upstream is then the login's answer, whatever tags the client
  chose.  Commands after it wait for its outcome.
- The identity changes in exactly one place, :meth:`CommandLedger.settle_login`:
  on the tagged ``OK`` matched to a login sent in the not-authenticated state
  (or at a ``PREAUTH`` greeting, :meth:`CommandLedger.preauthenticated`).
- Inside a login exchange untagged responses are kept (:meth:`CommandLedger.hold_untagged`)
  until its outcome: a capability list must describe the state the exchange ends in.
"""

from __future__ import annotations

from collections import deque

from pushproxy.extensions.base import Reply
from pushproxy.imap.capabilities import ConnectionFacts
from pushproxy.imap.parse import StatusResponse

LOGIN_COMMANDS = frozenset({b"LOGIN", b"AUTHENTICATE"})
MAX_HELD_UNTAGGED = 64  # untagged lines kept back during a login exchange


class Pending:
    """A command forwarded upstream and awaiting its tagged response."""

    __slots__ = ("login", "observed", "own", "tag")

    def __init__(self, tag: bytes, *, login: bool = False, own: bool = False, observed: bytes | None = None) -> None:
        self.tag = tag
        self.login = login  # LOGIN / AUTHENTICATE
        self.own = own  # sent by the proxy itself: its responses are swallowed
        self.observed = observed  # its name, when an extension wants to hear of its OK


class CommandLedger:
    """Commands in flight upstream, in the order they were sent."""

    def __init__(self) -> None:
        self.inflight: deque[Pending] = deque()
        self.login: Pending | None = None  # the LOGIN / AUTHENTICATE in flight
        self.own_in_flight = 0
        self._own_counter = 0
        # A login or an own command is in flight: untagged responses need a look.
        # (One attribute, read for every untagged line on the relay path.)
        self.special = False
        self.held: list[bytes] = []  # untagged responses of the login exchange, rewritten at its end

    def __bool__(self) -> bool:
        return bool(self.inflight)

    def next_own_tag(self, prefix: bytes) -> bytes:
        self._own_counter += 1
        return prefix + b"%d" % self._own_counter

    # -- the rules ------------------------------------------------------------------
    @staticmethod
    def login_refusal(facts: ConnectionFacts) -> Reply | None:
        """Why a LOGIN / AUTHENTICATE must not be forwarded now (None: it may)."""
        if facts.authenticated:
            return Reply("BAD", "Already authenticated")
        if not facts.client_tls and not facts.plaintext_auth_allowed:
            return Reply("NO", "Plaintext authentication disallowed on non-secure connections", "PRIVACYREQUIRED")
        return None

    def sent(self, tag: bytes, *, login: bool = False, observed: bytes | None = None) -> Pending:
        pending = Pending(tag, login=login, observed=observed)
        if login:
            assert self.login is None, "one login at a time"
            self.login = pending
            self.special = True
        self.inflight.append(pending)
        return pending

    def sent_own(self, tag: bytes) -> None:
        self.inflight.append(Pending(tag, own=True))
        self.own_in_flight += 1
        self.special = True

    def match(self, tag: bytes) -> Pending | None:
        """The in-flight command a tagged response answers, taken off the ledger."""
        inflight = self.inflight
        if not inflight:
            return None
        head = inflight[0]
        if head.tag == tag:
            pending = inflight.popleft()
        else:
            for candidate in inflight:
                if candidate.tag == tag and not (candidate.login or candidate.own):
                    inflight.remove(candidate)
                    return candidate
            return None
        if pending.own:
            self.own_in_flight -= 1
        if pending is self.login:
            self.login = None
        self.special = self.login is not None or self.own_in_flight > 0
        return pending

    def hold_untagged(self, line: bytes) -> bool:
        """Keep an untagged line of the login exchange in flight; False when no more are kept."""
        if len(self.held) < MAX_HELD_UNTAGGED:
            self.held.append(line)
            return True
        return False

    def take_held(self) -> list[bytes]:
        """The untagged lines kept so far (the ledger forgets them)."""
        held, self.held = self.held, []
        return held

    @staticmethod
    def preauthenticated(facts: ConnectionFacts) -> None:
        """Upstream greeted with PREAUTH: the session starts logged in."""
        facts.authenticated = True

    @staticmethod
    def settle_login(pending: Pending, status: StatusResponse, facts: ConnectionFacts) -> bool:
        """The one place identity changes; True when ``pending`` just logged the session in."""
        if pending.login and status.status == b"OK" and not facts.authenticated:
            facts.authenticated = True
            return True
        return False
