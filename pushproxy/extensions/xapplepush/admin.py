"""``pushproxy apns check|test`` and ``pushproxy devices list|remove`` (the CLI only parses)."""

from __future__ import annotations

import argparse
import sys

from pushproxy.accounts import canonical_mailbox, normalise_account
from pushproxy.admin_cli import listed, open_store, run_async, short, table, when, with_store
from pushproxy.config import Config, ConfigError
from pushproxy.extensions.xapplepush.apns import ApnsPusher
from pushproxy.extensions.xapplepush.apns_cert import inspect_credentials
from pushproxy.extensions.xapplepush.settings import apns_settings
from pushproxy.extensions.xapplepush.store import ApnsQueries
from pushproxy.store.base import Store


def apns_check(cfg: Config) -> int:
    info = inspect_credentials(apns_settings(cfg))
    print(f"auth:      {info.auth}")
    print(f"topic:     {info.topic}")
    print(f"subject:   {info.subject}")
    print(f"issuer:    {info.issuer}")
    if info.auth == "certificate":
        print(f"valid:     {info.not_before:%Y-%m-%d} .. {info.not_after:%Y-%m-%d}")
        print(f"days left: {info.days_left}")
    print(f"service:   {'sandbox' if apns_settings(cfg).sandbox else 'production'}")
    problems = []
    if info.expired:
        problems.append("the certificate has expired: renew it (Apple Push Certificates Portal)")
    if info.not_yet_valid:
        problems.append("the certificate is not valid yet (check the clock)")
    if not info.topic_trusted:
        problems.append(
            f"topic {info.topic!r} would be ignored by iOS Mail: it must start with "
            "'com.apple.mail.' or 'com.apple.mobilemail.push.' (a Mail push certificate is needed)"
        )
    if info.auth == "certificate" and not info.expired and info.days_left < 30:
        print(f"warning:   only {info.days_left} day(s) left: renew the certificate soon", file=sys.stderr)
    for p in problems:
        print(f"problem:   {p}", file=sys.stderr)
    return 1 if problems else 0


def devices_list(cfg: Config, args: argparse.Namespace) -> int:
    devices = listed(cfg, args, lambda store, account: store.queries(ApnsQueries).list_devices(account))
    table(
        [("ACCOUNT", 24), ("APS-ACCOUNT-ID", 38), ("TOKEN", 10), ("LAST REGISTERED", 21), ("MAILBOXES", 0)],
        (
            (d.account, d.aps_account_id, short(d.device_token), when(d.last_registered), ", ".join(d.mailboxes))
            for d in devices
        ),
        f"{len(devices)} device registration(s)",
    )
    return 0


def devices_remove(cfg: Config, args: argparse.Namespace) -> int:
    account: str = args.account
    token_prefix: str | None = args.token
    aps_account_id: str | None = args.aps_account_id

    async def remove(store: Store) -> int:
        acct = normalise_account(account)
        removed = 0
        devices = store.queries(ApnsQueries)
        for d in await devices.list_devices(acct):
            if token_prefix and not d.device_token.startswith(token_prefix.lower()):
                continue
            if aps_account_id and d.aps_account_id != aps_account_id:
                continue
            removed += await devices.remove_device(acct, d.aps_account_id, d.device_token)
        return removed

    removed = with_store(cfg, remove)
    print(f"removed {removed} registration(s); a live proxy stops watching once none remain")
    return 0 if removed else 1


class _RemovedTokens:
    """``apns test``: the registrations of a token APNs no longer knows are removed, and counted."""

    def __init__(self, queries: ApnsQueries) -> None:
        self._queries = queries
        self.removed: list[str] = []

    async def invalid_token(self, token: str, registered_before: float | None) -> None:
        self.removed.append(token)
        await self._queries.remove_device_token(token, registered_before)


def apns_test(cfg: Config, args: argparse.Namespace) -> int:
    """Send one push to every device of ``--account``, as new mail in ``--mailbox`` would."""
    account: str = args.account
    mailbox: str = args.mailbox
    if not apns_settings(cfg).enabled:
        raise ConfigError("apns.enabled is false in this config")

    async def go() -> int:
        store = await open_store(cfg)
        queries = store.queries(ApnsQueries)
        invalid = _RemovedTokens(queries)
        pusher = ApnsPusher(apns_settings(cfg), tokens=invalid)
        try:
            await pusher.start()
            devices = await queries.devices_for_account(normalise_account(account))
            for d in devices:
                pusher.notify(d.device_token, d.aps_account_id, canonical_mailbox(mailbox))
            await pusher.flush()
        finally:
            await pusher.close()
            await store.close()
        print(f"sent to {len(devices)} device(s); {len(invalid.removed)} removed as unknown to APNs")
        return 0 if devices else 1

    return run_async(go)
