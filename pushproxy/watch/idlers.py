"""Extra IDLE connections (``watch.idle_connections`` > 1) for servers without NOTIFY.

Without NOTIFY one connection can IDLE on one mailbox only; the others are
polled.  An :class:`ExtraIdler` keeps one more connection of the account
IDLE on one more watched mailbox and only *reports* activity there (EXISTS,
a flag change, an expunge): the watcher's main connection then runs the
detection step for that mailbox, so every path shares one detection logic.
While an extra connection is down its mailbox is polled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable

from pushproxy.config import Config
from pushproxy.imap.commands import mailbox_arg
from pushproxy.imap.data import Response
from pushproxy.retry import Backoff
from pushproxy.watch.connect import login, open_connection
from pushproxy.watch.pacing import ConnectLimiter, spread
from pushproxy.watch.upstream import WatcherProtocol
from pushproxy.watch.upstream_types import AuthenticationFailed, LoginCredentials, UpstreamError

__all__ = ["ExtraIdler"]

log = logging.getLogger("pushproxy.watch.watcher")

_ACTIVITY = frozenset({"EXISTS", "EXPUNGE", "VANISHED", "FETCH", "BYE"})


class ExtraIdler:
    """One more IDLE connection on ``mailbox``; calls ``on_activity(mailbox, when)``."""

    def __init__(
        self,
        account: str,
        mailbox: str,
        creds: LoginCredentials,
        *,
        config: Config,
        tls_context: ssl.SSLContext | None,
        limiter: ConnectLimiter,
        on_activity: Callable[[str, float], None],
        on_change: Callable[[], None],
    ) -> None:
        self.account = account
        self.mailbox = mailbox
        self._creds = creds
        self._config = config
        self._tls = tls_context
        self._limiter = limiter
        self._on_activity = on_activity
        self._on_change = on_change
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.idling = False  # connected and IDLE on the mailbox (else: poll it)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stop.set()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _set_idling(self, idling: bool) -> None:
        if idling != self.idling:
            self.idling = idling
            self._on_change()

    async def _run(self) -> None:
        watch = self._config.watch
        backoff = Backoff(watch.backoff_min, watch.backoff_max)
        while not self._stop.is_set():
            conn: WatcherProtocol | None = None
            try:
                # Through the watchers' connect gate, after the main connections waiting with it.
                async with self._limiter.slot():
                    conn = await open_connection(
                        self._config.upstream, self._tls, command_timeout=watch.command_timeout
                    )
                    async with asyncio.timeout(watch.command_timeout * 2):
                        await login(conn, self._creds)
                result = await conn.command(b"EXAMINE " + mailbox_arg(self.mailbox))
                if not result.ok or "IDLE" not in conn.capabilities:
                    log.info("watcher %s: extra IDLE on %s impossible; polling it", self.account, self.mailbox)
                    return
                backoff.reset()
                self._set_idling(True)
                await self._idle(conn)
            except AuthenticationFailed:
                return  # the main connection reports (and handles) refused credentials
            except (UpstreamError, OSError, TimeoutError) as exc:
                log.debug("watcher %s: extra IDLE on %s failed: %s", self.account, self.mailbox, exc)
            finally:
                self._set_idling(False)
                if conn is not None:
                    conn.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff.next())

    async def _idle(self, conn: WatcherProtocol) -> None:
        refresh = max(0.2, self._config.watch.idle_refresh)
        first: list[float] = []

        def interesting(resp: Response) -> bool:
            hit = resp.kind in _ACTIVITY
            if hit and not first:
                first.append(time.monotonic())
            return hit

        while not self._stop.is_set():
            first.clear()
            responses = await conn.idle(time.monotonic() + spread(refresh), self._stop, interesting)
            if any(r.kind == "BYE" for r in responses):
                raise UpstreamError("upstream said BYE")
            if first:
                self._on_activity(self.mailbox, first[0])
        await conn.logout(min(self._config.watch.command_timeout, 5.0))
