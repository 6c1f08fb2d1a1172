"""APNs delivery for iOS Mail (the pushes behind XAPPLEPUSHSERVICE), over aioapns.

One :class:`ApnsPusher` per process.  ``notify()`` is called by the dispatcher for every
(device, mailbox) that saw new mail; pushes are debounced per (device token, account
id), sent as background pushes with the body iOS Mail expects, retried with backoff on
429/5xx/transport trouble, and invalid tokens are reported back through
``on_invalid_token`` so that the store can prune them.

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

These reach into aioapns' protocol and pool internals, so pyproject.toml pins aioapns
to the 4.0 series this module was written against.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import ssl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

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

from pushproxy.accounts import is_inbox
from pushproxy.config import ApnsConfig, ConfigError, parse_hostport
from pushproxy.push.apns_cert import (
    CertificateInfo,
    LoadedCredentials,
    inspect_credentials,
    is_trusted_topic,
    load_credentials,
)

__all__ = [
    "ApnsMetrics",
    "ApnsPusher",
    "CertificateInfo",
    "InvalidTokenCallback",
    "PrometheusApnsMetrics",
    "build_payload",
    "inspect_credentials",
    "is_trusted_topic",
    "mailbox_hash",
    "short_token",
]

log = logging.getLogger(__name__)

EXPIRATION = 24 * 3600  # apns-expiration: now + 24 h
PRIORITY_BACKGROUND = 5  # background pushes must use priority 5
EXPIRY_WARNING_DAYS = 30
EXPIRY_CHECK_INTERVAL = 6 * 3600.0
RETRY_AFTER_CAP = 15 * 60.0
MAX_CONNECTIONS = 4
PING_INTERVAL = 300.0  # seconds between HTTP/2 PINGs on a connection
PING_TIMEOUT = 20.0  # no PONG within this: the connection is dead, close it
_TOKEN_RE = re.compile(r"[0-9A-Fa-f]{16,256}")

InvalidTokenCallback = Callable[[str, float | None], Awaitable[None]]


class ApnsMetrics(Protocol):
    """What the pusher reports (see :class:`PrometheusApnsMetrics` for pushproxy.metrics)."""

    def sent(self, status: str) -> None:
        """One attempt finished: its HTTP status ("200", "410", ...), or "error" without a response."""

    def failed(self, reason: str) -> None:
        """One attempt did not succeed: APNs' reason ("BadDeviceToken", ...), "timeout" or "transport"."""

    def latency(self, seconds: float) -> None:
        """Duration of one attempt."""

    def cert_days_left(self, days: int) -> None:
        """Days until the certificate expires (certificate auth only)."""


class PrometheusApnsMetrics:
    """ApnsMetrics on the shared registry of :mod:`pushproxy.metrics`."""

    _REASON = re.compile(r"[A-Za-z]{1,40}")

    def sent(self, status: str) -> None:
        from pushproxy import metrics

        metrics.PUSHES.labels(service="apns", status=status).inc()

    def failed(self, reason: str) -> None:
        from pushproxy import metrics

        # Label values must stay few: anything that is not an APNs-style word is "other".
        label = reason if self._REASON.fullmatch(reason) else "other"
        metrics.PUSH_FAILURES.labels(service="apns", reason=label).inc()

    def latency(self, seconds: float) -> None:
        from pushproxy import metrics

        metrics.PUSH_LATENCY.labels(service="apns").observe(seconds)

    def cert_days_left(self, days: int) -> None:
        from pushproxy import metrics

        metrics.APNS_CERTIFICATE_DAYS_LEFT.set(days)


def short_token(token: str) -> str:
    """Device tokens are secrets of a sort: log only their first 8 characters."""
    return token[:8] + "…"


def mailbox_hash(mailbox: str) -> str:
    """What iOS Mail expects in "m": MD5 of the UTF-8 mailbox name, upper-case hex."""
    return hashlib.md5(mailbox.encode("utf-8"), usedforsecurity=False).hexdigest().upper()


def build_payload(account_id: str, mailboxes: Iterable[str]) -> dict[str, Any]:
    """The push body: ``{"aps": {"account-id": ...}}`` plus "m" when mail arrived outside INBOX.

    Without "m" iOS syncs INBOX.  When INBOX and other mailboxes changed in the same
    window, INBOX's own hash is listed too, so that naming the others does not make iOS
    skip INBOX.
    """
    names = set(mailboxes)
    payload: dict[str, Any] = {"aps": {"account-id": account_id}}
    others = {m for m in names if not is_inbox(m)}
    if others:
        if len(others) < len(names):
            others.add("INBOX")
        payload["m"] = sorted(mailbox_hash(m) for m in others)
    return payload


# --- aioapns protocol with our response handling -----------------------------------------


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


def _parse_retry_after(value: bytes | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None  # an HTTP date: Apple does not send those; ignore rather than guess
    return max(0.0, min(seconds, RETRY_AFTER_CAP))


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
                retry_after=_parse_retry_after(pending.headers.get(b"retry-after")),
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


async def _send_via_pool(pool: APNsBaseConnectionPool, request: NotificationRequest) -> NotificationResult:
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


# --- the pusher ----------------------------------------------------------------------


@dataclass
class _Window:
    """Notifications for one (device token, account id) collected during a debounce window."""

    mailboxes: set[str]
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class _Attempt:
    status: str  # HTTP status, "timeout" or "error"
    reason: str | None = None
    timestamp_ms: int | None = None
    retry_after: float | None = None


class ApnsPusher:
    """Sends iOS Mail pushes.  ``start()`` before ``notify()``; ``close()`` at the end."""

    def __init__(
        self,
        cfg: ApnsConfig,
        on_invalid_token: InvalidTokenCallback,
        metrics: ApnsMetrics | None = None,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
    ) -> None:
        self._cfg = cfg
        self._on_invalid_token = on_invalid_token
        self._metrics = metrics
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._creds = load_credentials(cfg)  # ConfigError early, and the topic for registrations
        self.info: CertificateInfo = self._creds.info
        assert self.info.topic is not None
        self.topic: str = self.info.topic
        self._pool: APNsBaseConnectionPool | None = None
        self._windows: dict[tuple[str, str], _Window] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        creds = self._creds = load_credentials(self._cfg)  # re-read: the files may have been replaced
        info = self.info = creds.info
        assert info.topic is not None
        self.topic = info.topic
        self._check_validity(info)
        if not info.topic_trusted:
            if not self._cfg.allow_untrusted_topic:
                raise ConfigError(
                    f"apns: topic {info.topic!r} does not start with com.apple.mail. or "
                    "com.apple.mobilemail.push., so iOS Mail would ignore every push "
                    "(set apns.allow_untrusted_topic to start anyway)"
                )
            log.warning("APNs topic %r is one iOS Mail ignores; starting anyway as configured", info.topic)
        pool = (
            _cert_pool(self._cfg, creds, self.topic)
            if info.auth == "certificate"
            else _token_pool(self._cfg, creds, self.topic)
        )
        pool.protocol_class = _protocol_class(self._cfg.sandbox, self._cfg.endpoint)
        self._pool = pool
        self._report_expiry(info)
        if info.auth == "certificate":
            self._expiry_task = asyncio.create_task(self._watch_expiry(), name="apns-cert-expiry")
        log.info(
            "APNs ready: %s auth, topic %s, %s%s",
            info.auth,
            self.topic,
            "sandbox" if self._cfg.sandbox else "production",
            f", endpoint override {self._cfg.endpoint}" if self._cfg.endpoint else "",
        )

    def _check_validity(self, info: CertificateInfo) -> None:
        if not (info.expired or info.not_yet_valid):
            return
        when = f"expired on {info.not_after:%Y-%m-%d}" if info.expired else f"not valid before {info.not_before}"
        if not self._cfg.allow_expired:
            raise ConfigError(
                f"apns: the certificate ({info.subject}) {when}; APNs would refuse it "
                "(set apns.allow_expired to start anyway)"
            )
        log.error("APNs certificate (%s) %s; starting anyway as configured", info.subject, when)

    def _report_expiry(self, info: CertificateInfo) -> None:
        if info.auth != "certificate":
            return
        if self._metrics is not None:
            self._metrics.cert_days_left(info.days_left)
        if 0 <= info.days_left < EXPIRY_WARNING_DAYS:
            log.warning(
                "APNs certificate (%s) expires in %d days, on %s: renew it before then",
                info.subject,
                info.days_left,
                f"{info.not_after:%Y-%m-%d}",
            )

    async def _watch_expiry(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_INTERVAL)
            try:
                info = inspect_credentials(self._cfg)
            except ConfigError as exc:
                log.error("APNs credentials became unreadable: %s", exc)
                continue
            self._report_expiry(info)
            if info.expired:
                log.error("APNs certificate (%s) has expired: pushes will fail", info.subject)

    async def close(self) -> None:
        """Stop: pending windows and retries are cancelled (call flush() first to send them)."""
        self._closed = True
        tasks = [*self._tasks, *([self._expiry_task] if self._expiry_task else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._windows.clear()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- notify / flush -------------------------------------------------------------

    def notify(self, device_token: str, aps_account_id: str, mailbox: str) -> None:
        """Queue a push for this device; never blocks.  Bursts within cfg.debounce become one push."""
        if self._closed:
            return
        if self._pool is None:
            raise RuntimeError("ApnsPusher.notify() called before start()")
        if not _TOKEN_RE.fullmatch(device_token):
            log.warning("APNs: ignoring malformed device token %s", short_token(device_token))
            return
        key = (device_token, aps_account_id)
        window = self._windows.get(key)
        if window is not None:
            window.mailboxes.add(mailbox)
            return
        window = self._windows[key] = _Window({mailbox})
        task = asyncio.create_task(self._debounce_then_send(key, window), name="apns-push")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Send every open window now and wait until each push is delivered or given up."""
        while self._tasks:
            for window in self._windows.values():
                window.release.set()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _debounce_then_send(self, key: tuple[str, str], window: _Window) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(window.release.wait(), self._cfg.debounce)
        if self._windows.get(key) is window:
            del self._windows[key]
        token, account_id = key
        try:
            await self._deliver(token, build_payload(account_id, window.mailboxes))
        except asyncio.CancelledError:
            raise
        except Exception:  # one device's push must never take the pusher down
            log.exception("APNs push to %s failed unexpectedly", short_token(token))

    # -- sending -----------------------------------------------------------------------

    async def _deliver(self, token: str, payload: dict[str, Any]) -> None:
        retries = 0
        while True:
            attempt = await self._send_once(token, payload)
            status = attempt.status
            if status == "200":
                log.debug("APNs push to %s delivered", short_token(token))
                return
            if status == "410":
                registered_before = attempt.timestamp_ms / 1000.0 if attempt.timestamp_ms is not None else None
                log.info("APNs: device %s unregistered (%s)", short_token(token), attempt.reason or "410")
                await self._invalid_token(token, registered_before)
                return
            if status == "400" and attempt.reason == "BadDeviceToken":
                log.info("APNs: bad device token %s", short_token(token))
                await self._invalid_token(token, None)
                return
            if status == "403":
                log.error(
                    "APNs refused our %s (403 %s): check the APNs %s; device %s kept",
                    "provider token" if self.info.auth == "token" else "certificate",
                    attempt.reason or "Forbidden",
                    "key_id/team_id/token_key_file"
                    if self.info.auth == "token"
                    else f"certificate {self.info.subject}",
                    short_token(token),
                )
                return
            retryable = status in ("429", "timeout", "error") or status.startswith("5")
            if not retryable:
                log.warning(
                    "APNs push to %s rejected (%s %s); dropped", short_token(token), status, attempt.reason or ""
                )
                return
            if retries >= self._cfg.retry_budget:
                log.warning(
                    "APNs push to %s given up after %d retries (last: %s %s)",
                    short_token(token),
                    retries,
                    status,
                    attempt.reason or "",
                )
                return
            delay = attempt.retry_after if attempt.retry_after is not None else self._backoff(retries)
            retries += 1
            log.debug("APNs push to %s: %s, retry %d in %.2fs", short_token(token), status, retries, delay)
            await asyncio.sleep(delay)

    def _backoff(self, retries: int) -> float:
        """Exponential with jitter: 50-100 % of base * 2**retries, capped."""
        ceiling = min(self._backoff_max, self._backoff_base * (2**retries))
        return ceiling * random.uniform(0.5, 1.0)

    async def _send_once(self, token: str, payload: dict[str, Any]) -> _Attempt:
        pool = self._pool
        if pool is None:
            return _Attempt("error", reason="closed")
        request = NotificationRequest(
            device_token=token,
            message=payload,
            notification_id=str(uuid.uuid4()),  # fresh per attempt: late answers cannot be mistaken
            time_to_live=EXPIRATION,
            priority=PRIORITY_BACKGROUND,
            push_type=PushType.BACKGROUND,
            apns_topic=self.topic,
        )
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(_send_via_pool(pool, request), self._cfg.timeout)
        except TimeoutError:
            attempt = _Attempt("timeout")
            log.warning("APNs push to %s: no answer within %.1fs", short_token(token), self._cfg.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection refused, TLS failure, reset, h2 errors, ...
            attempt = _Attempt("error", reason=type(exc).__name__)
            log.warning("APNs push to %s: transport error %s: %s", short_token(token), type(exc).__name__, exc)
        else:
            attempt = _Attempt(
                str(result.status),
                reason=result.description,
                timestamp_ms=result.timestamp,
                retry_after=getattr(result, "retry_after", None),
            )
        if self._metrics is not None:
            self._report_attempt(attempt, time.monotonic() - started)
        return attempt

    def _report_attempt(self, attempt: _Attempt, seconds: float) -> None:
        assert self._metrics is not None
        try:
            if attempt.status in ("timeout", "error"):
                self._metrics.sent("error")
                self._metrics.failed("timeout" if attempt.status == "timeout" else "transport")
            else:
                self._metrics.sent(attempt.status)
                if attempt.status != "200":
                    self._metrics.failed(attempt.reason or attempt.status)
            self._metrics.latency(seconds)
        except Exception:  # metrics must never break delivery
            log.exception("APNs metrics callback failed")

    async def _invalid_token(self, token: str, registered_before: float | None) -> None:
        try:
            await self._on_invalid_token(token, registered_before)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("APNs: on_invalid_token failed for %s", short_token(token))
