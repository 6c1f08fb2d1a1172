"""Where a session stands: the phases of its state machine (the session alone changes them)."""

from __future__ import annotations

from enum import Enum


class Phase(Enum):
    """In every phase but RELAYING the client's commands wait in the session's queue."""

    CONNECTING = "connecting"  # upstream's greeting (and STARTTLS upstream) not through yet
    RELAYING = "relaying"  # the client's commands are read and routed as they come
    AWAITING_LOGIN = "awaiting-login"  # a command came during a login: it waits for the outcome or a "+"
    AWAITING_DRAIN = "awaiting-drain"  # a command waits until every earlier one has its tagged response
    ANSWERING = "answering"  # the proxy computes an answer itself (an extension's handler runs)
    PENALTY = "penalty"  # a failed login's NO is held back for the client IP's auth penalty
    CLOSED = "closed"
