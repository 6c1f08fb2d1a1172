"""The core side of the extension API: the :class:`~pushproxy.extensions.base.Core` extensions attach to.

It also answers the watchers' question "which mailboxes of this account are
watched, and where is every change wanted?" by merging what every extension
asks for (:meth:`ExtensionHost.spec`), and hands the account's subscribed
mailboxes, when a watcher listed them, to the extensions
(:meth:`ExtensionHost.listed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pushproxy.config import Config
from pushproxy.extensions.base import Extension, RegistrationChanged, WatchRequest
from pushproxy.imap.data import ListItem
from pushproxy.store.base import Store
from pushproxy.watch.detection import WatchSpec


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


class ExtensionHost:
    """What extensions are attached to: config, store, and the watchers' ``registration_changed``."""

    def __init__(self, config: Config, store: Store, extensions: Sequence[Extension]) -> None:
        self.config = config
        self.store = store
        self.extensions = list(extensions)
        self._follow: RegistrationChanged | None = None
        self._relist: Callable[[str], None] | None = None
        for ext in self.extensions:
            ext.attach(self)

    @classmethod
    def for_config(cls, config: Config, store: Store) -> ExtensionHost:
        """The extensions the config enables, attached (not started): enough to know what to watch."""
        from pushproxy.extensions import load_extensions

        return cls(config, store, load_extensions(config))

    @classmethod
    def for_store(cls, config: Config, store: Store) -> ExtensionHost:
        """Every listed extension, enabled or not, attached: what the registrations in the store ask to watch."""
        from pushproxy.extensions import extension_classes

        extensions = []
        for extension_class in extension_classes():
            ext = extension_class()
            ext.configure(config)
            extensions.append(ext)
        return cls(config, store, extensions)

    def follow(self, registration_changed: RegistrationChanged, relist: Callable[[str], None] | None = None) -> None:
        """Where registration changes and relisting requests go (the watcher supervisor, built after the extensions)."""
        self._follow = registration_changed
        self._relist = relist

    def relist_subscribed(self, account: str) -> None:
        if self._relist is not None:
            self._relist(account)

    async def listed(self, account: str, items: Sequence[ListItem]) -> WatchSpec | None:
        """A watcher listed the account's subscribed mailboxes: tell the extensions; the spec now."""
        for ext in self.extensions:
            await ext.subscribed_listed(account, items)
        return await self.spec(account)

    async def registration_changed(self, account: str, session_id: str | None = None) -> None:
        if self._follow is not None:
            await self._follow(account, session_id)

    async def spec(self, account: str) -> WatchSpec | None:
        requests = []
        for ext in self.extensions:
            request = await ext.watched_mailboxes(account)
            if request is not None:
                requests.append(request)
        return merge_requests(requests)

    async def specs(self) -> dict[str, WatchSpec]:
        """:meth:`spec` for every account some request wants watched at start-up (one bulk read per extension)."""
        by_account: dict[str, list[WatchRequest]] = {}
        for ext in self.extensions:
            for account, request in (await ext.watched_accounts()).items():
                by_account.setdefault(account, []).append(request)
        specs = {}
        for account in sorted(by_account):
            if not any(request.at_startup for request in by_account[account]):
                continue
            spec = merge_requests(by_account[account])
            if spec is not None:
                specs[account] = spec
        return specs
