"""XAPPLEPUSHSERVICE: iOS Mail registers for push; the proxy answers and remembers the device.

The answer never depends on a transient fault: iOS treats NO/BAD as "this
server has no push" and does not ask again for about a day.  So a failing
upstream LIST only narrows which mailbox lines are echoed (INBOX always
exists), and a failing store write is retried in the background after the OK.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pushproxy.extensions.base import (
    Core,
    Reply,
    SessionContext,
    UpstreamCommandError,
    login_and_parse,
)
from pushproxy.extensions.baseline import record_baseline, save_baseline
from pushproxy.extensions.ox_metadata import enable_ox_notify
from pushproxy.extensions.xapplepush.apns import short_token
from pushproxy.extensions.xapplepush.command import (
    answer_lines,
    parse_list_response,
    parse_registration,
)
from pushproxy.extensions.xapplepush.settings import apns_settings
from pushproxy.extensions.xapplepush.store import ApnsDevice, ApnsQueries
from pushproxy.imap.parse import Command, ParseError
from pushproxy.store.base import MailboxState, StoreUnavailable

log = logging.getLogger("pushproxy.xapplepush")

_LIST_TIMEOUT = 15.0
_STORE_TIMEOUT = 5.0
_STORE_RETRIES = (1.0, 5.0, 30.0, 120.0, 600.0)


class DeviceRegistrations:
    """The XAPPLEPUSHSERVICE command handler of :class:`~.addon.XApplePush` and its background store retries."""

    def __init__(self, core: Core, topic: str) -> None:
        """``core``: the config, the store and whom to tell of a changed registration (the extension's)."""
        self.core = core
        self.devices = core.store.queries(ApnsQueries)
        self.topic = topic
        self._background: set[asyncio.Task[None]] = set()

    async def handle(self, cmd: Command, ctx: SessionContext) -> Reply:
        parsed = login_and_parse(ctx, "XAPPLEPUSHSERVICE", parse_registration, cmd.args, ParseError)
        if isinstance(parsed, Reply):
            return parsed
        account, reg = parsed
        existing = await self._existing_mailboxes(ctx, [name for _, name in reg.mailboxes])
        now = time.time()
        device = ApnsDevice(
            account=account,
            aps_account_id=reg.account_id,
            device_token=reg.device_token,
            subtopic=reg.subtopic,
            version=reg.version,
            mailboxes=[name for _, name in reg.mailboxes if name in existing],
            first_registered=now,
            last_registered=now,
        )
        # Before the OK, so that mail arriving from now on is pushed (see extensions/baseline.py).
        unsaved: list[MailboxState] = []  # written with the device if the store cannot take them now
        await record_baseline(ctx, self.core.store, account, device.mailboxes, unsaved=unsaved)
        if self.core.config.admin.ox_secret_file is not None:  # Dovecot's ox driver pushes for this user too
            await enable_ox_notify(ctx)
        stored = await self._store_device(device, unsaved)
        for line in answer_lines(reg, existing, self.topic):
            ctx.reply_untagged(line)
        log.info(
            "registered device %s for %s (%d mailbox(es)%s)",
            short_token(reg.device_token),
            account,
            len(device.mailboxes),
            "" if stored else ", store write pending",
        )
        if stored:  # else the background write follows it once stored (before, the account has no device)
            self._spawn(self._follow(account, ctx.session_id))
        return Reply("OK", "XAPPLEPUSHSERVICE completed.")

    async def _follow(self, account: str, session_id: str | None) -> None:
        try:
            await self.core.registration_changed(account, session_id)
        except StoreUnavailable as exc:  # the store logged the episode; the next change or login follows it
            log.debug("watcher of %s not updated now: %s", account, exc.reason)

    async def _existing_mailboxes(self, ctx: SessionContext, wanted: list[str]) -> list[str]:
        """The requested mailboxes this user can see, per an upstream LIST on the user's own connection."""
        if wanted == ["INBOX"]:
            return ["INBOX"]
        try:
            untagged, status = await ctx.upstream_command(b'LIST "" "*"', timeout=_LIST_TIMEOUT)
        except UpstreamCommandError as exc:
            log.warning("mailbox check failed (%s); echoing INBOX only", exc)
            return ["INBOX"]
        if status.status != b"OK":
            return ["INBOX"]
        visible = {"INBOX"}
        for line in untagged:
            name = parse_list_response(line)
            if name is not None:
                visible.add(name)
        return [name for name in wanted if name in visible]

    async def _store_device(self, device: ApnsDevice, baseline: list[MailboxState]) -> bool:
        try:
            await self._write(device, baseline)
            await self._enforce_cap(device)
            return True
        except StoreUnavailable as exc:  # the store logged the episode; the answer is OK all the same
            log.debug("storing a registration failed (%s); retrying in the background", exc.reason)
            self._spawn(self._retry_store(device, baseline))
            return False
        except Exception as exc:
            log.warning("storing a registration failed (%s); retrying in the background", type(exc).__name__)
            self._spawn(self._retry_store(device, baseline))
            return False

    async def _write(self, device: ApnsDevice, baseline: list[MailboxState]) -> None:
        """The baseline the registration took but could not store, then the device: mail that
        arrives meanwhile is new to the watcher that starts once the device is stored."""
        async with asyncio.timeout(_STORE_TIMEOUT):
            await save_baseline(self.core.store, baseline)
            await self.devices.upsert_device(device)

    async def _enforce_cap(self, newest: ApnsDevice) -> None:
        cap = apns_settings(self.core.config).max_devices_per_account
        devices = await self.devices.devices_for_account(newest.account)
        if len(devices) <= cap:
            return
        key = (newest.aps_account_id, newest.device_token)
        others = [d for d in devices if (d.aps_account_id, d.device_token) != key]
        others.sort(key=lambda d: d.last_registered)
        for old in others[: len(devices) - cap]:
            await self.devices.remove_device(old.account, old.aps_account_id, old.device_token)
            log.warning(
                "account %s has more than %d device registrations: evicted %s (least recently renewed)",
                newest.account,
                cap,
                short_token(old.device_token),
            )

    async def _retry_store(self, device: ApnsDevice, baseline: list[MailboxState]) -> None:
        for delay in _STORE_RETRIES:
            await asyncio.sleep(delay)
            try:
                await self._write(device, baseline)
                await self.core.registration_changed(device.account, None)
                return
            except StoreUnavailable as exc:
                log.debug("storing a registration failed again (%s)", exc.reason)
            except Exception as exc:
                log.warning("storing a registration failed again (%s)", type(exc).__name__)
        log.error("gave up storing a registration for %s; the device re-registers within a day", device.account)

    async def close(self) -> None:
        """Cancel the background store retries (the device registers again within a day)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(_done(self._background))


def _done(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def callback(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    return callback
