"""Watcher starts read registrations per batch of accounts, not per account (issue 23: the start-up herd).

At start, at a failover takeover and after a lost LISTEN connection the lease
manager starts the watchers of many accounts.  Each account used to cost a
registration read per extension (and one of its stored credential), which on
a loaded machine bounded the ramp below ``watch.connect_rate``.  Now a batch of
:data:`~pushproxy.cluster.leases.START_BATCH` accounts costs one query per
extension and one for the credentials.  These tests count the store's queries
(not time) with the real supervisor, extensions and SQLite store; the
watchers themselves never connect (their run is a wait: the count is the
start's, not the connections').
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pushproxy.cluster import leases as leases_module
from pushproxy.cluster.leases import LeaseManager
from pushproxy.config import Config, StoreConfig, UpstreamConfig, WatchConfig
from pushproxy.extensions.deltachat.store import DeltaChatQueries
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.extensions.webpush.store import WebPushQueries
from pushproxy.extensions.xapplepush.store import ApnsQueries
from pushproxy.store import MailboxState, SqliteStore, StoredCredential, StoreUnavailable, Vault
from pushproxy.watch import Supervisor
from pushproxy.watch.spec import WatchSpec
from pushproxy.watch.watcher import Watcher
from tests.support.store_records import device, subscription
from tests.support.waiting import async_wait_for
from tests.unit.test_watch_watcher import Events

pytestmark = pytest.mark.timeout(60)

N = 450
BATCH = 100
REGISTRATION_TABLES = ("apns_devices", "webpush_subscriptions", "deltachat_tokens", "credentials")


class CountingConn:
    """A store connection that records the registration tables each read touches."""

    def __init__(self, conn: Any, seen: list[str], fail: list[str]) -> None:
        self._conn = conn
        self._seen = seen
        self._fail = fail

    async def fetch(self, sql: str, *args: Any) -> Any:
        tables = [t for t in REGISTRATION_TABLES if re.search(rf"\bFROM {t}\b", sql)]
        self._seen.extend(tables)
        if any(t in self._fail for t in tables):
            self._fail.clear()
            raise StoreUnavailable("injected: the store went away")
        return await self._conn.fetch(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class Node:
    def __init__(self, store: SqliteStore, supervisor: Supervisor, leases: LeaseManager) -> None:
        self.store = store
        self.supervisor = supervisor
        self.leases = leases
        self.reads: list[str] = []  # one entry per registration table a read touched
        self.fail_next: list[str] = []  # the next read of this table raises StoreUnavailable

    def watching(self) -> int:
        return sum(1 for i in range(N) if self.supervisor.watcher(f"user{i:04d}") is not None)


async def seed(store: SqliteStore) -> None:
    """N accounts with an APNs device and a stored credential; every third a Web Push subscription,
    every fifth a Delta Chat token: all three extensions answer for some of the accounts."""
    for i in range(N):
        account = f"user{i:04d}"
        await store.queries(ApnsQueries).upsert_device(device(account, "aps", f"{i:064x}"))
        await store.put_credential(StoredCredential(account, account, "pw"))
        if i % 3 == 0:
            await store.queries(WebPushQueries).put_subscription(subscription(account, "s1", active=True))
        if i % 5 == 0:
            await store.queries(DeltaChatQueries).set_token(account, f"openpgp:{i}")


@pytest.fixture
async def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Node]:
    async def wait_forever(self: Watcher) -> None:  # a watcher that never connects
        await asyncio.Event().wait()

    monkeypatch.setattr(Watcher, "_run", wait_forever)
    monkeypatch.setattr(leases_module, "START_BATCH", BATCH)
    store = SqliteStore(tmp_path / "pp.db", Vault.generate())
    await store.open()
    await seed(store)
    config = Config(
        upstream=UpstreamConfig(host="127.0.0.1", port=9, security="none"),
        store=StoreConfig(url=f"sqlite:///{tmp_path}/pp.db"),
        watch=WatchConfig(credentials="vault"),
    )
    extensions = ExtensionManager.every(config, store)
    supervisor = Supervisor(config, store, Events(), watching=extensions)  # type: ignore[arg-type]
    leases = LeaseManager(store, "node-1", "test", 30.0, 3600.0)
    made = Node(store, supervisor, leases)
    real_read = store.backend.read

    @contextlib.asynccontextmanager
    async def counting_read() -> AsyncIterator[Any]:
        async with real_read() as conn:
            yield CountingConn(conn, made.reads, made.fail_next)

    monkeypatch.setattr(store.backend, "read", counting_read)
    yield made
    await supervisor.close()
    await store.close()


async def next_round(leases: LeaseManager) -> None:
    """One periodic round as the lease manager's loop runs it: the round, then the starts it queued."""
    await leases.run_round()
    await leases._start_taken()


def batches(n: int) -> int:
    return math.ceil(n / BATCH)


async def test_lease_starts_cost_a_few_queries_per_batch_not_per_account(node: Node) -> None:
    """N accounts started by the lease rounds (a start on SQLite, a takeover on PostgreSQL: the same path)."""
    await node.leases.start()  # the first round takes every lease (the supervisor is not attached yet)
    node.leases.attach(node.supervisor)
    starts: list[int] = []
    real = node.supervisor.registrations_changed

    async def counted(accounts: list[str]) -> None:  # what the starts read, not what the round itself does
        before = len(node.reads)
        await real(accounts)
        starts.append(len(node.reads) - before)

    node.supervisor.registrations_changed = counted  # type: ignore[method-assign]
    await next_round(node.leases)  # starts the watchers of the leases taken, a batch at a time
    assert node.watching() == N
    # Per batch of 100: one read per extension (3) and one of the credentials; it was 4 per account.
    assert starts == [4] * batches(N), starts


async def test_the_supervisors_start_reads_every_credential_at_once(node: Node) -> None:
    node.leases.attach(node.supervisor)
    await node.leases.start()
    node.reads.clear()
    await node.supervisor.start()  # the bulk start: every extension's table once, the credentials once
    assert node.watching() <= N
    assert sorted(node.reads) == sorted(["apns_devices", "webpush_subscriptions", "deltachat_tokens", "credentials"])


async def test_a_store_fault_in_a_batch_keeps_its_accounts_queued_for_the_next_round(node: Node) -> None:
    await node.leases.start()
    node.leases.attach(node.supervisor)
    node.fail_next.append("webpush_subscriptions")  # the first batch's Web Push read fails
    with pytest.raises(StoreUnavailable):
        await next_round(node.leases)
    assert node.watching() == 0  # nothing was started from a partial read
    assert len(node.leases.held()) == N  # the leases are kept: nobody else can take them meanwhile
    node.store.health.succeeded()  # the store answers again (its probe says so) ...
    await async_wait_for(lambda: node.store.health.up, 5, "the store back")
    await next_round(node.leases)  # ... and the next round starts the same accounts, in the same order
    assert node.watching() == N


async def test_one_node_takes_every_lease_at_once_and_keeps_the_activity_order(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one node (SQLite) the rounds do not pace the start (the connect gate does): every lease in the
    first round; the batch starts put each watcher in the connect queue at its last activity, and a batch
    that finds a watcher running leaves its place alone (only a login or a registration moves it up)."""
    monkeypatch.setattr(leases_module, "TAKE_PER_ROUND", 100)
    await node.store.put_mailbox_state(MailboxState("user0007", "INBOX", 1, 5, updated=1_000.0))
    await node.leases.start()
    assert len(node.leases.held()) == N
    node.leases.attach(node.supervisor)
    await next_round(node.leases)
    watcher, other = node.supervisor.watcher("user0007"), node.supervisor.watcher("user0008")
    assert watcher is not None and other is not None
    assert (watcher.priority, other.priority) == (1_000.0, 0.0)
    await node.supervisor.registrations_changed(["user0007"])  # a resync: not the user's doing
    assert watcher.priority == 1_000.0
    await node.supervisor.registration_changed("user0007")  # a registration: the user is active now
    assert watcher.priority > 1_000_000.0


class GatedSource:
    """What the extensions say is registered; ``specs_of`` waits at a gate (a slow batch read)."""

    def __init__(self, accounts: list[str]) -> None:
        self.registered = {a: WatchSpec.of(["INBOX"]) for a in accounts}
        self.gate = asyncio.Event()
        self.at_gate = asyncio.Event()

    async def spec(self, account: str) -> WatchSpec | None:
        return self.registered.get(account)

    async def specs(self) -> dict[str, WatchSpec]:
        return dict(self.registered)

    async def specs_of(self, accounts: list[str]) -> dict[str, WatchSpec]:
        answer = {a: self.registered[a] for a in accounts if a in self.registered}  # read before the gate
        self.at_gate.set()
        await self.gate.wait()
        return answer

    async def listed(self, account: str, items: Any) -> WatchSpec | None:
        return await self.spec(account)


async def test_a_change_during_a_batch_read_is_followed_with_its_own_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch read a registration that is removed before the batch follows it: no watcher is started
    from the older read (the removal's own follow came first and found nothing to stop)."""

    async def wait_forever(self: Watcher) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Watcher, "_run", wait_forever)
    store = SqliteStore(tmp_path / "pp.db", Vault.generate())
    await store.open()
    config = Config(
        upstream=UpstreamConfig(host="127.0.0.1", port=9, security="none"),
        store=StoreConfig(url=f"sqlite:///{tmp_path}/pp.db"),
        watch=WatchConfig(credentials="master", master_user="master", master_password="pw"),
    )
    source = GatedSource(["alice", "bob"])
    supervisor = Supervisor(config, store, Events(), watching=source)  # type: ignore[arg-type]
    try:
        batch = asyncio.create_task(supervisor.registrations_changed(["alice", "bob"]))
        await source.at_gate.wait()
        del source.registered["alice"]  # alice's last registration goes ...
        await supervisor.registration_changed("alice")  # ... and is followed at once: nothing to stop
        source.gate.set()
        await asyncio.wait_for(batch, 10)
        assert supervisor.watcher("alice") is None
        assert supervisor.watcher("bob") is not None
    finally:
        await supervisor.close()
        await store.close()
