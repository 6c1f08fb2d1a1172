"""The WEBPUSH extension as the core sees it: the ``webpush`` section, VAPID, subscriptions, Web Push.

Heavy parts (pywebpush, cryptography) are imported in :meth:`WebPush.start`,
so that the config loader can read this module cheaply.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pushproxy.events import MailEvent
from pushproxy.extensions.base import Extension, SessionContext, WatchRequest, admin_command, admin_group
from pushproxy.extensions.webpush.schema import WEBPUSH

if TYPE_CHECKING:
    from pushproxy.config import Config
    from pushproxy.config_check import FileReport
    from pushproxy.extensions.webpush.delivery import WebPushDelivery
    from pushproxy.extensions.webpush.extension import WebPushExtension
    from pushproxy.extensions.webpush.sender import WebPushSender
    from pushproxy.store.base import WebPushSubscription


class WebPush(Extension):
    schema = WEBPUSH

    def __init__(self) -> None:
        # After login only: the commands are invalid before it.
        super().__init__(name="webpush", capabilities=(b"WEBPUSH",))
        self.sender: WebPushSender | None = None
        self.delivery: WebPushDelivery | None = None
        self.handlers: WebPushExtension | None = None

    def configure(self, config: Config) -> bool:
        self.config = config
        return config.webpush.enabled

    async def start(self) -> None:
        from pushproxy.extensions.webpush.commands import WebPushCommands
        from pushproxy.extensions.webpush.delivery import WebPushDelivery
        from pushproxy.extensions.webpush.extension import WebPushExtension
        from pushproxy.extensions.webpush.metrics import PrometheusWebPushMetrics
        from pushproxy.extensions.webpush.sender import WebPushSender
        from pushproxy.extensions.webpush.vapid import VapidKeyring

        cfg, store = self.config, self.core.store
        keyring = await VapidKeyring.load(cfg.vapid_key_path(), store)
        self.sender = WebPushSender(cfg.webpush, keyring, metrics=PrometheusWebPushMetrics())
        await self.sender.start()
        self.delivery = WebPushDelivery(cfg, store, self.sender)
        commands = WebPushCommands(cfg, store, keyring, self.sender, self.core.registration_changed)
        self.handlers = WebPushExtension(commands)
        self.commands = dict(self.handlers.commands)

    async def stop(self) -> None:
        if self.handlers is not None:
            await self.handlers.close()  # maintenance and verification pushes first
        if self.sender is not None:
            await self.sender.close()

    def _watch(self, subs: list[WebPushSubscription]) -> WatchRequest:
        # Every change is pushed to WebPush subscriptions (issue 13): no event selection.
        boxes = tuple(self.config.webpush.mailboxes)
        # Only subscriptions still being verified: the user's next login starts the watcher.
        return WatchRequest(boxes, boxes, at_startup=any(sub.active for sub in subs))

    async def watched_mailboxes(self, account: str) -> WatchRequest | None:
        """Subscriptions (active or still being verified) watch ``webpush.mailboxes``, every change there."""
        subs = await self.core.store.subscriptions_for_account(account)
        return self._watch(subs) if subs else None

    async def watched_accounts(self) -> dict[str, WatchRequest]:
        by_account: dict[str, list[WebPushSubscription]] = {}
        for sub in await self.core.store.list_subscriptions():
            by_account.setdefault(sub.account, []).append(sub)
        return {account: self._watch(subs) for account, subs in by_account.items()}

    async def on_event(self, event: MailEvent) -> None:
        if self.delivery is not None:
            await self.delivery.deliver(event)

    async def flush(self) -> None:
        if self.delivery is not None:
            await self.delivery.flush()  # coalesced changes waiting for their burst to end

    async def session_closed(self, session: SessionContext) -> None:
        if self.handlers is not None:
            await self.handlers.session_closed(session)

    def check_files(self, report: FileReport) -> None:
        report.generated("webpush.vapid_private_key_file", self.config.vapid_key_path())

    @classmethod
    def cli(cls, subparsers: argparse._SubParsersAction[Any]) -> None:
        from pushproxy.extensions.webpush import admin

        subs = admin_group(subparsers, "subscriptions", "WebPush subscriptions")
        listing = admin_command(subs, "list", "list subscriptions (never endpoints or keys)", admin.subscriptions_list)
        listing.add_argument("--account")

        vapid = admin_group(subparsers, "vapid", "the VAPID key pair of WebPush")
        admin_command(vapid, "show", "print the current public key (generated if missing)", admin.vapid)
        rotate = "make a new current key; old keys keep signing for their subscriptions"
        admin_command(vapid, "rotate", rotate, admin.vapid)
