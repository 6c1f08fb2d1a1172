"""EVENTLOG: a test-only extension that writes every mail event to a file, one JSON line each.

It exists to show (and test) that the core knows extensions only through
their hooks, and that a third-party package adds one without touching
pushproxy: it is this module plus an entry point of the tests' distribution
(:mod:`tests.support.distribution`), found by the same discovery as any
installed package's (:mod:`pushproxy.extensions`), and loaded, as a
third-party extension is, only where the config lists it (``extensions:
[..., eventlog]``); then it is off unless its section sets ``eventlog.path``.
Production never sees it.

- section ``eventlog``: ``path`` (the file), ``accounts`` (watched when they
  log in), ``mailboxes`` (default INBOX).
- ``XEVENTLOG`` (after login): ``* XEVENTLOG <n>``, the events recorded for
  the logged-in account since the proxy started.
- ``pushproxy eventlog show --config FILE``: print the file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from pushproxy.accounts import normalise_account
from pushproxy.events import Expunge, FlagChange, MailEvent, NewMail
from pushproxy.extensions.base import (
    Extension,
    Reply,
    SessionContext,
    WatchRequest,
    admin_command,
    admin_group,
    require_login,
)
from pushproxy.imap.parse import Command

if TYPE_CHECKING:
    from pushproxy.config import Config


class EventLogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path | None = None
    accounts: list[str] = Field(default_factory=list)
    mailboxes: list[str] = Field(default_factory=lambda: ["INBOX"])


def event_record(event: MailEvent) -> dict[str, Any]:
    record: dict[str, Any] = {"type": type(event).__name__, "account": event.account, "mailbox": event.mailbox}
    if isinstance(event, NewMail | Expunge):
        record["uids"] = list(event.uids)
    elif isinstance(event, FlagChange):
        record["uids"] = [uid for uid, _ in event.changes]
    return record


class EventLog(Extension):
    section = "eventlog"
    settings = EventLogSettings

    def __init__(self) -> None:
        super().__init__(name="eventlog", capabilities=(b"XEVENTLOG",), commands={"XEVENTLOG": self.xeventlog})
        self.counts: dict[str, int] = {}
        self._write = asyncio.Lock()

    def configure(self, config: Config) -> bool:
        section = config.section("eventlog", EventLogSettings)
        self.options = section
        self.accounts = {normalise_account(a) for a in section.accounts}
        return section.path is not None

    async def watched_mailboxes(self, account: str) -> WatchRequest | None:
        return WatchRequest(tuple(self.options.mailboxes)) if account in self.accounts else None

    async def watched_accounts(self) -> dict[str, WatchRequest]:
        return {account: WatchRequest(tuple(self.options.mailboxes)) for account in self.accounts}

    async def on_event(self, event: MailEvent) -> None:
        if event.account not in self.accounts:
            return
        line = json.dumps(event_record(event)) + "\n"
        path = self.options.path
        assert path is not None
        async with self._write:  # lines in event order, never interleaved
            await asyncio.to_thread(_append, path, line)
        self.counts[event.account] = self.counts.get(event.account, 0) + 1

    async def xeventlog(self, cmd: Command, ctx: SessionContext) -> Reply:
        account = require_login(ctx, "XEVENTLOG")
        if isinstance(account, Reply):
            return account
        ctx.reply_untagged(b"XEVENTLOG %d" % self.counts.get(account, 0))
        return Reply("OK", "XEVENTLOG completed.")

    @classmethod
    def cli(cls, subparsers: argparse._SubParsersAction[Any]) -> None:
        group = admin_group(subparsers, "eventlog", "the test-only event log")
        admin_command(group, "show", "print the recorded events", _show)


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line)


def _show(config: Config, args: argparse.Namespace) -> int:
    path = config.section("eventlog", EventLogSettings).path
    if path is None or not path.exists():
        print("no event log (eventlog.path unset or nothing recorded)")
        return 1
    print(path.read_text(encoding="utf-8"), end="")
    return 0
