"""``pushproxy deltachat list|remove`` (the CLI only parses): token ids, never tokens."""

from __future__ import annotations

import argparse

from pushproxy.accounts import normalise_account
from pushproxy.admin_cli import listed, table, when, with_store
from pushproxy.config import Config
from pushproxy.extensions.deltachat.settings import deltachat_settings
from pushproxy.extensions.deltachat.store import DeltaChatQueries
from pushproxy.store.base import Store


def tokens_list(cfg: Config, args: argparse.Namespace) -> int:
    tokens = listed(cfg, args, lambda store, account: store.queries(DeltaChatQueries).list_tokens(account))
    expiry = deltachat_settings(cfg).token_expiry
    table(
        [("ACCOUNT", 32), ("TOKEN ID", 12), ("FIRST SET", 21), ("LAST SET", 21), ("EXPIRES", 0)],
        (
            (t.account, t.token_id, when(t.first_registered), when(t.last_registered), when(t.last_registered + expiry))
            for t in tokens
        ),
        f"{len(tokens)} Delta Chat token(s)",
    )
    return 0


def tokens_remove(cfg: Config, args: argparse.Namespace) -> int:
    account = normalise_account(args.account)
    prefix: str | None = args.token_id

    async def remove(store: Store) -> int:
        queries = store.queries(DeltaChatQueries)
        removed = 0
        for t in await queries.list_tokens(account):
            if prefix is None or t.token_id.startswith(prefix.lower()):
                removed += await queries.remove_token(account, t.token)
        return removed

    removed = with_store(cfg, remove)
    print(f"removed {removed} token(s); a live proxy stops watching once nothing else needs the account")
    return 0 if removed else 1
