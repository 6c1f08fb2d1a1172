"""TLS for the watchers' upstream connections on the standard loop: OpenSSL over ``ssl.MemoryBIO``.

Why not the standard loop's own TLS (``create_connection(ssl=...)``, ``start_tls``):

- memory: asyncio's SSL protocol allocates a 256 KiB read buffer per
  connection: about 310 KB per idle TLS watcher, against 50 KB on uvloop.
  Here nothing is allocated beyond OpenSSL's own state (about 40 KB per client
  connection with OpenSSL 3.0, whatever the BIO: measured with a bare client,
  uvloop's TLS included) and the two BIOs' buffers: about 68 KB per watcher
  (bench/scale.py);
- resumption: every connection offers the session the last handshake with
  the same server got (a TLS 1.3 ticket or a TLS 1.2 session), so the upstream
  can resume instead of a full handshake (:class:`SessionCache`; 90 % resumed in
  bench/scale.py);
- a handshake cut short by a stop is just an aborted TCP connection.

On uvloop (the default) the loop's own TLS is used (:func:`loop_tls_is_small`):
it is smaller than this (its buffers are C's) and its handshakes cost less CPU
than this module's Python-level steps -- measured 253 against 152 logins/s on
the same loaded machine, resumption notwithstanding -- but it cannot offer a
session (no ``session=`` in ``create_connection``).

:class:`TLSBioTransport` is the TCP connection's protocol and the IMAP
protocol's transport.  :func:`connect_tls` opens a connection with implicit
TLS, :func:`start_tls` upgrades a plain one (STARTTLS).
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from typing import Any, cast

__all__ = ["SessionCache", "TLSBioTransport", "connect_tls", "loop_tls_is_small", "start_tls"]


def loop_tls_is_small(loop: asyncio.AbstractEventLoop) -> bool:
    """True on uvloop, whose own TLS transport is used; False on the standard loop (use this module)."""
    return type(loop).__module__.startswith("uvloop")


_READ = 16384  # one TLS record at most per read call


class SessionCache:
    """The last TLS session per (context, server): offered to the next handshake with that server."""

    _sessions: weakref.WeakKeyDictionary[ssl.SSLContext, dict[tuple[str, int, str], ssl.SSLSession]]
    _sessions = weakref.WeakKeyDictionary()

    @classmethod
    def get(cls, ctx: ssl.SSLContext, key: tuple[str, int, str]) -> ssl.SSLSession | None:
        return cls._sessions.get(ctx, {}).get(key)

    @classmethod
    def put(cls, ctx: ssl.SSLContext, key: tuple[str, int, str], session: ssl.SSLSession | None) -> None:
        if session is not None:
            cls._sessions.setdefault(ctx, {})[key] = session

    @classmethod
    def forget(cls, ctx: ssl.SSLContext, key: tuple[str, int, str]) -> None:
        cls._sessions.get(ctx, {}).pop(key, None)


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
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(
            self._in, self._out, server_side=False, server_hostname=server_name, session=SessionCache.get(ctx, key)
        )
        self._raw: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = False

    # ------------------------------------------------------------------ below: the TCP connection's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)  # uvloop's TCPTransport does not subclass it
        self._step_handshake()

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        if not self.handshake.done():
            self._step_handshake()
        if self._established():
            self._read()

    def eof_received(self) -> bool:
        self._in.write_eof()
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
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush()
            self._fail_handshake(exc)
            return
        self._flush()
        self.handshake.set_result(None)
        if self._announce:
            self._app.connection_made(self)

    def _fail_handshake(self, exc: BaseException) -> None:
        SessionCache.forget(self._ctx, self._key)  # a refused session must not be offered again
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()  # retrieved: the opener may have given up already
        if self._raw is not None:
            self._raw.abort()

    def _read(self) -> None:
        while not self._closed:
            try:
                chunk = self._ssl.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the server's close_notify
                self._app.eof_received()
                self.close()
                break
            except (ssl.SSLError, OSError) as exc:
                self._app.connection_lost(exc)
                self._closed = True
                if self._raw is not None:
                    self._raw.abort()
                break
            if not chunk:
                break
            self._app.data_received(chunk)
        # TLS 1.3 tickets come after the handshake: keep the newest for the next connection.
        SessionCache.put(self._ctx, self._key, self._ssl.session)
        self._flush()

    def _flush(self) -> None:
        if self._out.pending and self._raw is not None and not self._raw.is_closing():
            self._raw.write(self._out.read())

    # ------------------------------------------------------------------ above: the IMAP protocol's transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or not self._established():
            raise ConnectionResetError("TLS connection not open")
        self._ssl.write(data)
        self._flush()

    def is_closing(self) -> bool:
        return self._closed or self._raw is None or self._raw.is_closing()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._ssl.unwrap()  # close_notify; the server's answer is not awaited
        except (ssl.SSLError, OSError, ValueError):
            pass
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
