"""Periodic sweeps cost what they change, not what is stored (issue 23), on SQLite and on PostgreSQL.

With thousands of registrations in the store, each sweep is counted, not
timed: the rows every statement hands to the loop (at most a batch,
``store.housekeeping_batch``), the secrets decrypted (none: deletions are
by condition, gauges are ``COUNT`` queries), the loop's turns between two
batches, and what is left after a sweep cut short by a store fault (the next
one finishes it: nothing is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pushproxy.cluster.leases import CHECK_EVERY, LeaseManager
from pushproxy.cluster.queries import ClusterStore
from pushproxy.config import Config, StoreConfig
from pushproxy.extensions.deltachat.addon import DeltaChat
from pushproxy.extensions.deltachat.settings import DeltaChatConfig
from pushproxy.extensions.deltachat.store import token_aad as deltachat_aad
from pushproxy.extensions.deltachat.store import token_hash as deltachat_hash
from pushproxy.extensions.webpush.maintenance import SubscriptionMaintenance, UndeliveredVerifications
from pushproxy.extensions.webpush.process import WebPushProcess
from pushproxy.extensions.webpush.ratelimit import VerificationLimiter, VerificationQueries
from pushproxy.extensions.webpush.store import WebPushQueries, auth_aad, endpoint_aad
from pushproxy.extensions.xapplepush.addon import XApplePush
from pushproxy.extensions.xapplepush.store import ApnsQueries
from pushproxy.extensions.xapplepush.store import token_aad as apns_aad
from pushproxy.extensions.xapplepush.store import token_hash as apns_hash
from pushproxy.metrics import REGISTRY
from pushproxy.store import SqliteStore, SqlStore, StoreUnavailable, Vault
from pushproxy.store.batches import in_batches
from pushproxy.store.schema import SqlConn
from pushproxy.store.tables import parts_of_extensions
from tests.support.extension_host import ExtensionHost

pytestmark = pytest.mark.timeout(120)

BATCH = 200


class CountingVault(Vault):
    """Counts the secrets decrypted."""

    decrypts = 0

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        self.decrypts += 1
        return super().decrypt(blob, aad)


class Statements:
    """Every statement the store runs, with the number of rows it handed back (fetch) or changed (execute)."""

    def __init__(self, store: SqlStore) -> None:
        self.log: list[tuple[str, int]] = []
        backend = store.backend
        read, write = backend.read, backend.write
        backend.read = lambda: self._counted(read())  # type: ignore[method-assign]
        backend.write = lambda: self._counted(write())  # type: ignore[method-assign]

    @contextlib.asynccontextmanager
    async def _counted(self, cm: contextlib.AbstractAsyncContextManager[SqlConn]) -> AsyncIterator[SqlConn]:
        async with cm as conn:
            yield _CountingConn(conn, self.log)  # type: ignore[abstract]

    def fetched(self, containing: str = "") -> list[int]:
        return [n for sql, n in self.log if sql.startswith("fetch") and containing in sql]

    def clear(self) -> None:
        self.log.clear()


class _CountingConn:
    def __init__(self, conn: SqlConn, log: list[tuple[str, int]]) -> None:
        self._conn, self._log = conn, log

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        rows = await self._conn.fetch(sql, *args)
        self._log.append(("fetch " + " ".join(sql.split()), len(rows)))
        return rows

    async def execute(self, sql: str, *args: Any) -> int:
        n = await self._conn.execute(sql, *args)
        self._log.append(("execute " + " ".join(sql.split()), n))
        return n


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    vault = CountingVault.generate()
    if request.param == "sqlite":
        s: SqlStore = SqliteStore(tmp_path / "pushproxy.db", vault, parts_of_extensions())
    else:
        pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'pushproxy[postgres]'")
        from pushproxy.store.postgres import PostgresStore

        s = PostgresStore(request.getfixturevalue("postgres_dsn"), vault, parts=parts_of_extensions())
    await s.open()
    yield s
    await s.close()


def decrypts(store: SqlStore) -> int:
    vault = store._vault
    assert isinstance(vault, CountingVault)
    return vault.decrypts


async def seed(store: SqlStore, rows: Iterator[tuple[str, tuple[Any, ...]]]) -> None:
    """Many rows in one transaction (the registrations' own upserts would commit one by one)."""
    async with store.backend.write() as conn:
        for sql, args in rows:
            await conn.execute(sql, *args)


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


class LoopTurns:
    """A task that counts the loop's turns: how often other work ran."""

    def __init__(self) -> None:
        self.turns = 0
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.turns += 1

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# --- Web Push -------------------------------------------------------------------------------------------


class Maintenance(SubscriptionMaintenance):
    """The subscription maintenance as WebPushCommands mixes it in, without the commands."""

    def __init__(self, store: SqlStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.subscriptions = store.queries(WebPushQueries)
        self.process = WebPushProcess("node-a")
        self.limiter = VerificationLimiter(store.queries(VerificationQueries), 10, 10)
        self.clock = clock
        self._undelivered = UndeliveredVerifications(86400.0, clock)
        self._sweep_interval = 60.0
        self._sweep_batch = BATCH
        self.changed: list[str] = []

    async def _registration_changed(self, account: str, session_id: str | None) -> None:
        self.changed.append(account)


EXPIRED = 1250  # 6 full batches of 200 and one of 50
NOW = 1_000_000.0


def subscriptions(store: SqlStore) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """1,250 expired unacknowledged ones, 300 still waiting, 420 active of which 100 silenced (here)."""
    vault = store._vault
    sql = """INSERT INTO webpush_subscriptions (account, sub_id, endpoint, p256dh, auth, vapid_key_id, active,
                 ack_token_hash, ack_expires, silenced_until, silenced_session, want_changes, created, updated,
                 last_success, failures)
             VALUES ($1, $2, $3, 'B', $4, 'k1', $5, NULL, $6, $7, $8, FALSE, 1, 1, NULL, 0)"""

    def row(i: int, active: bool, ack_expires: float | None, until: float | None = None, session: str | None = None):
        account, sub_id = f"user{i % 700:04d}", f"s{i}"
        endpoint = vault.encrypt(b"https://push.example.net/secret/%d" % i, endpoint_aad(account, sub_id))
        auth = vault.encrypt(b"c2VjcmV0LWF1dGgtMTZi", auth_aad(account, sub_id))
        return sql, (account, sub_id, endpoint, auth, active, ack_expires, until, session)

    i = 0
    for _ in range(EXPIRED):
        yield row(i, False, NOW - 10 - i % 97)
        i += 1
    for _ in range(300):
        yield row(i, False, NOW + 1000)
        i += 1
    for k in range(420):
        until = NOW + 300 if k < 50 else None
        session = "node-a:sess-1" if 50 <= k < 100 else "node-b:sess-1" if 100 <= k < 120 else None
        yield row(i, True, None, until, session)
        i += 1


async def test_a_web_push_sweep_deletes_in_batches_and_decrypts_nothing(store: SqlStore) -> None:
    await seed(store, subscriptions(store))
    maintenance = Maintenance(store, lambda: NOW)
    statements, turns = Statements(store), LoopTurns()
    calls: list[int] = []
    expire = maintenance.subscriptions.expire_inactive_subscriptions

    async def counted_expire(now: float, limit: int) -> list[tuple[str, str]]:
        calls.append(turns.turns)
        return await expire(now, limit)

    maintenance.subscriptions.expire_inactive_subscriptions = counted_expire  # type: ignore[method-assign]
    before = decrypts(store)
    try:
        assert await maintenance.sweep() == EXPIRED
    finally:
        await turns.stop()

    assert decrypts(store) == before  # not one endpoint or auth secret
    assert max(statements.fetched()) <= BATCH  # no statement hands the loop more than a batch
    assert statements.fetched("DELETE FROM webpush_subscriptions") == [200] * 6 + [50]
    assert len(calls) == 7 and all(b > a for a, b in itertools.pairwise(calls))  # other work in between
    assert sorted(set(maintenance.changed)) == sorted({f"user{i % 700:04d}" for i in range(EXPIRED)})
    counts = {s: gauge("pushproxy_webpush_subscriptions", state=s) for s in ("inactive", "active", "silenced")}
    assert counts == {"inactive": 300, "active": 320, "silenced": 100}
    async with store.backend.read() as conn:
        (row,) = await conn.fetch("SELECT COUNT(*) AS n FROM webpush_subscriptions")
    assert row["n"] == 300 + 420


async def test_one_web_push_sweep_step_reads_at_most_a_batch(store: SqlStore) -> None:
    await seed(store, subscriptions(store))
    maintenance = Maintenance(store, lambda: NOW)
    statements = Statements(store)
    before = decrypts(store)
    assert await maintenance.expire_batch(NOW, BATCH) == BATCH
    assert statements.fetched() == [BATCH] and decrypts(store) == before


async def test_a_web_push_sweep_cut_short_by_the_store_is_finished_by_the_next(store: SqlStore) -> None:
    await seed(store, subscriptions(store))
    maintenance = Maintenance(store, lambda: NOW)
    expire = maintenance.subscriptions.expire_inactive_subscriptions
    calls = 0

    async def failing_third(now: float, limit: int) -> list[tuple[str, str]]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise StoreUnavailable("the database went away", "unreachable")
        return await expire(now, limit)

    maintenance.subscriptions.expire_inactive_subscriptions = failing_third  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await maintenance.sweep()
    assert await maintenance.sweep() == EXPIRED - 2 * BATCH  # the rest, and nothing twice
    remaining = await store.queries(WebPushQueries).list_subscriptions()
    assert len(remaining) == 300 + 420 and not [s for s in remaining if not s.active and s.ack_expires == NOW]


# --- APNs and Delta Chat housekeeping, the push ledger ---------------------------------------------------


CONFIG = Config(store=StoreConfig(housekeeping_batch=BATCH), deltachat=DeltaChatConfig(enabled=True))


async def test_the_apns_housekeeping_expires_in_batches_and_counts_without_decrypting(store: SqlStore) -> None:
    vault, now = store._vault, time.time()
    old = now - CONFIG.store.device_expiry - 100
    sql = """INSERT INTO apns_devices (account, aps_account_id, token_hash, device_token, subtopic, version, mailboxes,
                 first_registered, last_registered)
             VALUES ($1, 'aps', $2, $3, 'com.apple.mobilemail', 2, '["INBOX"]', $4, $4)"""
    await seed(
        store,
        (
            (
                sql,
                (
                    f"user{i:05d}",
                    apns_hash(vault, f"{i:064x}"),
                    vault.encrypt(b"%064x" % i, apns_aad(f"user{i:05d}", "aps")),
                    old if i < 1100 else now,
                ),
            )
            for i in range(3000)
        ),
    )
    ext = XApplePush()
    ext.config = CONFIG
    ext.attach(ExtensionHost(store, CONFIG))  # type: ignore[arg-type]
    statements, before = Statements(store), decrypts(store)
    await ext.expire_devices()
    assert decrypts(store) == before
    assert max(statements.fetched()) <= BATCH
    assert statements.fetched("DELETE FROM apns_devices") == [200] * 5 + [100]
    assert gauge("pushproxy_registrations", kind="apns", state="active") == 1900
    statements.clear()
    await ext.expire_devices()  # a quiet minute: one short batch and one COUNT, whatever is stored
    assert statements.fetched() == [0, 1] and decrypts(store) == before


async def test_the_delta_chat_housekeeping_expires_in_batches_and_counts_without_decrypting(store: SqlStore) -> None:
    vault, now = store._vault, time.time()
    ext = DeltaChat()
    assert ext.configure(CONFIG)
    old = now - ext.cfg.token_expiry - 100
    sql = """INSERT INTO deltachat_tokens (account, token_hash, token, first_registered, last_registered)
             VALUES ($1, $2, $3, $4, $4)"""
    await seed(
        store,
        (
            (
                sql,
                (
                    f"user{i:05d}",
                    deltachat_hash(vault, f"t{i}"),
                    vault.encrypt(b"t%d" % i, deltachat_aad(f"user{i:05d}")),
                    old if i < 450 else now,
                ),
            )
            for i in range(2500)
        ),
    )
    ext.attach(ExtensionHost(store, CONFIG))  # type: ignore[arg-type]
    statements, before = Statements(store), decrypts(store)
    await ext.expire_tokens()
    assert decrypts(store) == before
    assert statements.fetched("DELETE FROM deltachat_tokens") == [200, 200, 50]
    assert max(statements.fetched()) <= BATCH
    assert gauge("pushproxy_registrations", kind="deltachat", state="active") == 2050


async def test_the_push_ledger_is_pruned_in_batches(store: SqlStore) -> None:
    sql = """INSERT INTO push_ledger (account, mailbox, uidvalidity, uid, node, claimed)
             VALUES ($1, 'INBOX', 7, $2, 'n1', epoch_now() - $3)"""
    await seed(store, ((sql, (f"user{i % 50}", i, 7200.0 if i < 1030 else 10.0)) for i in range(1500)))
    cluster, statements = ClusterStore(store), Statements(store)
    assert await in_batches(lambda n: cluster.prune_ledger(3600.0, n), BATCH) == 1030
    deletes = [n for sql, n in statements.log if "DELETE FROM push_ledger" in sql]
    assert deletes == [200] * 5 + [30]
    async with store.backend.read() as conn:
        (row,) = await conn.fetch("SELECT COUNT(*) AS n FROM push_ledger")
    assert row["n"] == 470


# --- the lease round --------------------------------------------------------------------------------------


class NoWatchers:
    async def registration_changed(self, account: str, session_id: str | None = None) -> None:
        pass

    async def registrations_changed(self, accounts: Sequence[str]) -> None:
        pass

    async def release(self, account: str, lost: bool = False) -> None:
        pass


async def test_a_quiet_lease_round_hands_the_loop_no_row_per_account(store: SqlStore) -> None:
    """Every TTL/3, whatever the number of accounts: the renewal only counts, and the check of who should
    watch what (every CHECK_EVERY rounds) gets back only what is to be done: nothing, here."""
    vault, n = store._vault, 3000
    sql = """INSERT INTO apns_devices (account, aps_account_id, token_hash, device_token, subtopic, version, mailboxes,
                 first_registered, last_registered)
             VALUES ($1, 'aps', $2, $3, 'com.apple.mobilemail', 2, '["INBOX"]', 1, $4)"""
    await seed(
        store,
        (
            (sql, (f"user{i:05d}", apns_hash(vault, f"{i:064x}"), vault.encrypt(b"x", b"x"), time.time()))
            for i in range(n)
        ),
    )
    leases = LeaseManager(store, "n1", "test n1", 30.0, 3600.0)
    leases.attach(NoWatchers())
    for _ in range(20):  # TAKE_PER_ROUND a round
        await leases.run_round()
        if len(leases.held()) == n:
            break
    assert len(leases.held()) == n
    statements, before = Statements(store), decrypts(store)
    for _ in range(CHECK_EVERY + 1):  # at least one check among them
        await leases.run_round()
    assert len(leases.held()) == n and decrypts(store) == before
    assert max(statements.fetched()) <= 1  # the heartbeat's and the clock's one row, no row per account
    assert any("watch_leases l ON" in sql for sql, _ in statements.log)  # a check ran, and found nothing to do
    assert gauge("pushproxy_cluster_accounts_unwatched") == 0

    # One account's registration goes away (the registration feed tells the leases): the next round's
    # check hands its lease back, reading one row.
    assert await store.queries(ApnsQueries).remove_device("user00007", "aps", f"{7:064x}") == 1
    await leases.registration_changed("user00007")
    statements.clear()
    await leases.run_round()
    assert "user00007" not in leases.held() and len(leases.held()) == n - 1
    assert max(statements.fetched()) <= 1
