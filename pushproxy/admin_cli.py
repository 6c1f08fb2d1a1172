"""What the admin subcommands of the extensions share: the store, formatting."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from pushproxy.accounts import normalise_account
from pushproxy.config import Config
from pushproxy.store.base import Store

T = TypeVar("T")


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def short(token: str) -> str:
    return token[:8] + "…" if len(token) > 12 else token


def table(columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[object]], total: str) -> None:
    """Print a heading line (each column's name padded to its width; the last is not padded), a line per row,
    then ``total`` (what was listed, counted)."""
    widths = [width for _, width in columns[:-1]]

    def line(cells: Sequence[object]) -> str:
        return " ".join([f"{cell!s:{width}}" for cell, width in zip(cells, widths, strict=False)] + [str(cells[-1])])

    print(line([name for name, _ in columns]))
    for row in rows:
        print(line(row))
    print(total)


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


def listed(cfg: Config, args: argparse.Namespace, query: Callable[[Store, str | None], Awaitable[T]]) -> T:
    """What a ``list`` command shows: ``query`` for its ``--account`` (normalised), or for every account (None)."""
    account: str | None = args.account
    wanted = normalise_account(account) if account else None
    return with_store(cfg, lambda store: query(store, wanted))
