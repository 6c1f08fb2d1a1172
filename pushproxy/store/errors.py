"""Store faults: what went wrong, in words a client and an admin can act on, said once per episode.

A store operation that cannot be done now raises :class:`StoreUnavailable`
with a :attr:`~StoreUnavailable.reason`, one of :data:`REASONS`.  The reason
is what an IMAP client is told (``NO [UNAVAILABLE] store full``) and the
``reason`` label of ``pushproxy_store_errors_total`` (:data:`REASON_LABELS`);
the exception's text has the back end's detail, for the log.

:class:`FaultEpisodes` turns many failures into one episode: one WARNING
when the store starts failing for a reason (or the reason changes), one
INFO when an operation succeeds again, and the counter for every failure.
The back ends report to it; callers that catch :class:`StoreUnavailable`
log nothing more than DEBUG for it.
"""

from __future__ import annotations

import logging
import time

from pushproxy import metrics

__all__ = [
    "REASONS",
    "REASON_LABELS",
    "STORE_BUSY",
    "STORE_DAMAGED",
    "STORE_FULL",
    "STORE_READ_ONLY",
    "STORE_UNAVAILABLE",
    "STORE_UNREACHABLE",
    "FaultEpisodes",
    "StoreUnavailable",
]

STORE_FULL = "store full"  # the file system (or a quota) has no room for the write
STORE_READ_ONLY = "store read-only"  # the file system went read-only (or the file cannot be written)
STORE_BUSY = "store busy"  # another process held the lock past the busy timeout, or a deadline passed
STORE_UNREACHABLE = "store unreachable"  # a database server (PostgreSQL) does not answer
STORE_DAMAGED = "store damaged"  # the database file is corrupt
STORE_UNAVAILABLE = "store unavailable"  # anything else transient (an I/O error, the store not open)

# reason -> the metric label value (Prometheus label values without spaces)
REASON_LABELS: dict[str, str] = {
    STORE_FULL: "full",
    STORE_READ_ONLY: "read_only",
    STORE_BUSY: "busy",
    STORE_UNREACHABLE: "unreachable",
    STORE_DAMAGED: "damaged",
    STORE_UNAVAILABLE: "unavailable",
}
REASONS = tuple(REASON_LABELS)


class StoreUnavailable(Exception):
    """The store cannot do this right now (transient); :attr:`reason` says why, in client-safe words.

    ``detail`` (the exception's text) is for the log: the back end's own
    message, never a secret.
    """

    def __init__(self, detail: str = "", reason: str = STORE_UNAVAILABLE) -> None:
        super().__init__(detail or reason)
        self.reason = reason if reason in REASON_LABELS else STORE_UNAVAILABLE

    @property
    def label(self) -> str:
        return REASON_LABELS[self.reason]


class FaultEpisodes:
    """One log line per episode of store failures, a counter per failure.

    ``failed`` for every failed operation, ``succeeded`` after one that
    worked (for the embedded store: a committed write, since reads go on
    working on a full or read-only disk).
    """

    def __init__(self, where: str, logger: logging.Logger) -> None:
        self._where = where
        self._log = logger
        self._reason: str | None = None
        self._since = 0.0
        self._failures = 0

    @property
    def reason(self) -> str | None:
        """The reason of the episode going on, or None."""
        return self._reason

    def failed(self, exc: StoreUnavailable) -> None:
        metrics.STORE_ERRORS.labels(reason=exc.label).inc()
        self._failures += 1
        if exc.reason == self._reason:
            return
        if self._reason is None:
            self._since = time.monotonic()
        self._reason = exc.reason
        self._log.warning(
            "%s: %s (%s); the relay goes on, registrations are answered NO [UNAVAILABLE] %s until it passes",
            self._where,
            exc.reason,
            exc,
            exc.reason,
        )

    def succeeded(self) -> None:
        if self._reason is None:
            return
        self._log.info(
            "%s: working again after %.0f s of '%s' (%d failed operation(s))",
            self._where,
            time.monotonic() - self._since,
            self._reason,
            self._failures,
        )
        self._reason = None
        self._failures = 0
