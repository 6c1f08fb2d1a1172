"""What the extensions' admin subcommands share (pushproxy/admin_cli.py)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pushproxy import admin_cli
from pushproxy.admin_cli import listed


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
