"""The upstream side before the session starts, and capability rewriting.

Handshake: greeting -> [STARTTLS -> CAPABILITY] -> ready.  :class:`UpstreamHandshake`
is sans-IO: each greeting-phase line in, one :class:`Step` out, which the session
carries out.  Capability lists reach the client in greetings, untagged
``* CAPABILITY`` and ``[CAPABILITY ...]`` codes; :func:`rewrite_untagged` and
:func:`rewrite_code` apply the proxy's policy to each.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pushproxy.imap.capabilities import (
    CapabilityPolicy,
    ConnectionFacts,
    is_capability_data,
    rewrite_capability_code,
    rewrite_capability_data,
)
from pushproxy.imap.parse import StatusResponse, parse_status_response


class UpstreamState(Enum):
    GREETING = "greeting"
    STARTTLS = "starttls"  # our STARTTLS sent, awaiting its answer
    CAPABILITY = "capability"  # TLS up, our CAPABILITY sent
    READY = "ready"


class Action(Enum):
    NONE = "none"  # nothing to do (untagged chatter)
    SEND = "send"  # send ``data`` upstream
    START_TLS_AND_SEND = "start-tls-and-send"  # start TLS upstream, then send ``data``
    READY = "ready"  # greet the client with ``data`` (``status`` parsed); preauth when PREAUTH
    BYE = "bye"  # upstream said BYE: pass ``data`` on and close
    FATAL = "fatal"  # close with ``* BYE`` and the reason in ``text``


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    data: bytes = b""
    text: str = ""
    status: StatusResponse | None = None
    preauth: bool = False


_NOTHING = Step(Action.NONE)


class UpstreamHandshake:
    def __init__(self, security: str) -> None:
        self.security = security  # none | starttls | tls
        self.state = UpstreamState.GREETING
        self.ready = False  # state is READY (a plain attribute: read for every upstream line)
        self._greeting_text = b""
        self._caps: list[bytes] = []

    def line(self, line: bytes) -> Step:
        status = parse_status_response(line)
        state = self.state
        if state is UpstreamState.GREETING:
            return self._greeting(line, status)
        if state is UpstreamState.STARTTLS:
            if status is None or status.tag != b"PP0":
                return _NOTHING  # untagged chatter before the answer
            if status.status != b"OK":
                return Step(Action.FATAL, text="Upstream refused STARTTLS")
            self.state = UpstreamState.CAPABILITY
            return Step(Action.START_TLS_AND_SEND, b"PP1 CAPABILITY\r\n")
        if state is UpstreamState.CAPABILITY:
            if is_capability_data(line):
                self._caps = line.rstrip(b"\r\n").split()[2:]
                return _NOTHING
            if status is None or status.tag != b"PP1":
                return _NOTHING
            if status.status != b"OK":
                return Step(Action.FATAL, text="Upstream refused CAPABILITY")
            self.state = UpstreamState.READY
            self.ready = True
            text = self._greeting_text or b"ready"
            greeting = b"* OK [CAPABILITY " + b" ".join(self._caps) + b"] " + text + b"\r\n"
            return Step(Action.READY, greeting, status=parse_status_response(greeting))
        return _NOTHING

    def _greeting(self, line: bytes, status: StatusResponse | None) -> Step:
        if status is None or status.tag != b"*" or status.status not in (b"OK", b"PREAUTH", b"BYE"):
            return Step(Action.FATAL, text="Upstream server sent an invalid greeting")
        if status.status == b"BYE":
            return Step(Action.BYE, line)
        if self.security == "starttls":
            if status.status == b"PREAUTH":
                return Step(Action.FATAL, text="Upstream greeted with PREAUTH; STARTTLS impossible")
            self._greeting_text = line[status.code_end + 1 if status.code_end > 0 else 5 :].rstrip(b"\r\n")
            self.state = UpstreamState.STARTTLS
            return Step(Action.SEND, b"PP0 STARTTLS\r\n")
        self.state = UpstreamState.READY
        self.ready = True
        return Step(Action.READY, line, status=status, preauth=status.status == b"PREAUTH")


def has_capability_code(status: StatusResponse) -> bool:
    return status.code is not None and status.code[:11].upper() == b"CAPABILITY "


def rewrite_code(line: bytes, status: StatusResponse, policy: CapabilityPolicy, facts: ConnectionFacts) -> bytes:
    """A status line with a ``[CAPABILITY ...]`` code, rewritten."""
    return rewrite_capability_code(line, status.code_start, status.code_end, policy, facts)


def rewrite_untagged(line: bytes, policy: CapabilityPolicy, facts: ConnectionFacts) -> bytes:
    """An untagged response, with any capability list in it rewritten."""
    if is_capability_data(line):
        return rewrite_capability_data(line, policy, facts)
    if line[2:5] in (b"OK ", b"NO ", b"BYE") and b"[CAPABILITY " in line[:20].upper():
        st = parse_status_response(line)
        if st is not None and st.code is not None:
            return rewrite_capability_code(line, st.code_start, st.code_end, policy, facts)
    return line
