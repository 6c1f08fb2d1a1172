"""APNs delivery for iOS Mail (the pushes behind XAPPLEPUSHSERVICE), over aioapns.

One :class:`ApnsPusher` per process.  ``notify()`` is called by the dispatcher for every
(device, mailbox) that saw new mail; pushes are debounced per (device token, account
id), sent as background pushes with the body iOS Mail expects, retried with backoff on
429/5xx/transport trouble (never sooner than APNs' Retry-After asks), and
invalid tokens are reported to an :class:`InvalidTokens` (the extension), which
removes their registrations.

The HTTP/2 side (aioapns with our response handling) is :mod:`.apns_h2`; the
payload is :func:`build_payload`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pushproxy import metrics as core_metrics
from pushproxy.accounts import is_inbox
from pushproxy.extensions.xapplepush.apns_cert import (
    CertificateExpiry,
    CertificateInfo,
    check_usable,
    inspect_credentials,
    is_trusted_topic,
    load_credentials,
)
from pushproxy.extensions.xapplepush.apns_h2 import NotificationRequest, Pool, PushType, new_pool, send_via_pool
from pushproxy.extensions.xapplepush.metrics import SERVICE, ApnsMetrics, PrometheusApnsMetrics
from pushproxy.extensions.xapplepush.settings import ApnsConfig
from pushproxy.retry import Backoff

__all__ = [
    "ApnsMetrics",
    "ApnsPusher",
    "CertificateInfo",
    "InvalidTokens",
    "PrometheusApnsMetrics",
    "build_payload",
    "inspect_credentials",
    "is_trusted_topic",
    "mailbox_hash",
    "short_token",
]

log = logging.getLogger("pushproxy.xapplepush.apns")

EXPIRATION = 24 * 3600  # apns-expiration: now + 24 h
PRIORITY_BACKGROUND = 5  # background pushes must use priority 5
_TOKEN_RE = re.compile(r"[0-9A-Fa-f]{16,256}")


class InvalidTokens(Protocol):
    """Who is told of a device token APNs no longer knows (:class:`~.addon.XApplePush`: its registrations go)."""

    async def invalid_token(self, token: str, registered_before: float | None) -> None:
        """Forget ``token``'s registrations made before ``registered_before`` (unix time; None: all)."""


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
        tokens: InvalidTokens,
        metrics: ApnsMetrics | None = None,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
    ) -> None:
        self._cfg = cfg
        self._tokens = tokens
        self._metrics = metrics
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._creds = load_credentials(cfg)  # ConfigError early, and the topic for registrations
        self.info: CertificateInfo = self._creds.info
        assert self.info.topic is not None
        self.topic: str = self.info.topic
        self._pool: Pool | None = None
        self._windows: dict[tuple[str, str], _Window] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry = CertificateExpiry(cfg, metrics)
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        creds = self._creds = load_credentials(self._cfg)  # re-read: the files may have been replaced
        info = self.info = creds.info
        assert info.topic is not None
        self.topic = info.topic
        check_usable(self._cfg, info)
        self._pool = new_pool(self._cfg, creds, self.topic, certificate=info.auth == "certificate")
        core_metrics.report_queue(SERVICE, lambda: len(self._tasks))  # windows waiting, sends and retries
        self._expiry.report(info)
        if info.auth == "certificate":
            self._expiry.start()
        log.info(
            "APNs ready: %s auth, topic %s, %s%s",
            info.auth,
            self.topic,
            "sandbox" if self._cfg.sandbox else "production",
            f", endpoint override {self._cfg.endpoint}" if self._cfg.endpoint else "",
        )

    async def close(self) -> None:
        """Stop: pending windows and retries are cancelled (call flush() first to send them)."""
        self._closed = True
        await self._expiry.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._windows.clear()
        core_metrics.report_queue(SERVICE, None)
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
        backoff = Backoff(self._backoff_base, self._backoff_max)
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
            if backoff.attempts >= self._cfg.retry_budget:
                log.warning(
                    "APNs push to %s given up after %d retries (last: %s %s)",
                    short_token(token),
                    backoff.attempts,
                    status,
                    attempt.reason or "",
                )
                return
            delay = max(backoff.next(), attempt.retry_after or 0.0)  # never sooner than APNs asked
            log.debug("APNs push to %s: %s, retry %d in %.2fs", short_token(token), status, backoff.attempts, delay)
            await asyncio.sleep(delay)

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
            result = await asyncio.wait_for(send_via_pool(pool, request), self._cfg.timeout)
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
            await self._tokens.invalid_token(token, registered_before)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("APNs: invalid_token failed for %s", short_token(token))
