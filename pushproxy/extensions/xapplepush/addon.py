"""The XAPPLEPUSHSERVICE extension as the core sees it: the ``apns`` section, APNs, iOS devices.

Heavy parts (aioapns) are imported in :meth:`XApplePush.start`, so that the
config loader can read this module cheaply.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pushproxy.accounts import canonical_mailbox
from pushproxy.events import MailEvent, NewMail
from pushproxy.extensions.base import Extension, WatchRequest, admin_command, admin_group
from pushproxy.extensions.housekeeping import Housekeeping
from pushproxy.extensions.xapplepush.metrics import PrometheusApnsMetrics, set_registrations
from pushproxy.extensions.xapplepush.schema import XAPPLEPUSH
from pushproxy.extensions.xapplepush.settings import SECTION, ApnsConfig, apns_settings
from pushproxy.extensions.xapplepush.store import ApnsDevice, ApnsQueries
from pushproxy.store.batches import in_batches
from pushproxy.store.errors import StoreUnavailable

if TYPE_CHECKING:
    from pushproxy.config import Config
    from pushproxy.config_check import FileReport
    from pushproxy.extensions.xapplepush.apns import ApnsPusher
    from pushproxy.extensions.xapplepush.registration import DeviceRegistrations

log = logging.getLogger("pushproxy.xapplepush")

HOUSEKEEPING_INTERVAL = 60.0


def _devices_watch(devices: list[ApnsDevice]) -> WatchRequest:
    """Every mailbox a device of the account registered (INBOX when it named none)."""
    boxes = [box for device in devices for box in (device.mailboxes or ["INBOX"])]
    return WatchRequest(tuple(boxes))


def wants_push(device: ApnsDevice, mailbox: str) -> bool:
    """Does the device want a push for new mail in ``mailbox`` (canonical, as the push pipeline makes it)?

    INBOX matches as registered in any case; other names exactly (they are case-sensitive in IMAP).
    """
    return any(canonical_mailbox(registered) == mailbox for registered in device.mailboxes)


class XApplePush(Extension):
    section = SECTION
    settings = ApnsConfig
    schema = XAPPLEPUSH

    def __init__(self) -> None:
        super().__init__(
            name="xapplepush",
            capabilities=(b"XAPPLEPUSHSERVICE",),
            # iOS only registers after login, but the atom before login is harmless and
            # keeps the capability list stable for clients that cache the greeting's.
            pre_auth_capabilities=(b"XAPPLEPUSHSERVICE",),
        )
        self.pusher: ApnsPusher | None = None
        self.registrations: DeviceRegistrations | None = None  # answers XAPPLEPUSHSERVICE once started
        self.housekeeping = Housekeeping("xapplepush", self.expire_devices, HOUSEKEEPING_INTERVAL)

    def configure(self, config: Config) -> bool:
        self.config = config
        return apns_settings(config).enabled

    @property
    def devices(self) -> ApnsQueries:
        return self.core.store.queries(ApnsQueries)

    async def start(self) -> None:
        from pushproxy.extensions.xapplepush.apns import ApnsPusher
        from pushproxy.extensions.xapplepush.registration import DeviceRegistrations

        self.pusher = ApnsPusher(apns_settings(self.config), tokens=self, metrics=PrometheusApnsMetrics())
        await self.pusher.start()
        self.registrations = DeviceRegistrations(self.core, self.pusher.topic)
        self.commands = {"XAPPLEPUSHSERVICE": self.registrations.handle}
        self.housekeeping.start()

    async def stop(self) -> None:
        await self.housekeeping.stop()
        if self.registrations is not None:
            await self.registrations.close()
        if self.pusher is not None:
            await self.pusher.close()

    async def watched_mailboxes(self, account: str) -> WatchRequest | None:
        devices = await self.devices.devices_for_account(account)
        return _devices_watch(devices) if devices else None

    async def watched_mailboxes_of(self, accounts: Sequence[str]) -> dict[str, WatchRequest]:
        by_account = await self.devices.devices_of_accounts(accounts)
        return {account: _devices_watch(devices) for account, devices in by_account.items() if devices}

    async def watched_accounts(self) -> dict[str, WatchRequest]:
        by_account: dict[str, list[ApnsDevice]] = {}
        for device in await self.devices.list_devices():
            by_account.setdefault(device.account, []).append(device)
        return {account: _devices_watch(devices) for account, devices in by_account.items()}

    async def on_event(self, event: MailEvent) -> None:
        """New mail: a push to every device of the account that registered the mailbox.

        One push per event, however many messages it holds: the APNs payload
        only names the account, and iOS Mail fetches what is new itself, so a
        batch of 200 (a catch-up) is one push, not 200 (unlike Web Push, whose
        pushes carry the messages: webpush/payload.py new_mail_payloads).
        """
        if not isinstance(event, NewMail) or self.pusher is None:
            return
        for device in await self.devices.devices_for_account(event.account):
            if wants_push(device, event.mailbox):
                self.pusher.notify(device.device_token, device.aps_account_id, event.mailbox)

    async def invalid_token(self, token: str, registered_before: float | None) -> None:
        """APNs no longer knows ``token`` (:class:`~.apns.InvalidTokens`): its registrations made before then go."""
        try:
            removed = await self.devices.remove_device_token(token, registered_before)
        except StoreUnavailable as exc:  # APNs says it again at the next push to it
            log.info("a device APNs no longer knows is not removed yet: %s", exc)
            return
        if removed:
            log.info("removed %d registration(s) of a device APNs no longer knows", removed)

    async def flush(self) -> None:
        if self.pusher is not None:
            await self.pusher.flush()

    def check_files(self, report: FileReport) -> None:
        apns = apns_settings(self.config)
        report.readable("apns.cert_file", apns.cert_file)
        report.readable("apns.key_file", apns.key_file, secret=True)
        report.readable("apns.p12_password_file", apns.p12_password_file, secret=True)
        report.readable("apns.token_key_file", apns.token_key_file, secret=True)
        report.readable("apns.ca_file", apns.ca_file)

    async def expire_devices(self) -> None:
        """Device expiry and the registration gauge, once a minute."""
        now = time.time()
        cutoff, batch = now - self.config.store.device_expiry, self.config.store.housekeeping_batch
        expired = await in_batches(lambda limit: self.devices.expire_devices(cutoff, limit), batch)
        if expired:
            log.info("expired %d device registration(s) not renewed in time", expired)
        # Counted by the database, not by reading (and decrypting) every registration each minute:
        # at 10,000 devices that stalled the loop 0.7 s a minute (issue 23).
        set_registrations(await self.devices.count_devices())

    @classmethod
    def cli(cls, subparsers: argparse._SubParsersAction[Any]) -> None:
        from pushproxy.extensions.xapplepush import admin

        apns = admin_group(subparsers, "apns", "APNs certificate and test pushes")
        check = "show topic, subject, issuer, expiry; exit 1 if unusable for iOS Mail"
        admin_command(apns, "check", check, lambda cfg, args: admin.apns_check(cfg))
        test = admin_command(apns, "test", "send one push to every registered device of an account", admin.apns_test)
        test.add_argument("--account", required=True)
        test.add_argument("--mailbox", default="INBOX")

        devices = admin_group(subparsers, "devices", "iOS device registrations")
        listing = admin_command(devices, "list", "list registrations (tokens shortened)", admin.devices_list)
        listing.add_argument("--account")
        remove = admin_command(devices, "remove", "remove registrations of an account", admin.devices_remove)
        remove.add_argument("--account", required=True)
        remove.add_argument("--token", help="only devices whose token starts with this")
        remove.add_argument("--aps-account-id", help="only this aps-account-id")
