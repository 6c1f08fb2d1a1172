"""TLS on a session's upstream leg: the ``ssl`` module over ``ssl.MemoryBIO``, between Twisted's TCP and the session.

Why not Twisted's ``startTLS`` (pyOpenSSL) there, as on the client-facing leg:

- memory: a pyOpenSSL client connection costs ~34 KB (the OpenSSL that the
  ``cryptography`` wheel bundles), an ``ssl.SSLObject`` over two MemoryBIOs
  ~22-25 KB (the system's OpenSSL, the one the watchers use);
- resumption: every upstream connection offers the session an earlier one
  with the same server got (the watchers' :class:`~pushproxy.watch.tlsbio.SessionCache`),
  so a client login costs the upstream a resumed handshake, not a full one,
  and a resumed connection shares the server's parsed certificate instead of
  holding its own.

Verification is the watchers' context (:func:`~pushproxy.watch.connect.make_tls_context`):
the system's roots or ``upstream.ca_file`` alone, host name checked against
``upstream.server_name`` (or ``host``), TLS 1.2 at least; ``verify: false``
turns both checks off.  A failed handshake ends the connection with its
reason, as a refused TCP connection does.

:class:`UpstreamTLS` becomes the TCP transport's protocol and the upstream
protocol's transport; the session's writes before the handshake is done wait
for it.  Ciphertext takes the proxy's immediate write path
(:func:`pushproxy.proxy.transport.send_ciphertext`); each socket read's
records are delivered inside one gathering of the client's outbox.
"""

from __future__ import annotations

import ssl
from typing import Any

from twisted.internet import error
from twisted.python.failure import Failure

from pushproxy.proxy import transport as tx
from pushproxy.watch.tlsbio import ClientTLS

__all__ = ["UpstreamTLS"]


class UpstreamTLS:
    """A client TLS connection: Twisted's TCP transport ``raw`` below, protocol ``app`` above."""

    def __init__(
        self, raw: Any, app: Any, ctx: ssl.SSLContext, server_name: str, key: tuple[str, int, str], out: tx.Outbox
    ) -> None:
        self._raw = raw
        self._app = app
        self._out_box = out  # the client's: what one socket read releases leaves in one write
        self._tls = ClientTLS(ctx, server_name, key)
        self._pending: list[bytes] = []  # the session's writes before the handshake is done
        self._done = False
        self._closed = False
        self._reason: Failure | None = None  # why this layer ended the connection (a TLS error)
        tx.interpose(raw, self, app)
        self._step_handshake()

    # ------------------------------------------------------------------ below: the TCP transport's protocol

    def dataReceived(self, data: bytes) -> None:
        self._tls.receive(data)
        if not self._done:
            self._step_handshake()
        if self._done:
            self._read()

    def connectionLost(self, reason: Failure) -> None:
        self._closed = True
        self._app.connectionLost(self._reason or reason)

    # ------------------------------------------------------------------ TLS

    def _step_handshake(self) -> None:
        try:
            self._done = self._tls.handshake()
        except (ssl.SSLError, OSError) as exc:
            self._flush()
            self._fail(f"TLS handshake with upstream failed: {exc}")
            return
        if self._done:
            pending, self._pending = self._pending, []
            for data in pending:
                self._tls.write(data)
        self._flush()

    def _fail(self, why: str) -> None:
        self._closed = True
        self._reason = Failure(error.ConnectionLost(why))
        self._raw.abortConnection()

    def _read(self) -> None:
        out = self._out_box
        out.gather()
        try:
            while not self._closed:
                try:
                    chunk = self._tls.read()
                except (ssl.SSLError, OSError) as exc:
                    self._fail(f"TLS error from upstream: {exc}")
                    break
                if chunk is None:
                    break
                if not chunk:  # the server's close_notify
                    self.loseConnection()
                    break
                self._app.dataReceived(chunk)
        finally:
            out.flush()
        self._flush()

    def _flush(self) -> None:
        if self._raw.connected:
            ciphertext = self._tls.outgoing()
            if ciphertext:
                tx.send_ciphertext(self._raw, ciphertext)

    # ------------------------------------------------------------------ above: the upstream protocol's transport

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._done:
            self._pending.append(data)
            return
        self._tls.write(data)
        self._flush()

    def writeSequence(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def loseConnection(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._done:
            self._tls.close_notify()
            self._flush()
        self._raw.loseConnection()

    def abortConnection(self) -> None:
        self._closed = True
        self._raw.abortConnection()

    @property
    def connected(self) -> bool:
        return bool(self._raw.connected)

    @property
    def session_reused(self) -> bool:
        return self._done and self._tls.session_reused

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._raw.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._raw.unregisterProducer()

    def pauseProducing(self) -> None:
        self._raw.pauseProducing()

    def resumeProducing(self) -> None:
        self._raw.resumeProducing()

    def stopProducing(self) -> None:
        self._raw.stopProducing()

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self._raw.setTcpKeepAlive(enabled)

    def getPeer(self) -> Any:
        return self._raw.getPeer()

    def getHost(self) -> Any:
        return self._raw.getHost()
