"""The extension manager: one object owns the extensions, their lifecycle and every call of their hooks.

mitmproxy's ``AddonManager`` is the model.  The core never calls an extension
itself: the session asks the manager for capabilities, command handlers and the
hooks of a closing session; the push pipeline hands it every event; the watcher
supervisor asks it which mailboxes to watch.  Every hook call goes through
:meth:`ExtensionManager.safecall`, with one error policy: an exception raised by
an extension is logged once with the extension's and the hook's name (no
traceback, no message text: it may carry a token or an endpoint), counted in
``pushproxy_extension_errors_total{extension,hook}``, and never reaches the
core's caller, which gets the hook's neutral answer instead (no watch request,
nothing done; a command gets ``NO [UNAVAILABLE]``, which clients retry).

Two exceptions to "every hook": ``configure`` (a bad section is a config error,
reported by ``check-config``) and ``start`` (an extension that cannot start,
e.g. an unreadable APNs key, stops the proxy's start, as before).  A store
fault (:class:`~pushproxy.store.base.StoreUnavailable`, logged by the store)
in a watch query or a command is passed on too: the supervisor then keeps the
account's watcher as it is instead of reading "nothing wanted" from an outage,
and the session answers ``NO [UNAVAILABLE] <reason>``.

The manager is also the :class:`~pushproxy.extensions.base.Core` the
extensions are attached to (config, store, ``registration_changed``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pushproxy.config import Config
from pushproxy.extensions import check_sections, extension_classes
from pushproxy.extensions.base import (
    Claim,
    Extension,
    Handler,
    RegistrationChanged,
    Reply,
    SessionContext,
    WatchRequest,
)
from pushproxy.extensions.safecall import failed, guarded
from pushproxy.retry import Backoff
from pushproxy.store.base import StoreUnavailable
from pushproxy.watch.spec import WatchSpec

if TYPE_CHECKING:
    from pushproxy.config_check import FileReport
    from pushproxy.events import MailEvent
    from pushproxy.imap.data import ListItem
    from pushproxy.imap.parse import Command
    from pushproxy.store.base import Store

__all__ = ["ExtensionManager", "merge_requests"]

log = logging.getLogger("pushproxy.extensions")

# An extension that cannot read what a send needs (the store away, registrations never read here) gets
# the event again with backoff for this long; then it is dropped with one WARNING (a documented rule).
EVENT_RETRY_FOR = 600.0
EVENT_RETRY_MIN, EVENT_RETRY_MAX = 1.0, 30.0
EVENT_RETRY_MAX_WAITING = 10_000

_COMMAND_FAILED = Reply("NO", "Internal error in the proxy, please retry", "UNAVAILABLE")


def merge_requests(requests: Sequence[WatchRequest]) -> WatchSpec | None:
    """One watch spec for all the extensions' requests; None when none asks for anything."""
    if not requests:
        return None
    refresh = [r.subscribed_refresh for r in requests if r.subscribed_refresh is not None]
    return WatchSpec.of(
        [box for request in requests for box in request.mailboxes],
        [box for request in requests for box in request.changes],
        list_subscribed=min(refresh) if refresh else None,
        bodies=any(request.bodies for request in requests),
    )


class ExtensionManager:
    """The extensions of this proxy, in order, and the one way the core calls them."""

    def __init__(self, extensions: Sequence[Extension] = ()) -> None:
        self.extensions: list[Extension] = list(extensions)
        self._config: Config | None = None
        self._store: Store | None = None
        self._follow: RegistrationChanged | None = None
        self._relist: Callable[[str], None] | None = None
        self._handlers: dict[bytes, tuple[Extension, Handler]] = {}
        self._observers: dict[bytes, list[Extension]] = {}
        self._claims: dict[bytes, tuple[Extension, Claim]] = {}
        self._started: list[Extension] = []
        self._retries: set[asyncio.Task[None]] = set()  # events waiting for the store (see _retry_event)
        self._retries_full = False  # said once until the queue empties
        self._index()

    def _index(self) -> None:
        """Who answers which command and who hears of which relayed one (extensions may add commands in start)."""
        handlers: dict[bytes, tuple[Extension, Handler]] = {}
        observers: dict[bytes, list[Extension]] = {}
        for ext in self.extensions:
            for observed in ext.observed_commands:
                observers.setdefault(observed.upper().encode("ascii"), []).append(ext)
            for name, handler in ext.commands.items():
                key = name.upper().encode("ascii")
                if key in handlers:
                    raise ValueError(f"command {name} claimed by two extensions")
                handlers[key] = (ext, handler)
        claims: dict[bytes, tuple[Extension, Claim]] = {}
        for ext in self.extensions:
            for name, claim in ext.claims.items():
                key = name.upper().encode("ascii")
                if key in handlers or key in claims or key in observers:
                    raise ValueError(f"command {name} claimed by two extensions")
                claims[key] = (ext, claim)
        self._handlers, self._observers, self._claims = handlers, observers, claims

    @classmethod
    def for_config(cls, config: Config) -> ExtensionManager:
        """The extensions ``config`` loads (its ``extensions`` list) and that say they are on, configured.

        Not attached, not started.  Every section is checked first (:func:`check_sections`): a bad
        key of a loaded extension is an error even when its section leaves it off, and so is the
        section of an extension the list does not load.
        """
        extensions = []
        for extension_class in check_sections(config):
            ext = extension_class()
            if ext.configure(config):
                extensions.append(ext)
        return cls(extensions)

    @classmethod
    def every(cls, config: Config, store: Store) -> ExtensionManager:
        """Every discovered extension, enabled or not, configured and attached: what the store's registrations ask.

        For tests and benchmarks that run watchers without a proxy.
        """
        extensions = []
        for extension_class in extension_classes():
            ext = extension_class()
            ext.configure(config)
            extensions.append(ext)
        manager = cls(extensions)
        manager.attach(config, store)
        return manager

    def __bool__(self) -> bool:
        return bool(self.extensions)

    def names(self) -> list[str]:
        return [ext.name for ext in self.extensions]

    # ------------------------------------------------------------------ the one error policy

    async def safecall(
        self, ext: Extension, hook: str, *args: Any, passthrough: tuple[type[Exception], ...] = ()
    ) -> Any:
        """``ext.<hook>(*args)``, awaited if it is a coroutine; None when it raised (logged once, counted)."""
        result = None
        with guarded(ext.name, hook, passthrough):
            returned = getattr(ext, hook)(*args)
            result = await returned if inspect.isawaitable(returned) else returned
        return result

    def check_files(self, report: FileReport) -> None:
        """``check-config``: every extension checks the files its section names."""
        for ext in self.extensions:
            with guarded(ext.name, "check_files"):
                ext.check_files(report)

    # ------------------------------------------------------------------ lifecycle

    def attach(self, config: Config, store: Store) -> None:
        """Give every extension the core's services (no I/O)."""
        self._config, self._store = config, store
        for ext in self.extensions:
            ext.attach(self)

    async def start(self) -> None:
        """Start every extension in order; one that cannot start stops the proxy's start (its error is raised)."""
        for ext in self.extensions:
            await ext.start()
            self._started.append(ext)
        self._index()

    async def stop(self) -> None:
        """Stop every extension that started, in reverse order; a failing stop does not keep the others running."""
        await self.close_retries()
        while self._started:
            await self.safecall(self._started.pop(), "stop")

    async def close(self) -> None:
        """:meth:`stop` (the App stops its components with ``close``)."""
        await self.stop()

    # ------------------------------------------------------------------ Core: what extensions are given

    @property
    def config(self) -> Config:
        if self._config is None:
            raise RuntimeError("the extension manager is not attached")
        return self._config

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the extension manager is not attached")
        return self._store

    def follow(self, registration_changed: RegistrationChanged, relist: Callable[[str], None] | None = None) -> None:
        """Where registration changes and relisting requests go (the watcher supervisor, built after the extensions)."""
        self._follow = registration_changed
        self._relist = relist

    async def registration_changed(self, account: str, session_id: str | None = None) -> None:
        if self._follow is not None:
            await self._follow(account, session_id)

    def relist_subscribed(self, account: str) -> None:
        if self._relist is not None:
            self._relist(account)

    # ------------------------------------------------------------------ the session's view

    @property
    def pre_auth_capabilities(self) -> tuple[bytes, ...]:
        return tuple(c for ext in self.extensions for c in ext.pre_auth_capabilities)

    @property
    def post_auth_capabilities(self) -> tuple[bytes, ...]:
        return tuple(c for ext in self.extensions for c in ext.capabilities)

    @property
    def command_names(self) -> frozenset[bytes]:
        """Upper-case names of the commands the extensions answer (never forwarded upstream)."""
        return frozenset(self._handlers)

    @property
    def observed_commands(self) -> frozenset[bytes]:
        """Upper-case names of relayed commands whose tagged OK some extension wants to hear of."""
        return frozenset(self._observers)

    @property
    def claimed_commands(self) -> frozenset[bytes]:
        """Upper-case names of relayed commands an extension may take over (``Extension.claims``)."""
        return frozenset(self._claims)

    def claims(self, name: bytes, first_line: bytes, ctx: SessionContext) -> bool:
        """Whether the extension claiming ``name`` answers this command itself (False if ``wants`` raised)."""
        ext, claim = self._claims[name]
        wanted = False
        with guarded(ext.name, f"claim {name.decode('ascii')}"):
            wanted = bool(claim.wants(first_line, ctx))
        return wanted

    async def answer(self, cmd: Command, ctx: SessionContext) -> Reply:
        """The reply of the extension that owns ``cmd.name`` (``NO [UNAVAILABLE]`` if its handler raised)."""
        key = cmd.name.upper().encode("ascii")
        ext, handler = self._handlers[key] if key in self._handlers else self._claim_handler(key)
        try:
            return await handler(cmd, ctx)
        except StoreUnavailable:
            raise  # the session answers NO [UNAVAILABLE] <reason>; the store logged the episode
        except Exception as exc:
            failed(ext.name, f"command {cmd.name}", exc)
            return _COMMAND_FAILED

    def _claim_handler(self, key: bytes) -> tuple[Extension, Handler]:
        ext, claim = self._claims[key]
        return ext, claim.handler

    async def command_succeeded(self, name: bytes, ctx: SessionContext) -> None:
        """A relayed command of ``observed_commands`` got its tagged OK."""
        text = name.decode("ascii")
        for ext in self._observers.get(name, ()):
            await self.safecall(ext, "command_succeeded", text, ctx)

    async def session_closed(self, ctx: SessionContext) -> None:
        for ext in self.extensions:
            await self.safecall(ext, "session_closed", ctx)

    # ------------------------------------------------------------------ the push pipeline's fan-out

    async def on_event(self, event: MailEvent) -> None:
        """Every extension's ``on_event``, side by side: a slow one does not delay the others."""
        await asyncio.gather(*(self._on_event(ext, event) for ext in self.extensions))

    async def _on_event(self, ext: Extension, event: MailEvent) -> None:
        try:
            await self.safecall(ext, "on_event", event, passthrough=(StoreUnavailable,))
        except StoreUnavailable as exc:
            # What the send needs could not be read (the store is away and this node never read the
            # account's registrations; pushproxy.store.regview): again later, within a bound.
            if len(self._retries) >= EVENT_RETRY_MAX_WAITING:
                if not self._retries_full:
                    log.warning(
                        "extension %s: %d events already wait for the store; more are dropped (%s)",
                        ext.name,
                        EVENT_RETRY_MAX_WAITING,
                        exc,
                    )
                    self._retries_full = True
                return
            task = asyncio.ensure_future(self._retry_event(ext, event))
            self._retries.add(task)
            task.add_done_callback(self._retry_done)

    def _retry_done(self, task: asyncio.Task[None]) -> None:
        self._retries.discard(task)
        if not self._retries:
            self._retries_full = False

    async def _retry_event(self, ext: Extension, event: MailEvent) -> None:
        """The event again with backoff for at most :data:`EVENT_RETRY_FOR` s; then dropped with one WARNING."""
        backoff = Backoff(EVENT_RETRY_MIN, EVENT_RETRY_MAX)
        deadline = time.monotonic() + EVENT_RETRY_FOR
        while True:
            await asyncio.sleep(backoff.next())
            try:
                await self.safecall(ext, "on_event", event, passthrough=(StoreUnavailable,))
                return
            except StoreUnavailable as exc:
                if time.monotonic() >= deadline:
                    log.warning(
                        "extension %s: an event for %s dropped after %.0f s without the store (%s)",
                        ext.name,
                        event.account,
                        EVENT_RETRY_FOR,
                        exc,
                    )
                    return

    async def flush(self) -> None:
        for ext in self.extensions:
            await self.safecall(ext, "flush")

    async def close_retries(self) -> None:
        """Stop retrying (shutdown): what is left was never sent; the next owner's catch-up has it."""
        for task in list(self._retries):
            task.cancel()

    # ------------------------------------------------------------------ the watchers' questions

    async def spec(self, account: str) -> WatchSpec | None:
        """Which mailboxes of ``account`` every extension wants watched, merged."""
        requests = []
        for ext in self.extensions:
            request = await self.safecall(ext, "watched_mailboxes", account, passthrough=(StoreUnavailable,))
            if request is not None:
                requests.append(request)
        return merge_requests(requests)

    async def specs_of(self, accounts: Sequence[str]) -> dict[str, WatchSpec]:
        """:meth:`spec` of many accounts (a lease batch), one query per extension; those without one left out."""
        by_account: dict[str, list[WatchRequest]] = {}
        for ext in self.extensions:
            answered = await self.safecall(ext, "watched_mailboxes_of", accounts, passthrough=(StoreUnavailable,))
            for account, request in (answered or {}).items():
                by_account.setdefault(account, []).append(request)
        specs = {}
        for account in accounts:
            spec = merge_requests(by_account.get(account, []))
            if spec is not None:
                specs[account] = spec
        return specs

    async def specs(self) -> dict[str, WatchSpec]:
        """:meth:`spec` for every account some request wants watched at start-up (one bulk read per extension)."""
        by_account: dict[str, list[WatchRequest]] = {}
        for ext in self.extensions:
            answered = await self.safecall(ext, "watched_accounts", passthrough=(StoreUnavailable,))
            for account, request in (answered or {}).items():
                by_account.setdefault(account, []).append(request)
        specs = {}
        for account in sorted(by_account):
            if not any(request.at_startup for request in by_account[account]):
                continue
            spec = merge_requests(by_account[account])
            if spec is not None:
                specs[account] = spec
        return specs

    async def listed(self, account: str, items: Sequence[ListItem]) -> WatchSpec | None:
        """A watcher listed the account's subscribed mailboxes: tell the extensions; the spec now."""
        for ext in self.extensions:
            await self.safecall(ext, "subscribed_listed", account, items, passthrough=(StoreUnavailable,))
        return await self.spec(account)
