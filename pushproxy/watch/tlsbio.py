"""TLS for the watchers' upstream connections, on any loop: OpenSSL over ``ssl.MemoryBIO``.

Why not the loop's own TLS (``create_connection(ssl=...)``, ``start_tls``):

- resumption: every connection offers a session an earlier handshake with
  the same server (host, port, server name, context) got, a TLS 1.3 ticket or
  a TLS 1.2 session, so the upstream can resume instead of a full handshake
  (:class:`SessionCache`).  Neither loop can: uvloop's ``create_connection``
  and ``start_tls`` take no session.  A resumed handshake skips parsing and
  verifying the server's certificate chain: it costs the client about 0.35
  ms of CPU against 0.85 ms (OpenSSL 3.0, ECDSA P-256), and a connection
  resumed shares the server's certificate with the session it came from
  instead of holding a parsed copy of its own;
- memory: asyncio's SSL protocol allocates a 256 KiB read buffer per
  connection; uvloop's is smaller, but measured with the same watcher logins
  (bench/tls_floor.py, bench/scale.py) OpenSSL over MemoryBIO on uvloop's plain
  TCP transport costs ~25 KB a connection against ~37 KB with uvloop's TLS;
- a handshake cut short by a stop is just an aborted TCP connection.

Certificate and host name checks are the context's, as strict as with the
loop's TLS: a session is only offered to the server (host, port, SNI) and
through the context it was verified for; a server that does not resume it
gets a full handshake, verified as always.

:class:`TLSBioTransport` is the TCP connection's protocol and the IMAP
protocol's transport.  :func:`connect_tls` opens a connection with implicit
TLS, :func:`start_tls` upgrades a plain one (STARTTLS).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import weakref
from typing import Any, cast

__all__ = ["ClientTLS", "SessionCache", "TLSBioTransport", "connect_tls", "start_tls"]


_READ = 16384  # one TLS record at most per read call


class SessionCache:
    """The TLS session to offer per (context, server): taken from one connection, offered by the next ones.

    Taking a session is dear: CPython's ``SSLObject.session`` copies it through
    DER, parsing the server's certificate anew (about 1 ms with OpenSSL 3.0,
    more than a resumed handshake saves), and every connection resumed from
    that copy keeps its certificate alive.  So a connection takes its session
    only when the cache holds none (of a herd opened before any session was
    there, the first to finish), when the server did not resume the one it
    offered (refused, expired, single-use ticket), or when the cached one is
    older than ``REFRESH`` seconds: one copy a minute per server, shared by the
    connections resumed from it.
    """

    REFRESH = 60.0

    _sessions: weakref.WeakKeyDictionary[ssl.SSLContext, dict[tuple[str, int, str], tuple[ssl.SSLSession, float]]]
    _sessions = weakref.WeakKeyDictionary()

    @classmethod
    def get(cls, ctx: ssl.SSLContext, key: tuple[str, int, str]) -> ssl.SSLSession | None:
        entry = cls._sessions.get(ctx, {}).get(key)
        return None if entry is None else entry[0]

    @classmethod
    def wants(cls, ctx: ssl.SSLContext, key: tuple[str, int, str], obj: ssl.SSLObject, offered: bool) -> bool:
        """Whether connection ``obj`` (handshake done; ``offered``: it offered a session) gives the cache its own."""
        entry = cls._sessions.get(ctx, {}).get(key)
        if entry is None or time.monotonic() - entry[1] > cls.REFRESH:
            return True
        return offered and not obj.session_reused  # refused; one that offered none (a herd's first) is not

    @classmethod
    def put(cls, ctx: ssl.SSLContext, key: tuple[str, int, str], session: ssl.SSLSession | None) -> None:
        if session is not None and (session.has_ticket or session.id):
            cls._sessions.setdefault(ctx, {})[key] = (session, time.monotonic())

    @classmethod
    def forget(cls, ctx: ssl.SSLContext, key: tuple[str, int, str]) -> None:
        cls._sessions.get(ctx, {}).pop(key, None)


class ClientTLS:
    """OpenSSL's client side over two MemoryBIOs, with no I/O: ciphertext in, plaintext out and back.

    The one TLS engine of both transports that drive it (the watchers'
    :class:`TLSBioTransport` on asyncio, the sessions' upstream leg on
    Twisted: :mod:`pushproxy.proxy.upstream_tls`): it offers the cached
    session, forgets it when a handshake fails and gives the cache this
    connection's when :meth:`SessionCache.wants` says so.
    """

    def __init__(self, ctx: ssl.SSLContext, server_name: str, key: tuple[str, int, str]) -> None:
        self.ctx = ctx
        self.key = key
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        session = SessionCache.get(ctx, key)
        self._offered = session is not None
        self.ssl = ctx.wrap_bio(self._in, self._out, server_side=False, server_hostname=server_name, session=session)
        self._session_seen = False  # whether this connection's session was considered for the cache

    def receive(self, ciphertext: bytes) -> None:
        self._in.write(ciphertext)

    def receive_eof(self) -> None:
        self._in.write_eof()

    def handshake(self) -> bool:
        """One step of the handshake: whether it is done (False: more from the server is needed).

        Raises ``ssl.SSLError`` / ``OSError`` when it failed; the cached session is forgotten then (a
        refused session must not be offered again)."""
        try:
            self.ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLError, OSError):
            SessionCache.forget(self.ctx, self.key)
            raise
        return True

    def read(self) -> bytes | None:
        """One record's plaintext; None when more ciphertext is needed; b"" once the server closed TLS.

        Raises ``ssl.SSLError`` / ``OSError`` on a TLS error."""
        try:
            chunk = self.ssl.read(_READ)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:  # the server's close_notify (CPython mostly returns b"" instead)
            return b""
        if chunk and not self._session_seen:
            # TLS 1.3 tickets come after the handshake, before the first application data.
            self._session_seen = True
            if SessionCache.wants(self.ctx, self.key, self.ssl, self._offered):
                SessionCache.put(self.ctx, self.key, self.ssl.session)
        return chunk

    def write(self, plaintext: bytes | bytearray | memoryview) -> None:
        self.ssl.write(plaintext)

    def outgoing(self) -> bytes:
        """The ciphertext to send now (b"" when there is none)."""
        return self._out.read() if self._out.pending else b""

    def close_notify(self) -> None:
        """Send close_notify (with :meth:`outgoing`); the server's answer is not awaited."""
        try:
            self.ssl.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass

    @property
    def session_reused(self) -> bool:
        return self.ssl.session_reused


class TLSBioTransport(asyncio.Transport, asyncio.Protocol):
    """A client TLS connection: TCP transport below, ``app`` (an asyncio.Protocol) above."""

    def __init__(
        self,
        app: asyncio.Protocol,
        ctx: ssl.SSLContext,
        server_name: str,
        key: tuple[str, int, str],
        *,
        announce: bool,
    ) -> None:
        super().__init__()
        self._app = app
        self._ctx = ctx
        self._key = key
        self._announce = announce  # call app.connection_made once the handshake is done (implicit TLS)
        self._tls = ClientTLS(ctx, server_name, key)
        self._ssl = self._tls.ssl
        self._raw: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = False

    # ------------------------------------------------------------------ below: the TCP connection's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)  # uvloop's TCPTransport does not subclass it
        self._step_handshake()

    def data_received(self, data: bytes) -> None:
        self._tls.receive(data)
        if not self.handshake.done():
            self._step_handshake()
        if self._established():
            self._read()

    def eof_received(self) -> bool:
        self._tls.receive_eof()
        if not self.handshake.done():
            self._fail_handshake(ConnectionResetError("connection closed during the TLS handshake"))
            return False
        self._read()
        return False  # the TCP transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._established() or not self._announce:
            # The IMAP protocol was told of the connection (or had it in clear text before STARTTLS).
            self._app.connection_lost(exc)
        if not self.handshake.done():
            self._fail_handshake(exc or ConnectionResetError("connection closed during the TLS handshake"))

    def _established(self) -> bool:
        h = self.handshake
        return h.done() and not h.cancelled() and h.exception() is None

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    # ------------------------------------------------------------------ TLS

    def _step_handshake(self) -> None:
        try:
            done = self._tls.handshake()
        except (ssl.SSLError, OSError) as exc:
            self._flush()
            self._fail_handshake(exc)
            return
        self._flush()
        if not done:
            return
        self.handshake.set_result(None)
        if self._announce:
            self._app.connection_made(self)

    def _fail_handshake(self, exc: BaseException) -> None:
        SessionCache.forget(self._ctx, self._key)  # a refused session must not be offered again (also a cut)
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()  # retrieved: the opener may have given up already
        if self._raw is not None:
            self._raw.abort()

    def _read(self) -> None:
        while not self._closed:
            try:
                chunk = self._tls.read()
            except (ssl.SSLError, OSError) as exc:
                self._app.connection_lost(exc)
                self._closed = True
                if self._raw is not None:
                    self._raw.abort()
                break
            if chunk is None:
                break
            if not chunk:  # the server's close_notify
                self._app.eof_received()
                self.close()
                break
            self._app.data_received(chunk)
        self._flush()

    def _flush(self) -> None:
        if self._raw is not None and not self._raw.is_closing():
            ciphertext = self._tls.outgoing()
            if ciphertext:
                self._raw.write(ciphertext)

    # ------------------------------------------------------------------ above: the IMAP protocol's transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or not self._established():
            raise ConnectionResetError("TLS connection not open")
        self._tls.write(data)
        self._flush()

    def is_closing(self) -> bool:
        return self._closed or self._raw is None or self._raw.is_closing()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._tls.close_notify()
        self._flush()
        if self._raw is not None:
            self._raw.close()

    def abort(self) -> None:
        self._closed = True
        if self._raw is not None:
            self._raw.abort()

    def pause_reading(self) -> None:
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None:
            self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw is not None and self._raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return 0 if self._raw is None else self._raw.get_write_buffer_size()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        if name == "sslcontext":
            return self._ctx
        return default if self._raw is None else self._raw.get_extra_info(name, default)


async def connect_tls(
    app: asyncio.Protocol, host: str, port: int, ctx: ssl.SSLContext, server_name: str
) -> TLSBioTransport:
    """TCP to ``host:port``, then the TLS handshake; ``app.connection_made(tls)`` once it is done."""
    loop = asyncio.get_running_loop()
    tls = TLSBioTransport(app, ctx, server_name, (host, port, server_name), announce=True)
    try:
        await loop.create_connection(lambda: tls, host, port)
        await tls.handshake
    except BaseException:
        tls.abort()
        raise
    return tls


async def start_tls(
    raw: asyncio.Transport, app: asyncio.Protocol, ctx: ssl.SSLContext, server_name: str, key: tuple[str, int, str]
) -> TLSBioTransport:
    """Upgrade the plain connection ``raw`` (STARTTLS): ``app`` keeps its connection, the TLS transport is returned."""
    tls = TLSBioTransport(app, ctx, server_name, key, announce=False)
    raw.set_protocol(tls)
    tls.connection_made(raw)
    try:
        await tls.handshake
    except BaseException:
        tls.abort()
        raise
    return tls
