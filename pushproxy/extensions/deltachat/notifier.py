"""Sending tokens to the Delta Chat notification gateway: ``POST <notify_url>`` with the token as the body.

The gateway (chatmail/notifiers) decrypts the token and wakes the device
through APNs, FCM, Web Push or UBports; the app then fetches its mail.  What
its answers mean (chatmail/relay ``notifier.py`` does the same):

- 2xx: done;
- 410: the token is dead (the gateway cannot decrypt it, or the push service
  dropped the device): it is removed, unless set again since the POST began;
- 429, 408, 5xx, timeouts, transport errors: retried with exponential backoff
  and jitter (``retry_base`` .. ``retry_max_delay``, Retry-After honoured),
  dropped with one log line once ``retry_deadline`` has passed;
- any other answer: dropped with one log line (the token is kept).

Bursts are coalesced per token: new mail for a token whose POST is still
waiting (the ``coalesce`` window, or a backoff) rides on that POST; mail that
arrives while a POST is in flight gets one more POST after it.  Tokens are
never logged: their id (a keyed-hash prefix) stands in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from pushproxy import metrics as core_metrics
from pushproxy.extensions.deltachat import metrics
from pushproxy.extensions.deltachat.settings import DeltaChatConfig
from pushproxy.retry import parse_retry_after, retry_delay

log = logging.getLogger("pushproxy.deltachat")

Outcome = Literal["ok", "gone", "retry", "drop"]
OnGone = Callable[[str, str, float], Awaitable[None]]  # (token, its id, POST start as unix time)
_MAX_ANSWER = 4096  # bytes of an answer body read (and thrown away) to keep the connection reusable


@dataclass(slots=True)
class _Delivery:
    token_id: str
    posting: bool = False
    again: bool = False  # new mail arrived while the POST was in flight
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class DeltaChatNotifier:
    def __init__(self, cfg: DeltaChatConfig, on_gone: OnGone) -> None:
        self.cfg = cfg
        self.on_gone = on_gone
        self._session: aiohttp.ClientSession | None = None
        self._pending: dict[str, _Delivery] = {}
        self._slots = asyncio.Semaphore(cfg.max_concurrent)
        self._retrying = 0

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.cfg.max_concurrent, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
            headers={"User-Agent": "pushproxy"},
        )
        core_metrics.report_queue(metrics.SERVICE, lambda: len(self._pending))  # tokens with a POST to come

    async def close(self) -> None:
        tasks = [d.task for d in self._pending.values() if d.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        core_metrics.report_queue(metrics.SERVICE, None)
        if self._session is not None:
            await self._session.close()

    def notify(self, token: str, token_id: str) -> None:
        """New mail for the device behind ``token``: a POST soon (coalesced with others for it)."""
        delivery = self._pending.get(token)
        if delivery is not None:
            if delivery.posting:
                delivery.again = True
            else:
                metrics.NOTIFICATIONS.labels("coalesced").inc()
            return
        delivery = self._pending[token] = _Delivery(token_id)
        delivery.task = asyncio.ensure_future(self._deliver(token, delivery))

    async def flush(self) -> None:
        """Wait until every notification queued so far is delivered, dropped or given up (tests, shutdown)."""
        while self._pending:
            tasks = [d.task for d in self._pending.values() if d.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(self, token: str, delivery: _Delivery) -> None:
        try:
            await asyncio.sleep(self.cfg.coalesce)
            await self._until_done(token, delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not lose the others' notifications
            log.error("Delta Chat notification %s failed: %s: %s", delivery.token_id, type(exc).__name__, exc)
        finally:
            self._pending.pop(token, None)

    async def _until_done(self, token: str, delivery: _Delivery) -> None:
        first = time.monotonic()
        attempt = 0
        while True:
            delivery.posting, delivery.again = True, False
            started = time.time()
            outcome, retry_after = await self._post(token, delivery.token_id)
            delivery.posting = False
            if outcome == "ok":
                metrics.NOTIFICATIONS.labels("sent").inc()
                if not delivery.again:
                    return
                await asyncio.sleep(self.cfg.coalesce)  # mail that came in during the POST: one more
                first, attempt = time.monotonic(), 0
                continue
            if outcome == "gone":
                metrics.NOTIFICATIONS.labels("gone").inc()
                await self.on_gone(token, delivery.token_id, started)
                return
            if outcome == "drop":
                metrics.NOTIFICATIONS.labels("dropped").inc()
                return
            delay = retry_delay(attempt, self.cfg.retry_base, self.cfg.retry_max_delay, retry_after)
            attempt += 1
            if time.monotonic() + delay - first > self.cfg.retry_deadline:
                metrics.NOTIFICATIONS.labels("dropped").inc()
                log.warning(
                    "Delta Chat notification for token %s dropped: the gateway failed for %.0f s (%d attempts)",
                    delivery.token_id,
                    time.monotonic() - first,
                    attempt,
                )
                return
            await self._backoff(delay)

    async def _backoff(self, delay: float) -> None:
        self._retrying += 1
        metrics.RETRYING.set(self._retrying)
        try:
            await asyncio.sleep(delay)
        finally:
            self._retrying -= 1
            metrics.RETRYING.set(self._retrying)

    async def _post(self, token: str, token_id: str) -> tuple[Outcome, float | None]:
        assert self._session is not None, "start() first"
        async with self._slots:
            began = time.monotonic()
            try:
                async with self._session.post(
                    self.cfg.notify_url,
                    data=token.encode("ascii"),
                    headers={"Content-Type": "text/plain"},
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), cap=self.cfg.retry_max_delay)
                    await resp.content.read(_MAX_ANSWER)
            except TimeoutError:
                metrics.request("error", time.monotonic() - began)
                metrics.failure("timeout")
                log.info("Delta Chat gateway timed out for token %s; retrying", token_id)
                return "retry", None
            except (aiohttp.ClientError, OSError) as exc:
                metrics.request("error", time.monotonic() - began)
                metrics.failure("transport")
                log.info("Delta Chat gateway unreachable for token %s (%s); retrying", token_id, type(exc).__name__)
                return "retry", None
        metrics.request(str(status), time.monotonic() - began)
        if 200 <= status < 300:
            return "ok", None
        metrics.failure(f"http_{status}" if 300 <= status < 600 else "http_other")
        if status == 410:
            log.info("Delta Chat gateway says token %s is gone (410): removing it", token_id)
            return "gone", None
        if status in (408, 429) or 500 <= status < 600:
            log.info("Delta Chat gateway answered %d for token %s; retrying", status, token_id)
            return "retry", retry_after
        log.warning("Delta Chat gateway answered %d for token %s; notification dropped", status, token_id)
        return "drop", None
