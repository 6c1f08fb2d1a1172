"""Helpers for watcher tests against a real Dovecot: a collecting stand-in for the push pipeline, config, fixtures.

Used by tests/integration/test_watch_dovecot.py and test_watch_modes.py.  The pytest fixtures
(``vault``, ``store``, ``supervisors``) are re-exported by assignment in those modules
(``store = watching.store``), which pytest picks up like a fixture defined there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pushproxy import metrics
from pushproxy.config import Config, StoreConfig, UpstreamConfig, WatchConfig
from pushproxy.events import MailEvent, NewMail
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.extensions.webpush.settings import WebPushConfig
from pushproxy.extensions.xapplepush.store import ApnsDevice, ApnsQueries
from pushproxy.store import SqliteStore, Vault
from pushproxy.watch import Supervisor
from tests.support.dovecot import Dovecot, make_message
from tests.support.waiting import async_wait_for

TOKEN = "ab" * 32


class Events:
    """Stands in for the push pipeline: collects what the watchers submit."""

    def __init__(self) -> None:
        self.items: list[tuple[float, MailEvent]] = []

    def submit(self, event: MailEvent) -> None:
        self.items.append((time.monotonic(), event))

    def new_mail(self, mailbox: str | None = None) -> list[NewMail]:
        return [e for _, e in self.items if isinstance(e, NewMail) and (mailbox is None or e.mailbox == mailbox)]

    def uids(self, mailbox: str = "INBOX") -> list[int]:
        return [uid for e in self.new_mail(mailbox) for uid in e.uids]

    async def wait(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        await async_wait_for(pred, timeout, lambda: f"events; so far: {[e for _, e in self.items]}")


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    await async_wait_for(pred, timeout, what)


def watcher_reconnects() -> float:
    return metrics.REGISTRY.get_sample_value("pushproxy_watcher_reconnects_total") or 0.0


async def wait_stored_uidnext(store: SqliteStore, mailbox: str, uidnext: int, account: str = "alice") -> None:
    """Until the mailbox's stored state has reached ``uidnext`` (the state is stored right after the submit)."""

    async def reached() -> bool:
        state = await store.get_mailbox_state(account, mailbox)
        return state is not None and state.uidnext >= uidnext

    await async_wait_for(reached, 10.0, f"the stored UIDNEXT of {mailbox} to reach {uidnext}")


def make_config(dc: Dovecot, tmp_path: Path, security: str = "starttls", **watch: Any) -> Config:
    port = dc.imaps_port if security == "tls" else dc.imap_port
    watch_cfg: dict[str, Any] = {
        "credentials": "vault",
        "backoff_min": 0.1,
        "backoff_max": 0.5,
        "command_timeout": 5.0,
        "poll_interval": 0.5,
        "connect_rate": 50.0,
    }
    watch_cfg.update(watch)
    return Config(
        upstream=UpstreamConfig(host=dc.host, port=port, security=security, ca_file=dc.ca_file),  # type: ignore[arg-type]
        store=StoreConfig(url=f"sqlite:///{tmp_path}/pushproxy.db"),
        watch=WatchConfig(**watch_cfg),
        webpush=WebPushConfig(mailboxes=["INBOX"]),
    )


@pytest.fixture
def vault() -> Vault:
    return Vault.generate()


@pytest.fixture
async def store(tmp_path: Path, vault: Vault) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "pushproxy.db", vault)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def supervisors() -> AsyncIterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for sup in made:
        await sup.close()


async def register(store: SqliteStore, account: str = "alice", mailboxes: list[str] | None = None) -> None:
    await store.queries(ApnsQueries).upsert_device(
        ApnsDevice(account=account, aps_account_id="aps-1", device_token=TOKEN, mailboxes=mailboxes or ["INBOX"])
    )


async def deliver(dc: Dovecot, subject: str, mailbox: str | None = None, user: str = "alice") -> float:
    await asyncio.to_thread(dc.deliver, user, make_message(subject), mailbox=mailbox)
    return time.monotonic()


def new_supervisor(made: list[Supervisor], config: Config, store: SqliteStore, events: Events, **kw: Any) -> Supervisor:
    kw.setdefault("watching", ExtensionManager.every(config, store))  # what the store's registrations ask
    sup = Supervisor(config, store, events, **kw)
    made.append(sup)
    return sup


async def wait_state(sup: Supervisor, state: str, count: int = 1, timeout: float = 10.0) -> None:
    await wait_until(lambda: sup.status()[state] == count, timeout, f"{count} watcher(s) {state}: {sup.status()}")
