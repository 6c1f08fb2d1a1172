"""The WEBPUSH extension as the core sees it: the ``webpush`` section, VAPID, subscriptions, Web Push.

Heavy parts (pywebpush, cryptography) are imported in :meth:`WebPush.start`,
so that the config loader can read this module cheaply.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pushproxy.events import MailEvent
from pushproxy.extensions.base import Extension, SessionContext, WatchRequest, admin_command, admin_group
from pushproxy.extensions.webpush.mailboxes import WatchedMailboxes
from pushproxy.extensions.webpush.metrics import PrometheusWebPushMetrics
from pushproxy.extensions.webpush.schema import WEBPUSH
from pushproxy.extensions.webpush.settings import SECTION, WebPushConfig, vapid_key_path, webpush_settings
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription

if TYPE_CHECKING:
    from pushproxy.config import Config
    from pushproxy.config_check import FileReport
    from pushproxy.extensions.webpush.commands import WebPushCommands
    from pushproxy.extensions.webpush.delivery import WebPushDelivery
    from pushproxy.extensions.webpush.sender import WebPushSender
    from pushproxy.imap.data import ListItem

# Relayed commands after which the account's subscribed mailboxes may differ.
MAILBOX_COMMANDS = ("SUBSCRIBE", "UNSUBSCRIBE", "CREATE", "DELETE", "RENAME")


class WebPush(Extension):
    section = SECTION
    settings = WebPushConfig
    schema = WEBPUSH

    def __init__(self) -> None:
        # After login only: the commands are invalid before it.
        super().__init__(name="webpush", capabilities=(b"WEBPUSH",))
        self.sender: WebPushSender | None = None
        self.delivery: WebPushDelivery | None = None
        self.handlers: WebPushCommands | None = None  # answers the five commands once started
        self.mailboxes = WatchedMailboxes(["INBOX"], 1)  # webpush.mailboxes, set by configure()

    def configure(self, config: Config) -> bool:
        self.config = config
        settings = webpush_settings(config)
        self.mailboxes = WatchedMailboxes(settings.mailboxes, settings.max_mailboxes)
        self.observed_commands = MAILBOX_COMMANDS if self.mailboxes.subscribed else ()
        return settings.enabled

    async def start(self) -> None:
        from pushproxy.extensions.webpush.commands import WebPushCommands
        from pushproxy.extensions.webpush.delivery import WebPushDelivery
        from pushproxy.extensions.webpush.process import WebPushProcess
        from pushproxy.extensions.webpush.sender import WebPushSender
        from pushproxy.extensions.webpush.vapid import VapidKeyring

        cfg, store = self.config, self.core.store
        keyring = await VapidKeyring.load(vapid_key_path(cfg), store.queries(WebPushQueries))
        self.sender = WebPushSender(webpush_settings(cfg), keyring, metrics=PrometheusWebPushMetrics())
        await self.sender.start()
        process = WebPushProcess()  # this process's instance id and account locks, shared by both
        self.delivery = WebPushDelivery(cfg, store, self.sender, process, mailbox_filter=self.mailboxes.pushed)
        self.answer_with(
            WebPushCommands(
                cfg, store, keyring, self.sender, self.core.registration_changed, process, watched=self.mailboxes.of
            )
        )

    def answer_with(self, handlers: WebPushCommands) -> None:
        """GETVAPID, WEBPUSH, ACKWEBPUSH, LWEBPUSH and SILWEBPUSH, answered by ``handlers`` (never forwarded)."""
        self.handlers = handlers
        self.commands = {
            "GETVAPID": handlers.getvapid,
            "WEBPUSH": handlers.webpush,
            "ACKWEBPUSH": handlers.ackwebpush,
            "LWEBPUSH": handlers.lwebpush,
            "SILWEBPUSH": handlers.silwebpush,
        }

    async def stop(self) -> None:
        if self.handlers is not None:
            await self.handlers.close()  # the maintenance task and the verification pushes in flight first
        if self.sender is not None:
            await self.sender.close()

    def _watch(self, account: str, subs: list[WebPushSubscription]) -> WatchRequest:
        # Every change is pushed to WebPush subscriptions (issue 13): no event selection.
        boxes = self.mailboxes.of(account)
        refresh = webpush_settings(self.config).mailboxes_refresh if self.mailboxes.subscribed else None
        # Only subscriptions still being verified: the user's next login starts the watcher.
        # Pushes carry a short message whole (issue 13): the watcher fetches it.
        return WatchRequest(
            boxes, boxes, at_startup=any(sub.active for sub in subs), subscribed_refresh=refresh, bodies=True
        )

    async def watched_mailboxes(self, account: str) -> WatchRequest | None:
        """Subscriptions (active or still being verified) watch ``webpush.mailboxes``, every change there."""
        subs = await self.core.store.queries(WebPushQueries).subscriptions_for_account(account)
        if not subs:
            self.mailboxes.forget(account)
            return None
        return self._watch(account, subs)

    async def watched_mailboxes_of(self, accounts: Sequence[str]) -> dict[str, WatchRequest]:
        by_account = await self.core.store.queries(WebPushQueries).subscriptions_of_accounts(accounts)
        requests = {}
        for account, subs in by_account.items():
            if subs:
                requests[account] = self._watch(account, subs)
            else:
                self.mailboxes.forget(account)
        return requests

    async def watched_accounts(self) -> dict[str, WatchRequest]:
        by_account: dict[str, list[WebPushSubscription]] = {}
        for sub in await self.core.store.queries(WebPushQueries).list_subscriptions():
            by_account.setdefault(sub.account, []).append(sub)
        return {account: self._watch(account, subs) for account, subs in by_account.items()}

    async def subscribed_listed(self, account: str, items: Sequence[ListItem]) -> None:
        self.mailboxes.listed(account, items)

    async def command_succeeded(self, name: str, session: SessionContext) -> None:
        """A client (un)subscribed, created, deleted or renamed a mailbox: list the account's again."""
        if session.account is not None:
            self.core.relist_subscribed(session.account)

    async def on_event(self, event: MailEvent) -> None:
        if self.delivery is not None:
            await self.delivery.deliver(event)

    async def flush(self) -> None:
        if self.delivery is not None:
            await self.delivery.flush()  # coalesced changes waiting for their burst to end

    async def session_closed(self, session: SessionContext) -> None:
        """Lift the silences bound to this connection (``SILWEBPUSH <id>`` without seconds)."""
        if self.handlers is not None:
            await self.handlers.session_closed(session.session_id)

    def check_files(self, report: FileReport) -> None:
        report.generated("webpush.vapid_private_key_file", vapid_key_path(self.config))

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
