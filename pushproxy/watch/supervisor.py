"""The watcher supervisor: one upstream watcher per account with push registrations.

It owns the watchers (:mod:`pushproxy.watch.watcher`) and is the proxy's
:class:`~pushproxy.extensions.base.CredentialSink` (what it keeps of the
logins: :mod:`pushproxy.watch.logins`): every successful client
LOGIN / AUTHENTICATE PLAIN is reported to :meth:`Supervisor.logged_in`, and
the push extensions call :meth:`Supervisor.registration_changed` after a
registration was added, changed or removed.

- ``start()`` starts a watcher for every account with registrations whose
  credentials are available (vault: stored and not stale; master: always;
  memory: none until the user logs in).  New connections are paced by
  ``watch.connect_rate`` (also after an upstream restart, when every watcher
  reconnects), reconnects back off exponentially with jitter from
  ``watch.backoff_min`` to ``watch.backoff_max``.
- A watcher whose login upstream refuses stops in state ``auth_failed`` (the
  vault credential is marked stale) until the user's next successful login,
  which stores the new password and restarts it.
- ``close()`` logs every watcher out (bounded) and cancels what is left.

Each watcher is one IMAP connection of the user from the proxy's address, which
Dovecot's ``mail_max_userip_connections`` (default 10 per user and IP) counts
with the user's own sessions through the proxy: raise that limit upstream.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from pushproxy import metrics
from pushproxy.accounts import normalise_account
from pushproxy.config import Config, ConfigError
from pushproxy.imap.data import ListItem
from pushproxy.push.pipeline import PushPipeline
from pushproxy.store.base import Store, StoreUnavailable
from pushproxy.watch.checks import MailboxStates
from pushproxy.watch.connect import make_tls_context
from pushproxy.watch.credentials import CredentialProvider, MasterLoginStyle, make_provider
from pushproxy.watch.logins import AccountLocks, CapturedLogin, LiveLogins
from pushproxy.watch.pacing import ConnectLimiter
from pushproxy.watch.progress import RampProgress, WatcherCensus
from pushproxy.watch.spec import WatchSpec
from pushproxy.watch.watcher import Watcher, WatcherState

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

_STOP_TIMEOUT = 10.0  # per watcher at close(): LOGOUT, then cancel


class WatchSource(Protocol):
    """Which mailboxes of an account to watch (the extensions decide: ``pushproxy.extensions.manager``)."""

    async def spec(self, account: str) -> WatchSpec | None: ...

    async def specs(self) -> dict[str, WatchSpec]: ...

    async def specs_of(self, accounts: Sequence[str]) -> dict[str, WatchSpec]:
        """:meth:`spec` of many accounts, one store query per extension; those without a spec left out."""

    async def listed(self, account: str, items: list[ListItem]) -> WatchSpec | None:
        """A watcher listed the account's subscribed mailboxes (``WatchSpec.list_subscribed``); the spec now."""


class Supervisor:
    """Starts, reconfigures and stops the upstream watchers; a CredentialSink."""

    def __init__(
        self,
        config: Config,
        store: Store,
        pipeline: PushPipeline,
        *,
        credentials: CredentialProvider | None = None,
        master_style: MasterLoginStyle = "separator",
        watching: WatchSource,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._watching = watching
        self._pipeline = pipeline
        # Several nodes: run a watcher only for accounts this node holds the lease of (pushproxy.cluster).
        self._owns = owns
        self._credentials = credentials or make_provider(config, store, master_style=master_style)
        watch = config.watch
        self._limiter = ConnectLimiter(
            watch.connect_rate, in_flight=watch.connect_in_flight, on_grant=metrics.WATCHERS_LOGINS.inc
        )
        self._census = WatcherCensus()
        self._progress = RampProgress(self._limiter, self._census.up_and_wanted)
        try:
            self._tls = make_tls_context(config.upstream) if config.upstream.security != "none" else None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"upstream.ca_file {config.upstream.ca_file}: {exc}") from exc
        # The watchers' mailbox state, in memory too: kept through a store outage, written back after.
        self.states = MailboxStates(store, store.health)
        self._watchers: dict[str, Watcher] = {}
        self._logins = LiveLogins()
        self._locks = AccountLocks()
        # The accounts that logged in or changed while a batch (registrations_changed) was read and
        # followed, one set per batch in progress: those the batch's reads may be older than.
        self._batches: list[set[str]] = []
        self._closed = False
        self.wanted = 0  # accounts with registrations at start (the file descriptor estimate's)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start a watcher for every account with registrations and usable credentials.

        Everything is read before the first watcher starts, so that the
        start-up reads do not queue behind the watchers' own store writes.
        """
        specs = await self._watching.specs()  # without accounts the user's next login starts
        self.wanted = len(specs)
        activity = await self._store.last_activity()
        statuses = await self._credentials.statuses(list(specs))  # one store query (vault)
        plan = [(a, spec, statuses[a] == "failed") for a, spec in specs.items() if statuses[a] != "missing"]
        # The most recently active accounts first (they get new mail soonest); the connect gate
        # keeps that order for every later reconnect too (Watcher.priority).
        plan.sort(key=lambda item: activity.get(item[0], 0.0), reverse=True)
        self._progress.start()
        for i, (account, spec, failed) in enumerate(plan):
            if i % 500 == 499:
                await asyncio.sleep(0)  # tens of thousands of launches are not one stall of the loop
            if self._closed:
                return
            if account not in self._watchers:
                self._launch(account, spec, dormant=failed, priority=activity.get(account, 0.0))
        waiting = sum(1 for _, _, failed in plan if failed)
        log.info(
            "watchers: %d starting (at most %.0f connections/s), %d waiting for a new login after an auth failure",
            len(plan) - waiting,
            self._config.watch.connect_rate,
            waiting,
        )

    async def close(self) -> None:
        """Stop every watcher (LOGOUT, bounded), cancel what is left."""
        self._closed = self._locks.closing = True
        await self._progress.stop()
        watchers = list(self._watchers.values())
        if watchers:
            await asyncio.gather(*(w.stop(_STOP_TIMEOUT) for w in watchers), return_exceptions=True)
        self._logins.clear()
        if self.states.pending and self._store.health.up:
            try:  # the last state, for whoever watches these accounts next
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await self.states.flush()
            except (StoreUnavailable, TimeoutError) as exc:
                log.info("watchers: %d mailbox state(s) not written at shutdown: %s", self.states.pending, exc)

    def status(self) -> dict[str, int]:
        """Watchers by state (every state present, zeros included)."""
        return self._census.by_state()

    def watcher(self, account: str) -> Watcher | None:
        """The watcher of an account (for tests and diagnostics)."""
        return self._watchers.get(normalise_account(account))

    # ------------------------------------------------------------------ CredentialSink

    async def logged_in(self, account: str, login: str, secret: str, session_id: str) -> None:
        account = normalise_account(account)
        # Kept before any await: a registration in this session may follow at once.
        captured = self._logins.capture(session_id, account, login, secret)
        if self._closed:
            return
        self._touched(account)
        async with self._locks.hold(account):
            await self._hand_over(captured)

    async def session_closed(self, session_id: str) -> None:
        """The session ended: its captured credentials go, after the provider took them if needed.

        The push extensions report a registration from a task of their own, so a
        client that registers and logs out at once may have its session closed
        before (or while) that registration is followed.  The close therefore
        waits its turn behind the account's pending login / registration
        handling (the lock is first come, first served) and, if the account now
        has registrations the credentials were not yet given for, gives them
        itself, like a login does -- the provider keeps them by its own rules
        (``memory``: in memory only).  Without registrations nothing is kept.
        """
        captured = self._logins.get(session_id)
        if captured is None:
            return
        try:
            if not self._closed:
                async with self._locks.hold(captured.account):
                    if self._logins.may_be_missing(captured):
                        await self._hand_over(captured)
        finally:
            self._logins.drop(session_id)

    async def registration_changed(self, account: str, session_id: str | None = None) -> None:
        """A registration of ``account`` was added, changed or removed: follow it."""
        account = normalise_account(account)
        if self._closed:
            return
        self._touched(account)
        async with self._locks.hold(account):
            spec = await self._spec(account)
            await self._follow(account, spec, self._logins.latest(account, session_id))

    async def registrations_changed(self, accounts: Sequence[str]) -> None:
        """:meth:`registration_changed` of many accounts (lease starts, takeovers, a resync): their specs,
        credential status and last activity read with one query each (per extension), then each followed
        under its lock; one that logs in or changes meanwhile gets its own read.  A store fault raises
        StoreUnavailable before any is followed."""
        accounts = list(dict.fromkeys(normalise_account(a) for a in accounts))
        if self._closed or not accounts:
            return
        meanwhile: set[str] = set()
        self._batches.append(meanwhile)
        try:
            specs = await self._watching.specs_of(accounts)
            # Not the user's doing: each keeps its place in the connect queue (its last activity).
            activity = await self._store.last_activity(accounts)
            latest = self._logins.latest_of_each()
            statuses = {}
            if self._credentials.needs_user_login:
                statuses = await self._credentials.statuses([a for a in accounts if a in specs and a not in latest])
            for account in accounts:
                if self._closed:
                    return
                if account in meanwhile:
                    await self.registration_changed(account)
                    continue
                async with self._locks.hold(account):
                    spec, status = specs.get(account), statuses.get(account)
                    await self._follow(account, spec, latest.get(account), status, activity.get(account, 0.0))
        finally:
            self._batches.remove(meanwhile)

    def _touched(self, account: str) -> None:
        for batch in self._batches:
            batch.add(account)

    async def _follow(
        self,
        account: str,
        spec: WatchSpec | None,
        captured: CapturedLogin | None,
        status: str | None = None,
        priority: float | None = None,
    ) -> None:
        """Bring the account's watcher in line with ``spec``, under the account's lock (``captured``: its
        latest session's credentials; ``status`` and ``priority``: a batch's, see :meth:`_ensure`)."""
        if spec is None:
            await self._remove(account)
            self._logins.forgotten()
            await self._credentials.forget(account)
            # A later registration starts afresh instead of pushing what arrived meanwhile.
            self.states.forget(account)
            await self._store.delete_mailbox_states(account)
            log.info("watcher %s: no registrations left; stopped", account)
            return
        changed = False
        if captured is not None:
            changed = await self._remember(captured)
        elif self._credentials.needs_user_login and (status or await self._credentials.status(account)) == "missing":
            log.info(
                "watcher %s: no credentials captured (login was not LOGIN / AUTHENTICATE PLAIN); "
                "push starts after such a login",
                account,
            )
            return
        await self._ensure(account, spec, changed, priority)

    def relist_subscribed(self, account: str) -> None:
        """A client (un)subscribed through the proxy: the account's watcher lists its mailboxes again."""
        watcher = self._watchers.get(normalise_account(account))
        if watcher is not None:
            watcher.relist()

    async def release(self, account: str, lost: bool = False) -> None:
        """Stop the account's watcher, keeping its state: another node (or a later lease) takes it from there.

        ``lost``: another node holds the lease already; what this node did not store is not written
        (the other node's state is newer)."""
        async with self._locks.hold(account):
            await self._remove(account)
            try:  # its last state first, so that the next owner catches up from there
                if not lost:
                    async with asyncio.timeout(_STOP_TIMEOUT):
                        await self.states.flush(account)
            except (StoreUnavailable, TimeoutError) as exc:
                log.debug("watcher %s: last mailbox state not written: %s", account, exc)
            finally:
                self.states.forget(account)

    # ------------------------------------------------------------------ internals

    async def _listed(self, account: str, items: list[ListItem]) -> WatchSpec | None:
        return await self._watching.listed(account, items)

    async def _hand_over(self, captured: CapturedLogin) -> None:
        """Give a session's credentials to the provider if its account has registrations (under its lock)."""
        spec = await self._spec(captured.account)
        if spec is None:
            return  # no registrations: nothing is stored for this account
        changed = await self._remember(captured)
        await self._ensure(captured.account, spec, changed)

    async def _remember(self, captured: CapturedLogin) -> bool:
        """Give the provider a session's credentials; True if they changed what it keeps.

        A store that cannot take them now (full, read-only, busy: logged once per
        episode by the store) leaves them untaken: the session's end, or the
        account's next login, offers them again.
        """
        try:
            changed = await self._credentials.remember(captured.account, captured.login, captured.secret)
        except StoreUnavailable as exc:
            log.debug("watcher %s: credentials not kept now: %s", captured.account, exc.reason)
            return False
        self._logins.taken(captured)
        return changed

    async def _spec(self, account: str) -> WatchSpec | None:
        return await self._watching.spec(account)

    async def _ensure(
        self, account: str, spec: WatchSpec, credentials_changed: bool, priority: float | None = None
    ) -> None:
        """``priority``: a lease batch's (the account's last activity); None: the user is active now."""
        current = self._watchers.get(account)
        if current is not None and priority is None:
            current.priority = time.time()  # the user is active now: first in line at the next reconnect
        if current is not None and current.spec == spec and current.running:
            if credentials_changed:
                current.poke()  # if it waits in backoff, try the new credentials now
            return
        if current is not None:
            if current.spec != spec:
                log.info("watcher %s: mailboxes now %s; restarting", account, ", ".join(spec.mailboxes))
            await self._remove(account)
        if self._closed:
            return
        self._launch(account, spec, priority=priority)

    def _launch(self, account: str, spec: WatchSpec, *, dormant: bool = False, priority: float | None = None) -> None:
        if self._owns is not None and not self._owns(account):
            return  # another node watches it
        if priority is None:  # a login, a registration, a takeover: active now, or as active as before
            previous = self._watchers.get(account)
            priority = previous.priority if previous is not None else time.time()
        watcher = Watcher(
            account,
            spec,
            config=self._config,
            store=self._store,
            credentials=self._credentials,
            pipeline=self._pipeline,
            limiter=self._limiter,
            tls_context=self._tls,
            on_state=self._state_changed,
            on_listed=self._listed,
            states=self.states,
        )
        watcher.priority = priority
        self._watchers[account] = watcher
        self._census.add(watcher.state)
        if dormant:
            watcher.mark_auth_failed()
        else:
            watcher.start()

    async def _remove(self, account: str) -> None:
        watcher = self._watchers.pop(account, None)
        if watcher is None:
            return
        self._census.remove(watcher.state)
        await watcher.stop(_STOP_TIMEOUT)

    def _state_changed(self, watcher: Watcher, old: WatcherState, new: WatcherState) -> None:
        if self._watchers.get(watcher.account) is not watcher:
            return  # already removed: no longer counted
        self._census.moved(old, new)
