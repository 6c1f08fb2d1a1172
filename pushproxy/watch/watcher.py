"""One account's upstream watcher: an IMAP connection turning changes into events.

Per connection (:class:`~pushproxy.watch.upstream.WatcherProtocol`, after login):

1. ``ENABLE QRESYNC`` when offered (UIDs in expunge / flag-change responses,
   HIGHESTMODSEQ to catch up on changes; only used for mailboxes whose
   subscribers want changes).
2. With NOTIFY (RFC 5465): ``NOTIFY SET (selected (MessageNew MessageExpunge
   [FlagChange])) (mailboxes (<others>) (...))``: the selected mailbox
   reports EXISTS/FETCH/VANISHED, the others ``* STATUS``.  Dovecot 2.3 never
   reports a mailbox named with non-ASCII characters in ``mailboxes``, and
   names it in raw UTF-8 with ``personal``: for such names the watcher asks
   for ``personal`` and matches both spellings (the core decodes either).
   Without NOTIFY: IDLE on the primary mailbox (INBOX if watched), up to
   ``watch.idle_connections - 1`` more connections IDLE on the next
   mailboxes (:mod:`~pushproxy.watch.idlers`), and the rest is polled with
   STATUS on an adaptive schedule (:class:`~pushproxy.watch.pacing.PollSchedule`).
   Without IDLE: NOOP on the same schedule.
3. Catch up: every watched mailbox is compared with the stored state, so mail
   that arrived while disconnected produces its events, once.
4. IDLE on the primary mailbox (EXAMINEd: the watcher never changes flags),
   re-issued after at most ``watch.idle_refresh`` (a random 50-100 % of it each time, so that
   watchers started together do not refresh together: :func:`~pushproxy.watch.pacing.spread`).

When the spec asks for it (``WatchSpec.list_subscribed``), the account's
subscribed mailboxes are listed (:mod:`~pushproxy.watch.subscribed`) right
after login, every ``list_subscribed`` seconds and when :meth:`Watcher.relist`
asks, and handed to ``on_listed`` (the extensions), which answers with the spec
now: a changed one is used at once at login, and by reconnecting later on.

The detection itself is :class:`~pushproxy.watch.tracker.MailboxTracker`
(pure); the connection (:class:`~pushproxy.watch.watching.Detector`) waits and
its detection step (:class:`~pushproxy.watch.checks.MailboxChecks`) performs
the commands the tracker asks for.

Dovecot note: the watcher is one more IMAP connection of the user from the
proxy's address (``idle_connections`` of them without NOTIFY), counted by
``mail_max_userip_connections``; raise that limit accordingly.

States: ``connecting``, ``idle`` (the server pushes every watched mailbox),
``polling`` (some mailboxes are only polled), ``backoff``, ``auth_failed``
(waiting for the user's next successful login), ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Final, Literal

from pushproxy import metrics
from pushproxy.config import Config
from pushproxy.imap.data import ListItem
from pushproxy.push.pipeline import PushPipeline
from pushproxy.retry import Backoff
from pushproxy.store.base import Store, StoreUnavailable
from pushproxy.watch.checks import MailboxStates
from pushproxy.watch.connect import login, open_connection
from pushproxy.watch.credentials import CredentialProvider
from pushproxy.watch.pacing import ConnectLimiter, spread
from pushproxy.watch.spec import WatchSpec
from pushproxy.watch.subscribed import list_subscribed
from pushproxy.watch.tracker import MailboxTracker
from pushproxy.watch.upstream import WatcherProtocol
from pushproxy.watch.upstream_types import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    LoginCredentials,
    UpstreamError,
)
from pushproxy.watch.watching import Detector

__all__ = ["STATES", "Listed", "Watcher", "WatcherState"]

log = logging.getLogger(__name__)

WatcherState = Literal["connecting", "idle", "polling", "backoff", "auth_failed", "stopped"]
STATES: tuple[WatcherState, ...] = ("connecting", "idle", "polling", "backoff", "auth_failed", "stopped")

StateCallback = Callable[["Watcher", WatcherState, WatcherState], None]
# (account, its subscribed mailboxes as just listed) -> the spec now (None: keep the current one).
Listed = Callable[[str, list[ListItem]], Awaitable[WatchSpec | None]]

_STABLE_AFTER = 30.0  # a connection that lived this long resets the backoff
# relist() lists at most this often: a client toggling a subscription in a loop must not
# turn into a LIST (and a reconnect, when the set changes) for each command.
MIN_RELIST_INTERVAL = 5.0
_TRANSIENT = (UpstreamError, OSError, TimeoutError)


class Watcher:
    """Watches the mailboxes of one account."""

    def __init__(
        self,
        account: str,
        spec: WatchSpec,
        *,
        config: Config,
        store: Store,
        credentials: CredentialProvider,
        pipeline: PushPipeline,
        limiter: ConnectLimiter,
        tls_context: ssl.SSLContext | None = None,
        on_state: StateCallback | None = None,
        on_listed: Listed | None = None,
        states: MailboxStates | None = None,
    ) -> None:
        self.account = account
        self.spec = spec
        # What its connections (pushproxy.watch.watching) read; never rebound.
        self.config: Final = config
        self.store: Final = store
        # Mailbox state through memory: a store outage neither stops the watcher nor loses its state.
        self.states: Final = states if states is not None else MailboxStates(store, store.health)
        self.pipeline: Final = pipeline  # where the connection's events go (MailboxChecks._apply)
        self.limiter: Final = limiter
        self.tls_context: Final = tls_context
        self.wake_event: Final = asyncio.Event()
        self._watch = config.watch
        self._last_creds: LoginCredentials | None = None  # to reconnect while the store is away
        self._credentials = credentials
        self._on_state = on_state
        self._on_listed = on_listed
        self._relist = False  # relist() asked for a listing
        self._next_list: float | None = None  # monotonic time of the next periodic listing
        self._listed_at = 0.0  # monotonic time of the last listing
        self.state: WatcherState = "connecting"
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._backoff = Backoff(self._watch.backoff_min, self._watch.backoff_max)
        self._conn: WatcherProtocol | None = None
        self.connections = 0  # successful logins of the main connection, for tests and the bench
        # When the account last had news (epoch seconds: its last event, or a login through the
        # proxy): the connect gate lets the most recent first.
        self.priority = 0.0

    # ------------------------------------------------------------------ control

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def mark_auth_failed(self) -> None:
        """Known to be refused upstream (a stale stored credential): wait for a new login, do not start."""
        self._set_state("auth_failed")

    def relist(self) -> None:
        """List the subscribed mailboxes again soon (a client (un)subscribed through the proxy)."""
        if self.spec.list_subscribed is not None:
            self._relist = True
            if self.state in ("idle", "polling"):
                self.wake_event.set()  # not in backoff: that wait stays as long as it is

    def poke(self) -> None:
        """Retry now if waiting in backoff (e.g. new credentials arrived)."""
        if self.state == "backoff":
            self._backoff.reset()
            self.wake_event.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """LOGOUT and end (bounded by ``timeout``; then the task is cancelled)."""
        self._stopping = True
        self.wake_event.set()
        task = self._task
        if task is not None and not task.done() and (self._conn is None or self.state == "connecting"):
            # Nothing to log out of (waiting in backoff or for a connect slot, or still
            # logging in): end at once rather than wait for the wait to end.
            task.cancel()
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except Exception as exc:  # the task logged its own failure
                log.debug("watcher %s ended with %s", self.account, _describe(exc))
        if self._conn is not None:
            self._conn.abort()
            self._conn = None
        if self.state != "auth_failed":
            self._set_state("stopped")

    def _set_state(self, state: WatcherState) -> None:
        old = self.state
        if old == state:
            return
        self.state = state
        if self._on_state is not None:
            self._on_state(self, old, state)

    def mark_active(self) -> None:
        """The account just had mail: first in line for a connection slot at the next reconnect."""
        self.priority = time.time()

    # ------------------------------------------------------------------ main loop

    async def _run(self) -> None:
        try:
            while not self._stopping:
                self.wake_event.clear()
                try:
                    creds = await self._credentials.get(self.account)
                except StoreUnavailable as exc:
                    # The store is away (said once by its health): the credentials this watcher logged in
                    # with last are still the account's; without them, wait and try again.
                    log.debug("watcher %s: credentials not readable: %s", self.account, exc)
                    creds = self._last_creds
                    if creds is None:
                        await self._pause()
                        continue
                if creds is None:
                    status = await self._credentials.status(self.account)
                    log.info("watcher %s: no usable credentials (%s); waiting for the next login", self.account, status)
                    self._set_state("auth_failed" if status == "failed" else "stopped")
                    return
                self._set_state("connecting")
                connected_at: float | None = None
                reconnect_now = False
                try:
                    # The one gate of every watcher connection (start, restart, takeover, reconnects):
                    # the rate, a bound on logins in flight, the most recently active accounts first.
                    async with self.limiter.slot(self.priority):
                        if self._stopping:
                            break
                        conn = await open_connection(
                            self.config.upstream, self.tls_context, command_timeout=self._watch.command_timeout
                        )
                        self._conn = conn
                        async with asyncio.timeout(self._watch.command_timeout * 2):
                            await login(conn, creds)
                    connected_at = time.monotonic()
                    self._last_creds = creds
                    self.connections += 1
                    reconnect_now = await self._connected(conn, creds)
                except AuthenticationFailed as exc:
                    log.info("watcher %s: %s; stopped until the user logs in again", self.account, exc)
                    with contextlib.suppress(StoreUnavailable):  # then the next start tries once more
                        await self._credentials.mark_failed(self.account)
                    self._set_state("auth_failed")
                    return
                except StoreUnavailable as exc:  # said once per outage by the store's health
                    log.debug("watcher %s: store unavailable: %s; retrying", self.account, exc)
                except _TRANSIENT as exc:
                    if not self._stopping:
                        log.info("watcher %s: upstream connection failed: %s", self.account, _describe(exc))
                except Exception:
                    if not self._stopping:
                        log.exception("watcher %s: unexpected error", self.account)
                finally:
                    if self._conn is not None:
                        self._conn.abort()
                        self._conn = None
                if self._stopping:
                    break
                if reconnect_now:
                    continue
                if connected_at is not None and time.monotonic() - connected_at >= _STABLE_AFTER:
                    self._backoff.reset()
                await self._pause()
        finally:
            if self.state != "auth_failed":
                self._set_state("stopped")
            if self._stopping:
                log.debug("watcher %s: stopped", self.account)

    async def _pause(self) -> None:
        """Back off before the next attempt (cut short by :meth:`poke`)."""
        delay = self._backoff.next()
        self._set_state("backoff")
        metrics.WATCHER_RECONNECTS.inc()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake_event.wait(), delay)

    async def _connected(self, conn: WatcherProtocol, creds: LoginCredentials) -> bool:
        """One logged-in connection, until it fails or the watcher stops; True: reconnect at once."""
        await self.refresh_mailboxes(conn)
        detector = Detector(self, conn, MailboxTracker(self.account, self.spec), creds)
        try:
            return await detector.run()
        finally:
            await detector.close()

    @property
    def next_list(self) -> float | None:
        """When the subscribed mailboxes are due to be listed again (monotonic), if ever."""
        if self._relist:
            soon = self._listed_at + MIN_RELIST_INTERVAL
            return soon if self._next_list is None else min(soon, self._next_list)
        return self._next_list

    async def refresh_mailboxes(self, conn: WatcherProtocol) -> bool:
        """List the subscribed mailboxes if the spec asks for it; True when the spec changed.

        A refused listing keeps the mailboxes watched so far (one log line);
        a timeout or a lost connection is the connection's failure (reconnect).
        """
        self._relist = False
        every = self.spec.list_subscribed
        if every is None or self._on_listed is None:
            self._next_list = None
            return False
        self._listed_at = time.monotonic()
        self._next_list = self._listed_at + spread(max(1.0, every))  # not every watcher of a ramp at once
        try:
            items = await list_subscribed(conn)
        except CommandFailed as exc:
            log.info("watcher %s: %s; still watching %s", self.account, exc, ", ".join(self.spec.mailboxes))
            return False
        spec = await self._on_listed(self.account, items)
        if spec is None or spec == self.spec:
            return False
        log.info("watcher %s: mailboxes now %s", self.account, ", ".join(spec.mailboxes))
        self.spec = spec
        return True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def set_mode(self, polling: bool) -> None:
        self._set_state("polling" if polling else "idle")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionLost):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
