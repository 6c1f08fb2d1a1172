"""The admin subcommands behind ``pushproxy apns|devices|vapid|subscriptions`` (the CLI only parses)."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pushproxy.config import Config, ConfigError

T = TypeVar("T")


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def _short(token: str) -> str:
    return token[:8] + "…" if len(token) > 12 else token


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def apns_check(cfg: Config) -> int:
    from pushproxy.push.apns import inspect_credentials

    info = inspect_credentials(cfg.apns)
    print(f"auth:      {info.auth}")
    print(f"topic:     {info.topic}")
    print(f"subject:   {info.subject}")
    print(f"issuer:    {info.issuer}")
    if info.auth == "certificate":
        print(f"valid:     {info.not_before:%Y-%m-%d} .. {info.not_after:%Y-%m-%d}")
        print(f"days left: {info.days_left}")
    print(f"service:   {'sandbox' if cfg.apns.sandbox else 'production'}")
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


async def _open(cfg: Config):  # type: ignore[no-untyped-def]
    from pushproxy.store.factory import open_store

    return await open_store(cfg)


def devices_list(cfg: Config, account: str | None) -> int:
    from pushproxy.accounts import normalise_account

    async def go() -> int:
        store = await _open(cfg)
        try:
            devices = await store.list_devices(normalise_account(account) if account else None)
        finally:
            await store.close()
        print(f"{'ACCOUNT':24} {'APS-ACCOUNT-ID':38} {'TOKEN':10} {'LAST REGISTERED':21} MAILBOXES")
        for d in devices:
            print(
                f"{d.account:24} {d.aps_account_id:38} {_short(d.device_token):10} "
                f"{_when(d.last_registered):21} {', '.join(d.mailboxes)}"
            )
        print(f"{len(devices)} device registration(s)")
        return 0

    return run_async(go)


def devices_remove(cfg: Config, account: str, token_prefix: str | None, aps_account_id: str | None) -> int:
    from pushproxy.accounts import normalise_account

    async def go() -> int:
        store = await _open(cfg)
        try:
            acct = normalise_account(account)
            removed = 0
            for d in await store.list_devices(acct):
                if token_prefix and not d.device_token.startswith(token_prefix.lower()):
                    continue
                if aps_account_id and d.aps_account_id != aps_account_id:
                    continue
                removed += await store.remove_device(acct, d.aps_account_id, d.device_token)
        finally:
            await store.close()
        print(f"removed {removed} registration(s); a live proxy stops watching once none remain")
        return 0 if removed else 1

    return run_async(go)


def subscriptions_list(cfg: Config, account: str | None) -> int:
    from pushproxy.accounts import normalise_account

    async def go() -> int:
        store = await _open(cfg)
        try:
            subs = await store.list_subscriptions(normalise_account(account) if account else None)
        finally:
            await store.close()
        now = time.time()
        print(f"{'ACCOUNT':24} {'ID':38} {'STATE':9} {'LAST SUCCESS':21} FAILURES")
        for s in subs:
            state = "active" if s.active else "inactive"
            if s.active and (s.silenced_session or (s.silenced_until or 0) > now):
                state = "silenced"
            print(f"{s.account:24} {s.sub_id:38} {state:9} {_when(s.last_success):21} {s.failures}")
        print(f"{len(subs)} subscription(s) (endpoints and keys are never shown)")
        return 0

    return run_async(go)


def vapid(cfg: Config, action: str) -> int:
    from pushproxy.push.vapid import VapidKeyring

    async def go() -> int:
        store = await _open(cfg)
        try:
            ring = await VapidKeyring.load(cfg.vapid_key_path(), store)
            if action == "rotate":
                old = ring.current.key_id
                await ring.rotate()
                print(f"rotated: new key {ring.current.key_id} (old key {old} keeps signing for its subscriptions)")
                print("restart the proxy (or send SIGTERM and let it restart) to use the new key")
            print(ring.current.public_key_b64)
        finally:
            await store.close()
        return 0

    return run_async(go)


def apns_test(cfg: Config, account: str, mailbox: str) -> int:
    """Send one push to every device of an account, as new mail in ``mailbox`` would."""
    from pushproxy.accounts import canonical_mailbox, normalise_account
    from pushproxy.push.apns import ApnsPusher

    if not cfg.apns.enabled:
        raise ConfigError("apns.enabled is false in this config")

    async def go() -> int:
        store = await _open(cfg)
        invalid: list[str] = []

        async def on_invalid(token: str, before: float | None) -> None:
            invalid.append(token)
            await store.remove_device_token(token, before)

        pusher = ApnsPusher(cfg.apns, on_invalid_token=on_invalid)
        try:
            await pusher.start()
            devices = await store.devices_for_account(normalise_account(account))
            for d in devices:
                pusher.notify(d.device_token, d.aps_account_id, canonical_mailbox(mailbox))
            await pusher.flush()
        finally:
            await pusher.close()
            await store.close()
        print(f"sent to {len(devices)} device(s); {len(invalid)} removed as unknown to APNs")
        return 0 if devices else 1

    return run_async(go)
