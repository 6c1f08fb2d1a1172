"""Listening ports that survive running out of file descriptors.

Twisted's own answer to ``EMFILE`` from ``accept()`` is to release its one
reserved descriptor, accept every pending connection and close it at once
(the clients see a bare reset), and then to try again on the next reactor
pass: while descriptors stay short the listener spins and every new client is
reset.  :class:`GuardedPort` instead

- answers the client that found no descriptor with ``* BYE [UNAVAILABLE]``
  when the listener speaks plain IMAP (a TLS listener cannot: the handshake
  needs the descriptor it does not have; that client's connection is closed),
  using a descriptor of its own kept in reserve for exactly this;
- stops accepting for :data:`PAUSE` seconds, so the connections behind it wait
  in the kernel's backlog instead of being reset, and are served once
  sessions have ended;
- logs one WARNING per episode (not per connection) and counts each refusal
  (``pushproxy_connections_refused_total{reason="fd_limit"}``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

log = logging.getLogger("pushproxy.server")

__all__ = ["BYE_UNAVAILABLE", "PAUSE", "GuardedPort", "listen"]

PAUSE = 1.0  # seconds without accepting after an EMFILE
BYE_UNAVAILABLE = b"* BYE [UNAVAILABLE] Server busy (out of file descriptors), try again shortly\r\n"
_WARN_EVERY = 60.0  # at most one WARNING a minute while the shortage lasts
_SHORT = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _Reserve:
    """One descriptor held back, released to accept (and refuse) a client when none is left."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.take()

    def take(self) -> None:
        if self._fd is None:
            with contextlib.suppress(OSError):
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def release(self) -> bool:
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True


class _AcceptGuard:
    """The listening socket, as the port sees it: ``accept()`` turns a descriptor shortage into a pause."""

    def __init__(self, sock: socket.socket, on_short: Callable[[int], None]) -> None:
        self._sock = sock
        self._on_short = on_short

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return self._sock.accept()
        except OSError as exc:
            if exc.errno not in _SHORT:
                raise
            self._on_short(exc.errno)
            # What Twisted's accept loop takes for "no more clients": it stops quietly.
            raise BlockingIOError(errno.EAGAIN, "paused: out of file descriptors") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class GuardedPort(tcp.Port):
    """A Twisted TCP port that pauses accepting on EMFILE (see the module doc)."""

    def __init__(self, *args: Any, greets_plain: bool, on_refused: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._greets_plain = greets_plain
        self._on_refused = on_refused
        self._reserve = _Reserve()
        self._resume: Any = None
        self._warned_at = -_WARN_EVERY
        self.pauses = 0  # for tests and diagnostics

    def startListening(self) -> None:
        super().startListening()
        self._listening: socket.socket = self.socket
        self.socket = _AcceptGuard(self.socket, self._short)

    def _short(self, err: int) -> None:
        self.pauses += 1
        self._refuse_one()
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(
                "out of file descriptors (%s) accepting on port %s: pausing accepts %.1f s at a time "
                "(raise LimitNOFILE / ulimit -n or lower session.max_connections)",
                errno.errorcode.get(err, err),
                self.getHost().port,
                PAUSE,
            )
        if self._resume is None or not self._resume.active():
            self.stopReading()
            self._resume = self.reactor.callLater(PAUSE, self._restart)  # type: ignore[attr-defined]

    def _refuse_one(self) -> None:
        if not self._reserve.release():
            return
        try:
            sock: socket.socket | None = self._listening.accept()[0]
        except OSError:
            sock = None
        if sock is not None:
            with contextlib.suppress(OSError):
                if self._greets_plain:
                    sock.setblocking(False)
                    sock.send(BYE_UNAVAILABLE)
            sock.close()
            self._on_refused()
        self._reserve.take()

    def _restart(self) -> None:
        self._resume = None
        if self.connected:
            self.startReading()

    def connectionLost(self, reason: Any) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        self._reserve.release()
        super().connectionLost(reason)


def listen(
    reactor: Any,
    port: int,
    factory: Any,
    *,
    interface: str,
    tls_options: Any = None,
    on_refused: Callable[[], None],
    backlog: int = 511,
) -> GuardedPort:
    """``reactor.listenTCP`` / ``listenSSL``, with a :class:`GuardedPort`."""
    if tls_options is not None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(tls_options, False, factory)
    p = GuardedPort(
        port,
        factory,
        backlog,
        interface,
        reactor,
        greets_plain=tls_options is None,
        on_refused=on_refused,
    )
    p.startListening()
    return p
