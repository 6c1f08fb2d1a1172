"""Web Push delivery: RFC 8030 POSTs through pywebpush, over the project's own aiohttp session.

pywebpush's ``WebPusher`` encrypts every message (RFC 8291 aes128gcm, via
http_ece) and posts it; py_vapid signs the VAPID header (RFC 8292, see
:mod:`pushproxy.extensions.webpush.vapid`).  What pywebpush cannot be told (no redirects,
a bounded answer) is in :mod:`pushproxy.extensions.webpush.adapter`.

One shared :class:`aiohttp.ClientSession` (keep-alive, bounded pool) whose
resolver is the SSRF guard's :class:`~pushproxy.extensions.webpush.ssrf.PinnedResolver`.
:meth:`WebPushSender.send` posts with a freshly signed VAPID header (and a
fresh encryption) per attempt, never follows redirects, bounds every request
with ``webpush.timeout`` and retries 429/5xx/transport errors with
exponential backoff and jitter (honouring Retry-After) up to
``webpush.retry_budget``.

Endpoints and keys are never logged: a short hash of the endpoint stands in.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp
from py_vapid import VapidException

from pushproxy.extensions.webpush.adapter import NoRedirectSession, post_encrypted
from pushproxy.extensions.webpush.payload import MAX_PLAINTEXT, ack_payload
from pushproxy.extensions.webpush.settings import WebPushConfig
from pushproxy.extensions.webpush.ssrf import ConnectRefused, EndpointRefused, PinnedResolver, ResolvedEndpoint
from pushproxy.extensions.webpush.store import WebPushSubscription
from pushproxy.extensions.webpush.vapid import VapidKeyring
from pushproxy.retry import parse_retry_after, retry_delay

log = logging.getLogger(__name__)

Outcome = Literal["ok", "delete", "deactivate", "too_large", "dropped", "failed", "refused"]
Urgency = Literal["very-low", "low", "normal", "high"]


def endpoint_tag(endpoint: str) -> str:
    """What logs say instead of the endpoint: the host is not logged either (it may be private)."""
    return "ep:" + hashlib.sha256(endpoint.encode("utf-8", "replace")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class WebPushResult:
    outcome: Outcome
    status: int | None = None  # the last HTTP status, None if no response
    attempts: int = 0  # HTTP requests made
    detail: str = ""  # short, safe to log (never the endpoint)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class WebPushMetrics(Protocol):
    """What the sender reports; the metrics module provides an implementation."""

    def webpush_request(self, status: int | None, seconds: float) -> None:
        """One HTTP attempt: status (None for a transport error or timeout) and duration."""

    def webpush_result(self, outcome: str) -> None:
        """The final outcome of one ``send``."""


Sleep = Callable[[float], Awaitable[None]]


class SenderClosed(Exception):
    """The sender was closed (shutdown) while a push was still being sent: it is not sent."""


class WebPushSender:
    def __init__(
        self,
        cfg: WebPushConfig,
        keyring: VapidKeyring,
        metrics: WebPushMetrics | None = None,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_cap: float = 120.0,
        connection_limit: int = 256,
        per_host_limit: int = 64,
        pin_ttl: float = 60.0,
        resolver: PinnedResolver | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._cfg = cfg
        self._keyring = keyring
        self._metrics = metrics
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._retry_after_cap = retry_after_cap
        self._connection_limit = connection_limit
        self._per_host_limit = per_host_limit
        self._sleep = sleep
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        self.resolver = resolver or PinnedResolver(
            allow_private=cfg.allow_private_endpoints, timeout=cfg.timeout, pin_ttl=pin_ttl
        )
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def start(self) -> None:
        if self._session is not None:
            return
        self._closed = False
        connector = aiohttp.TCPConnector(
            resolver=self.resolver,
            use_dns_cache=False,  # the resolver is the only authority on addresses
            limit=self._connection_limit,
            limit_per_host=self._per_host_limit,
            keepalive_timeout=60.0,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            trust_env=False,  # never send pushes through an environment-configured proxy
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "pushproxy"},
            auto_decompress=False,
        )

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> WebPushSender:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def check_endpoint(self, endpoint: str) -> ResolvedEndpoint:
        """The SSRF guard for a new subscription (raises EndpointRefused); pins the host's addresses."""
        return await self.resolver.resolve_endpoint(endpoint)

    async def send_ack(self, sub: WebPushSubscription, token: str) -> WebPushResult:
        """The verification push ``* ACKWEBPUSH <token>``."""
        ttl = self._cfg.ack_ttl if self._cfg.ack_ttl is not None else int(self._cfg.ack_expiry)
        return await self.send(sub, ack_payload(token), urgency="high", ttl=ttl)

    async def send(self, sub: WebPushSubscription, plaintext: bytes, *, urgency: Urgency, ttl: int) -> WebPushResult:
        """Raises :class:`SenderClosed` when :meth:`close` came first or while the push was in flight."""
        result = await self._send(sub, plaintext, urgency=urgency, ttl=ttl)
        if self._metrics is not None:
            self._metrics.webpush_result(result.outcome)
        return result

    async def _send(self, sub: WebPushSubscription, plaintext: bytes, *, urgency: Urgency, ttl: int) -> WebPushResult:
        if self._session is None and not self._closed:
            raise RuntimeError("WebPushSender.start() was not called")
        who = f"{sub.account}/{sub.sub_id} {endpoint_tag(sub.endpoint)}"
        if len(plaintext) > MAX_PLAINTEXT:
            log.warning("webpush %s: plaintext of %d bytes is too large", who, len(plaintext))
            return WebPushResult("too_large", detail=f"plaintext exceeds {MAX_PLAINTEXT} bytes")
        try:
            target = await self.resolver.resolve_endpoint(sub.endpoint)
        except EndpointRefused as exc:
            log.warning("webpush %s: endpoint refused: %s", who, exc.reason)
            return WebPushResult("refused", detail=exc.reason)

        key = self._keyring.for_subscription(sub.vapid_key_id)
        started = time.monotonic()
        status: int | None = None
        attempts = 0
        detail = ""
        for retry in range(self._cfg.retry_budget + 1):
            if self._session is None or self._session.closed:
                # Closed meanwhile (shutdown; a request in flight was cut): no attempt on a closed
                # session, which aiohttp would refuse with a RuntimeError.
                raise SenderClosed(f"sender closed after {attempts} attempt(s)")
            session = NoRedirectSession(self._session)
            try:
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Urgency": urgency,
                    # Fresh claims (exp) on every attempt.
                    "Authorization": key.sign_header(target.url, self._cfg.subject),
                }
            except VapidException as exc:
                log.error("webpush %s: VAPID signing refused the claims (%s); message dropped", who, exc)
                return WebPushResult("dropped", attempts=attempts, detail="VAPID claims refused")
            attempts += 1
            retry_after: float | None = None
            t0 = time.monotonic()
            try:
                answer = await post_encrypted(
                    session,
                    target.url,
                    sub.p256dh,
                    sub.auth,
                    plaintext,
                    headers=headers,
                    ttl=max(0, int(ttl)),
                    timeout=self._timeout,
                )
            except (ValueError, binascii.Error) as exc:  # InvalidSubscriptionKeys is a ValueError
                # Keys that cannot encrypt (the WEBPUSH grammar refuses them, so only
                # a damaged store row gets here); nothing was sent.
                log.error("webpush %s: invalid subscription keys (%s); message dropped", who, type(exc).__name__)
                return WebPushResult("dropped", attempts=attempts - 1, detail="invalid subscription keys")
            except aiohttp.ClientConnectorError as exc:
                self._observe(None, t0)
                if isinstance(exc.os_error, ConnectRefused):
                    log.warning("webpush %s: refused at connect time: %s", who, exc.os_error)
                    return WebPushResult("refused", attempts=attempts, detail=str(exc.os_error))
                status, detail = None, f"connect error: {type(exc.os_error).__name__}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._observe(None, t0)
                status, detail = None, "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            else:
                status = answer.status
                retry_after = parse_retry_after(answer.headers.get("Retry-After"), cap=self._retry_after_cap)
                self._observe(status, t0)
                detail = f"HTTP {status} {answer.reason}".strip()
                outcome = _classify(status)
                if outcome is not None:
                    self._log_outcome(who, outcome, status, answer.reason, attempts)
                    return WebPushResult(outcome, status=status, attempts=attempts, detail=detail)

            # Retryable: 429, 5xx, transport error or timeout.
            if retry >= self._cfg.retry_budget:
                break
            delay = retry_delay(retry, self._backoff_base, self._backoff_max, retry_after)
            if ttl > 0 and time.monotonic() - started + delay > ttl:
                detail += "; the message would expire before the next attempt"
                break
            log.info("webpush %s: %s, retry %d in %.1fs", who, detail, retry + 1, delay)
            await self._sleep(delay)
        log.warning("webpush %s: giving up after %d attempts (%s)", who, attempts, detail)
        return WebPushResult("failed", status=status, attempts=attempts, detail=detail)

    def _observe(self, status: int | None, t0: float) -> None:
        if self._metrics is not None:
            self._metrics.webpush_request(status, time.monotonic() - t0)

    @staticmethod
    def _log_outcome(who: str, outcome: Outcome, status: int, reason: str, attempts: int) -> None:
        if outcome == "ok":
            log.debug("webpush %s: delivered (HTTP %d, %d attempts)", who, status, attempts)
        elif outcome == "dropped":
            what = "redirect not followed" if 300 <= status < 400 else "rejected by the push service"
            log.warning("webpush %s: HTTP %d %s: %s; message dropped", who, status, reason, what)
        else:
            log.info("webpush %s: HTTP %d %s -> %s", who, status, reason, outcome)


def _classify(status: int) -> Outcome | None:
    """Final outcome for an HTTP status, or None when the request is worth retrying."""
    if 200 <= status < 300:
        return "ok"
    if status in (404, 410):
        return "delete"
    if status in (401, 403):
        return "deactivate"
    if status == 413:
        return "too_large"
    if status == 429 or status >= 500:
        return None
    return "dropped"  # 400, other 4xx, 3xx (redirects are never followed), 1xx
