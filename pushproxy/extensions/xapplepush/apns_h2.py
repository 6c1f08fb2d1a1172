"""The HTTP/2 side of APNs: aioapns' connection pool with our own response handling.

aioapns is used for its connection pool, TLS set-up, JWT signing and request framing.
Its response side is replaced (see :class:`_ApnsClientProtocol`) because aioapns 4.0:
- cannot be pointed at another host or port (class attributes APNS_SERVER/APNS_PORT);
- takes the certificate and key from one file (``load_cert_chain(cert_file)``);
- never resolves an error answer that has no JSON body, and crashes the connection on a
  non-JSON body or on a late answer to a request that was cancelled by our timeout;
- keeps the stream (and its concurrency slot) of a request that timed out, never gives
  HTTP/2 flow-control credit back, and drops response headers such as Retry-After;
- closes a connection after 10 s without a request (``INACTIVITY_TIME``), so every push
  to a quiet account paid a new TCP + TLS handshake, while Apple asks providers to keep
  connections open.  Ours stay open and are reused; an HTTP/2 PING every
  :data:`PING_INTERVAL` keeps middleboxes from dropping them and finds dead ones (no PONG
  within :data:`PING_TIMEOUT`: closed, the next push opens a fresh one).

These reach into aioapns' protocol and pool internals: this module is the only one that
imports aioapns (the sender, :mod:`.apns`, takes the names it needs from here),
pyproject.toml pins aioapns to the 4.0 series this module was written against, and
``tests/unit/test_aioapns_internals.py`` checks each assumption directly -- the pool's
``protocol_class`` and constructor arguments, ``acquire``; the protocol's ``conn``,
``requests``, ``request_streams``, ``free_channels``, ``inactivity_timer``,
``on_connection_lost``, ``loop``, ``flush``/``close``/``on_remote_settings_changed``/
``on_connection_terminated``, ``INACTIVITY_TIME``; Apple's hosts as
``APNS_SERVER``/``APNS_PORT``; ``NotificationResult``'s constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Any

from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseConnectionPool,
    APNsCertConnectionPool,
    APNsDevelopmentClientProtocol,
    APNsKeyConnectionPool,
    APNsProductionClientProtocol,
    APNsTLSClientProtocol,
)
from aioapns.exceptions import ConnectionClosed
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import H2Error, NoAvailableStreamIDError

from pushproxy.config import parse_hostport
from pushproxy.extensions.xapplepush.apns_cert import LoadedCredentials
from pushproxy.extensions.xapplepush.settings import ApnsConfig
from pushproxy.retry import parse_retry_after

__all__ = ["NotificationRequest", "Pool", "PushType", "new_pool", "send_via_pool"]

Pool = APNsBaseConnectionPool

log = logging.getLogger("pushproxy.xapplepush.apns")

RETRY_AFTER_CAP = 15 * 60.0
MAX_CONNECTIONS = 4
PING_INTERVAL = 300.0  # seconds between HTTP/2 PINGs on a connection
PING_TIMEOUT = 20.0  # no PONG within this: the connection is dead, close it


class _Result(NotificationResult):
    __slots__ = ("retry_after",)

    def __init__(
        self,
        notification_id: str,
        status: str,
        description: str | None = None,
        timestamp: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(notification_id, status, description, timestamp)
        self.retry_after = retry_after


@dataclass
class _PendingResponse:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _ApnsClientProtocol(APNsTLSClientProtocol):
    """aioapns' protocol with the response side done per stream (see the module docstring).

    Requests are still framed by aioapns' ``send_notification``.  Subclasses created by
    :func:`_protocol_class` set APNS_SERVER/APNS_PORT for the endpoint override.
    """

    # aioapns closes a connection after INACTIVITY_TIME seconds without a write; our
    # PINGs are writes, so with a longer time than PING_INTERVAL it never fires on a
    # healthy connection (see the module docstring).
    INACTIVITY_TIME = int(3 * PING_INTERVAL)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._responses: dict[int, _PendingResponse] = {}
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        # A module-level lookup, so that tests can shorten it.
        self._ping_timer = self.loop.call_later(PING_INTERVAL, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.conn.ping(os.urandom(8))
        except H2Error:
            self.close()
            return
        self.flush()
        self._pong_timer = self.loop.call_later(PING_TIMEOUT, self._pong_missing)

    def _pong_missing(self) -> None:
        self._pong_timer = None
        log.info("APNs connection: no answer to PING within %.0f s; closing it", PING_TIMEOUT)
        self.close()

    def _cancel_ping_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        try:
            return await super().send_notification(request)
        except asyncio.CancelledError:
            # Our timeout gave up on this request: free its stream and slot.
            self._abandon(request.notification_id)
            raise

    def _abandon(self, notification_id: str) -> None:
        self.requests.pop(notification_id, None)
        for stream_id, nid in list(self.request_streams.items()):
            if nid == notification_id:
                del self.request_streams[stream_id]
                self._responses.pop(stream_id, None)
                self.free_channels.release()
                with contextlib.suppress(H2Error):
                    self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
                if self.transport is not None and not self.transport.is_closing():
                    self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except H2Error as exc:
            log.warning("APNs connection: HTTP/2 protocol error (%s); reconnecting", exc)
            self.close()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                self._responses[event.stream_id] = _PendingResponse(  # type: ignore[index]
                    headers=dict(event.headers or [])  # type: ignore[arg-type]
                )
            elif isinstance(event, DataReceived):
                pending = self._responses.get(event.stream_id)  # type: ignore[arg-type]
                if pending is not None and event.data:
                    pending.body += event.data
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length,
                    event.stream_id,  # type: ignore[arg-type]
                )
            elif isinstance(event, StreamEnded):
                self._finish(event.stream_id)  # type: ignore[arg-type]
            elif isinstance(event, StreamReset):
                self._fail(event.stream_id, f"stream reset by APNs ({event.error_code!r})")  # type: ignore[arg-type]
            elif isinstance(event, RemoteSettingsChanged):
                self.on_remote_settings_changed(event.changed_settings)  # type: ignore[arg-type]
            elif isinstance(event, PingAckReceived):
                if self._pong_timer is not None:
                    self._pong_timer.cancel()
                    self._pong_timer = None
                    self._schedule_ping()
            elif isinstance(event, ConnectionTerminated):
                self.on_connection_terminated(event)
        if self.transport is not None and not self.transport.is_closing():
            self.flush()

    def _take_future(self, stream_id: int) -> tuple[str, asyncio.Future[NotificationResult]] | None:
        notification_id = self.request_streams.pop(stream_id, None)
        if notification_id is None:
            return None
        self.free_channels.release()
        future = self.requests.pop(notification_id, None)
        if future is None or future.done():
            return None
        return notification_id, future

    def _finish(self, stream_id: int) -> None:
        pending = self._responses.pop(stream_id, _PendingResponse())
        taken = self._take_future(stream_id)
        if taken is None:
            return  # a late answer to a request we gave up on
        notification_id, future = taken
        status = pending.headers.get(b":status", b"").decode("ascii", "replace") or "000"
        reason: str | None = None
        timestamp: int | None = None
        if pending.body:
            try:
                doc = json.loads(bytes(pending.body))
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                reason = doc.get("reason") if isinstance(doc.get("reason"), str) else None
                ts = doc.get("timestamp")
                timestamp = int(ts) if isinstance(ts, int | float) else None
        future.set_result(
            _Result(
                notification_id,
                status,
                description=reason,
                timestamp=timestamp,
                retry_after=parse_retry_after(pending.headers.get(b"retry-after"), cap=RETRY_AFTER_CAP),
            )
        )

    def _fail(self, stream_id: int, why: str) -> None:
        self._responses.pop(stream_id, None)
        taken = self._take_future(stream_id)
        if taken is not None:
            taken[1].set_exception(ConnectionResetError(why))

    def connection_lost(self, exc: Exception | None) -> None:
        # Like aioapns', but tolerant of futures already done (cancelled by our timeout)
        # and of a connection the pool never listed.
        log.debug("APNs connection lost: %s", exc)
        self._cancel_ping_timers()
        if self.inactivity_timer:
            self.inactivity_timer.cancel()
        if self.on_connection_lost:
            with contextlib.suppress(ValueError):
                self.on_connection_lost(self)
        closed = ConnectionClosed(str(exc))
        for future in self.requests.values():
            if not future.done():
                future.set_exception(closed)
        self.requests.clear()
        self.request_streams.clear()
        self._responses.clear()
        self.free_channels.destroy(closed)


def _protocol_class(sandbox: bool, endpoint: str | None) -> type[APNsTLSClientProtocol]:
    apple = APNsDevelopmentClientProtocol if sandbox else APNsProductionClientProtocol
    host, port = parse_hostport(endpoint) if endpoint else (apple.APNS_SERVER, apple.APNS_PORT)
    return type(
        "PushproxyApnsProtocol",
        (_ApnsClientProtocol,),
        {"APNS_SERVER": host, "APNS_PORT": port},
    )


def _ssl_context(cfg: ApnsConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _cert_pool(cfg: ApnsConfig, creds: LoadedCredentials, topic: str) -> APNsBaseConnectionPool:
    """aioapns wants one file with certificate and key: write a 0600 temp file, load it, remove it."""
    assert creds.cert_chain_pem is not None
    shm = "/dev/shm"  # noqa: S108 - RAM-backed: keeps the unencrypted key off disk; mkstemp makes it 0600
    directory = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="pushproxy-apns-", suffix=".pem", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(creds.cert_chain_pem)
        return APNsCertConnectionPool(
            cert_file=path,
            topic=topic,
            max_connections=MAX_CONNECTIONS,
            max_connection_attempts=1,  # retries are ours, with backoff
            use_sandbox=cfg.sandbox,
            ssl_context=_ssl_context(cfg),
        )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _token_pool(cfg: ApnsConfig, creds: LoadedCredentials, topic: str) -> APNsBaseConnectionPool:
    assert creds.token_key_pem is not None and cfg.key_id and cfg.team_id
    return APNsKeyConnectionPool(
        key=creds.token_key_pem,
        key_id=cfg.key_id,
        team_id=cfg.team_id,
        topic=topic,
        max_connections=MAX_CONNECTIONS,
        max_connection_attempts=1,
        use_sandbox=cfg.sandbox,
        ssl_context=_ssl_context(cfg),
    )


def new_pool(cfg: ApnsConfig, creds: LoadedCredentials, topic: str, *, certificate: bool) -> Pool:
    """A connection pool for certificate or token authentication, making our protocol's connections."""
    pool = _cert_pool(cfg, creds, topic) if certificate else _token_pool(cfg, creds, topic)
    pool.protocol_class = _protocol_class(cfg.sandbox, cfg.endpoint)
    return pool


async def send_via_pool(pool: APNsBaseConnectionPool, request: NotificationRequest) -> NotificationResult:
    """One attempt on a pooled connection.

    aioapns' own ``pool.send_notification`` retries internally, sleeps a fixed second after
    a failed connect and logs every failure at ERROR; our caller owns retries and logging.
    """
    connection = await pool.acquire()
    try:
        return await connection.send_notification(request)
    except NoAvailableStreamIDError:
        connection.close()  # stream ids used up: the next attempt gets a fresh connection
        raise
