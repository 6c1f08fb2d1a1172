"""What the admin subcommands of the extensions share (store, formatting); WEBPUSH's ``vapid``, ``subscriptions``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pushproxy.config import Config
from pushproxy.store.base import Store

T = TypeVar("T")


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def short(token: str) -> str:
    return token[:8] + "…" if len(token) > 12 else token


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def open_store(cfg: Config) -> Store:
    from pushproxy.store.factory import open_store

    return await open_store(cfg)


def with_store(cfg: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store, run ``work`` on it, close it."""

    async def go() -> T:
        store = await open_store(cfg)
        try:
            return await work(store)
        finally:
            await store.close()

    return run_async(go)


def subscriptions_list(cfg: Config, args: argparse.Namespace) -> int:
    account: str | None = args.account
    from pushproxy.accounts import normalise_account

    subs = with_store(cfg, lambda store: store.list_subscriptions(normalise_account(account) if account else None))
    now = time.time()
    print(f"{'ACCOUNT':24} {'ID':38} {'STATE':9} {'LAST SUCCESS':21} FAILURES")
    for s in subs:
        state = "active" if s.active else "inactive"
        if s.active and (s.silenced_session or (s.silenced_until or 0) > now):
            state = "silenced"
        print(f"{s.account:24} {s.sub_id:38} {state:9} {when(s.last_success):21} {s.failures}")
    print(f"{len(subs)} subscription(s) (endpoints and keys are never shown)")
    return 0


def vapid(cfg: Config, args: argparse.Namespace) -> int:
    action: str = args.action
    from pushproxy.push.vapid import VapidKeyring

    async def go(store: Store) -> int:
        ring = await VapidKeyring.load(cfg.vapid_key_path(), store)
        if action == "rotate":
            old = ring.current.key_id
            await ring.rotate()
            print(f"rotated: new key {ring.current.key_id} (old key {old} keeps signing for its subscriptions)")
            print("restart the proxy (or send SIGTERM and let it restart) to use the new key")
        print(ring.current.public_key_b64)
        return 0

    return with_store(cfg, go)
