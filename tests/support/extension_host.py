"""A stand-in for what an extension's ``attach`` receives (the core's host): a store, the config, and a record
of the registration changes the extension reports; no watchers behind it."""

from __future__ import annotations

from typing import Any

from pushproxy.config import Config


class ExtensionHost:
    def __init__(self, store: Any, config: Config) -> None:
        self.store = store
        self.config = config
        self.changed: list[str] = []  # the accounts registration_changed was called for, in order

    async def registration_changed(self, account: str, session_id: str | None = None) -> None:
        self.changed.append(account)

    def relist_subscribed(self, account: str) -> None:
        pass
