"""What the extensions' admin subcommands share (pushproxy/admin_cli.py)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pushproxy import admin_cli
from pushproxy.admin_cli import listed, table


def test_a_list_command_asks_for_its_account_normalised_or_for_every_account(monkeypatch: pytest.MonkeyPatch) -> None:
    def with_store(cfg: Any, work: Callable[[Any], Awaitable[Any]]) -> Any:
        return asyncio.run(work("the store"))

    monkeypatch.setattr(admin_cli, "with_store", with_store)
    asked: list[tuple[object, str | None]] = []

    async def query(store: object, account: str | None) -> list[str]:
        asked.append((store, account))
        return ["row"]

    assert listed(None, argparse.Namespace(account=" Alice "), query) == ["row"]  # type: ignore[arg-type]
    assert listed(None, argparse.Namespace(account=None), query) == ["row"]  # type: ignore[arg-type]
    assert asked == [("the store", "alice"), ("the store", None)]


def test_a_table_pads_every_column_but_the_last_then_counts(capsys: pytest.CaptureFixture[str]) -> None:
    table([("ACCOUNT", 10), ("ID", 4), ("FAILURES", 0)], [("alice", "a1", 0), ("bob", "b2345", 12)], "2 row(s)")
    assert capsys.readouterr().out.splitlines() == [
        f"{'ACCOUNT':10} {'ID':4} FAILURES",
        f"{'alice':10} {'a1':4} 0",
        f"{'bob':10} {'b2345':4} 12",  # a longer value widens its line, as an f-string's padding does
        "2 row(s)",
    ]
