"""Registration changes, from every writer on every node, to this node's lease manager.

This node's own writes (IMAP extensions, senders pruning dead devices and
subscriptions, housekeeping) arrive through the store's registration
listener; the other nodes' through PostgreSQL LISTEN on a dedicated
connection (the store NOTIFYs in the same transaction as the change, so a
notice never precedes the data).  Changes are coalesced per account and
handled one at a time, in the background.  If the listening connection is
lost, it reconnects with backoff and then resyncs every held account, since
notices sent meanwhile are gone; the lease rounds are a slower safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pushproxy.retry import Backoff
from pushproxy.store.base import StoreUnavailable
from pushproxy.store.sql import SqlStore
from pushproxy.store.sql_base import REGISTRATIONS_CHANNEL

log = logging.getLogger("pushproxy.cluster")

CONNECT_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 5.0  # a lost listening connection is noticed within this
BACKOFF_MIN, BACKOFF_MAX = 1.0, 30.0


class RegistrationFeed:
    def __init__(
        self,
        store: SqlStore,
        on_change: Callable[[str], Awaitable[None]],
        resync: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._resync = resync
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._resync_all = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()  # set while the PostgreSQL LISTEN connection is up (tests)

    def start(self) -> None:
        self._store.add_registration_listener(self.push)
        self._tasks.append(asyncio.ensure_future(self._work()))
        dsn = getattr(self._store.backend, "dsn", None)
        if dsn is not None:
            self._tasks.append(asyncio.ensure_future(self._listen(dsn)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def push(self, account: str | None) -> None:
        """An account's registrations changed (None or "": some account, resync all)."""
        if account:
            self._pending[account] = None
        else:
            self._resync_all = True
        self._idle.clear()
        self._wake.set()

    async def drained(self) -> None:
        """Wait until every change pushed so far was handled (tests)."""
        await self._idle.wait()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._resync_all or self._pending:
                try:
                    if self._resync_all:
                        self._resync_all = False
                        await self._resync()
                        continue
                    account = next(iter(self._pending))
                    del self._pending[account]
                    await self._on_change(account)
                except StoreUnavailable as exc:  # said once per outage by the store's health; a resync follows
                    self._store.health.failed(exc)
                    self._resync_all = True
                    log.debug("cluster: following a registration change failed: %s", exc)
                    await self._store.health.returned.wait()
                except Exception as exc:  # one failure must not stop the feed; the lease rounds catch up
                    log.warning("cluster: following a registration change failed: %s: %s", type(exc).__name__, exc)
            self._idle.set()

    async def _listen(self, dsn: str) -> None:
        import asyncpg

        backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        first = True
        while True:
            conn: Any = None
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT * 2):
                    conn = await asyncpg.connect(
                        dsn, timeout=CONNECT_TIMEOUT, server_settings={"application_name": "pushproxy-listen"}
                    )
                    await conn.add_listener(REGISTRATIONS_CHANNEL, self._notice)
                if not first:
                    self._store.registrations.changed(None)  # notices sent while we were away are lost
                    self.push(None)
                first = False
                backoff.reset()
                self.listening.set()
                while True:  # a dead connection (server restart, network) is noticed by the keepalive
                    await asyncio.sleep(KEEPALIVE_INTERVAL)
                    async with asyncio.timeout(KEEPALIVE_INTERVAL):
                        await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store's health says it once per outage; the resync follows
                self._store.health.failed(f"registration notices: {type(exc).__name__}: {exc}")
                log.debug("cluster: registration notices unavailable (%s: %s); retrying", type(exc).__name__, exc)
            finally:
                self.listening.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(backoff.next())

    def _notice(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._store.registrations.changed(payload)  # another node's write: the senders' view re-reads it
        self.push(payload)
