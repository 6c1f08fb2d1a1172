"""``pushproxy subscriptions list`` and ``pushproxy vapid show|rotate`` (the CLI only parses)."""

from __future__ import annotations

import argparse
import time

from pushproxy.admin_cli import listed, table, when, with_store
from pushproxy.config import Config
from pushproxy.extensions.webpush.settings import vapid_key_path
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription
from pushproxy.extensions.webpush.vapid import VapidKeyring
from pushproxy.store.base import Store


def subscriptions_list(cfg: Config, args: argparse.Namespace) -> int:
    subs = listed(cfg, args, lambda store, account: store.queries(WebPushQueries).list_subscriptions(account))
    now = time.time()

    def state(s: WebPushSubscription) -> str:
        if s.active and (s.silenced_session or (s.silenced_until or 0) > now):
            return "silenced"
        return "active" if s.active else "inactive"

    table(
        [("ACCOUNT", 24), ("ID", 38), ("STATE", 9), ("LAST SUCCESS", 21), ("FAILURES", 0)],
        ((s.account, s.sub_id, state(s), when(s.last_success), s.failures) for s in subs),
        f"{len(subs)} subscription(s) (endpoints and keys are never shown)",
    )
    return 0


def vapid(cfg: Config, args: argparse.Namespace) -> int:
    action: str = args.action

    async def go(store: Store) -> int:
        ring = await VapidKeyring.load(vapid_key_path(cfg), store.queries(WebPushQueries))
        if action == "rotate":
            old = ring.current.key_id
            await ring.rotate()
            print(f"rotated: new key {ring.current.key_id} (old key {old} keeps signing for its subscriptions)")
            print("restart the proxy (or send SIGTERM and let it restart) to use the new key")
        print(ring.current.public_key_b64)
        return 0

    return with_store(cfg, go)
