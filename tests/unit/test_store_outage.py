"""A store that goes away and comes back (issue 20 point 1), part by part, on a real SQLite file.

The store is closed to make it unreachable (every call raises StoreUnavailable,
ping says False) and opened again to bring it back.  End to end, on real
PostgreSQL and several nodes: tests/integration/test_fault_campaign.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pushproxy import metrics
from pushproxy.events import MailEvent, MessageInfo, NewMail
from pushproxy.extensions.xapplepush.store import ApnsDevice, ApnsQueries
from pushproxy.push.pipeline import FanOut, PushLedger, PushPipeline
from pushproxy.store import MailboxState, SqliteStore, StoreUnavailable, Vault
from pushproxy.store.health import StoreHealth
from pushproxy.store.pending import PendingClaims
from pushproxy.watch.checks import MailboxStates
from tests.support.waiting import async_wait_for

TOKEN = "ab" * 32


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "pp.db", Vault.generate())
    await store.open()
    yield store
    await store.close()


async def test_health_says_it_once_and_runs_the_recovery_in_order(caplog: pytest.LogCaptureFixture) -> None:
    reachable = False
    steps: list[str] = []

    async def ping() -> bool:
        return reachable

    async def step(name: str) -> None:
        steps.append(name)

    health = StoreHealth(ping, probe_interval=0.02)
    health.on_recovered("first", lambda: step("first"))
    health.on_recovered("second", lambda: step("second"))
    with caplog.at_level(logging.INFO, logger="pushproxy.store"):
        for _ in range(3):
            health.failed(StoreUnavailable("connection refused"))
        assert not health.up and metrics.STORE_UP._value.get() == 0
        await asyncio.sleep(0.1)  # probes while away: no more lines
        reachable = True
        await async_wait_for(lambda: health.up, 5, "the store back")
        await async_wait_for(lambda: len(steps) == 4, 5, "the second pass")
    assert steps == ["first", "second", "first", "second"]  # in order, then once more for what came meanwhile
    assert metrics.STORE_UP._value.get() == 1
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "pushproxy.store"]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert not any(r.exc_info for r in caplog.records)
    await health.close()


async def test_a_quiet_health_still_says_an_outage_its_back_end_never_saw(caplog: pytest.LogCaptureFixture) -> None:
    """SQLite's health is quiet (the back end logs its own fault episodes), but a caller's own deadline
    (a state write outlasting WRITE_WAIT, a lease round its TTL) never reached the back end: one WARNING
    and one INFO here, else the node ran 'away' without a line."""

    async def ping() -> bool:
        return True

    with caplog.at_level(logging.INFO, logger="pushproxy.store"):
        health = StoreHealth(ping, probe_interval=0.02, quiet=True)
        health.failed(StoreUnavailable("disk full"))  # the back end said this one
        await async_wait_for(lambda: health.up, 5, "the store back")
        assert not [r for r in caplog.records if r.name == "pushproxy.store"]
        health.failed(TimeoutError())
        await async_wait_for(lambda: health.up, 5, "the store back")
    lines = [r.levelname for r in caplog.records if r.name == "pushproxy.store"]
    assert lines == ["WARNING", "INFO"], lines
    await health.close()


async def test_mailbox_state_is_kept_in_memory_and_written_when_the_store_is_back(store: SqliteStore) -> None:
    states = MailboxStates(store, store.health)
    await states.save(MailboxState("alice", "INBOX", 7, 10))
    await store.close()  # away
    newer = MailboxState("alice", "INBOX", 7, 12)
    await states.save(newer)  # no exception: kept
    assert states.pending == 1 and not store.health.up
    assert await states.get_mailbox_state("alice", "INBOX") is newer  # a reconnecting watcher catches up from it
    with pytest.raises(StoreUnavailable):
        await states.get_mailbox_state("bob", "INBOX")  # never seen: nothing to catch up from
    await store.open()
    await states.flush()
    assert states.pending == 0
    stored = await store.get_mailbox_state("alice", "INBOX")
    assert stored is not None and stored.uidnext == 12


async def test_the_watchers_state_writes_share_transactions(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 watchers writing their state at once (a start-up ramp) are a few commits, not 300 fsyncs that
    queue past WRITE_WAIT and read as an outage; each put still returns once its state is stored, and a
    mailbox written twice meanwhile ends with its later state."""
    commits: list[int] = []
    real = store.put_mailbox_states

    async def counted(group: list[MailboxState]) -> None:
        commits.append(len(group))
        await real(group)

    monkeypatch.setattr(store, "put_mailbox_states", counted)
    states = MailboxStates(store, store.health)
    puts = [MailboxState(f"user{i:03d}", "INBOX", 1, 5) for i in range(300)]
    await asyncio.gather(*(states.save(s) for s in puts), states.save(MailboxState("user000", "INBOX", 1, 9)))
    assert sum(commits) <= 301 and len(commits) <= 3, commits  # the first alone, then the rest together
    assert states.pending == 0 and store.health.up
    stored = await store.get_mailbox_state("user000", "INBOX")
    assert stored is not None and stored.uidnext == 9
    assert all([await store.get_mailbox_state(s.account, "INBOX") for s in puts])
    await store.close()  # a group that fails leaves its states pending, as one write did
    await states.save(MailboxState("user001", "INBOX", 1, 7))
    assert states.pending == 1 and not store.health.up


async def test_senders_read_registrations_from_memory_while_the_store_is_away(store: SqliteStore) -> None:
    devices = store.queries(ApnsQueries)
    await devices.upsert_device(ApnsDevice(account="alice", aps_account_id="aps", device_token=TOKEN))
    assert [d.device_token for d in await devices.devices_for_account("alice")] == [TOKEN]
    await store.close()
    store.health.failed(StoreUnavailable("gone"))
    assert [d.device_token for d in await devices.devices_for_account("alice")] == [TOKEN]  # no wait, no error
    with pytest.raises(StoreUnavailable):
        await devices.devices_for_account("bob")  # never read: the dispatcher retries the event
    await store.open()


async def test_a_change_notice_makes_the_view_read_again(store: SqliteStore) -> None:
    devices = store.queries(ApnsQueries)
    await devices.upsert_device(ApnsDevice(account="alice", aps_account_id="aps", device_token=TOKEN))
    assert len(await devices.devices_for_account("alice")) == 1
    await devices.upsert_device(ApnsDevice(account="alice", aps_account_id="aps2", device_token="cd" * 32))
    assert len(await devices.devices_for_account("alice")) == 2  # this node's write is a notice too


async def test_a_batch_read_fills_the_view_the_senders_use_while_the_store_is_away(store: SqliteStore) -> None:
    """A lease batch reads its accounts' registrations with one query (devices_of_accounts); what it read
    is what a send uses once the store is away, as if each account had been read alone."""
    devices = store.queries(ApnsQueries)
    await devices.upsert_device(ApnsDevice(account="alice", aps_account_id="aps", device_token=TOKEN))
    batch = await devices.devices_of_accounts(["alice", "bob"])
    assert [d.device_token for d in batch["alice"]] == [TOKEN] and batch["bob"] == []
    await store.close()  # the next read fails: the view answers from memory and the store is marked away
    again = await devices.devices_of_accounts(["alice", "bob"])
    assert not store.health.up
    assert [d.device_token for d in again["alice"]] == [TOKEN] and again["bob"] == []
    assert [d.device_token for d in await devices.devices_for_account("alice")] == [TOKEN]  # no wait, no error
    with pytest.raises(StoreUnavailable):  # carol was never read: the whole batch waits for the store
        await devices.devices_of_accounts(["alice", "carol"])
    await store.open()
    store.health.succeeded()  # a call worked: the probe sees the store back
    await async_wait_for(lambda: store.health.up, 5, "the store back")
    assert (await devices.devices_of_accounts(["alice", "carol"]))["carol"] == []


def test_pending_claims_are_bounded_oldest_first() -> None:
    claims = PendingClaims(limit=3)
    claims.add("a", "INBOX", 1, [1, 2])
    claims.add("b", "INBOX", 1, [1, 2])
    assert len(claims) == 2 and claims.forgotten == 2  # a's two were the oldest


class Pushed(list[MailEvent]):
    """The extensions' place at the end of the push pipeline."""

    async def on_event(self, event: MailEvent) -> None:
        self.append(event)

    async def flush(self) -> None:
        pass


class _Leases:
    """This node's leases as the dedupe stage sees them: sure to be held, or not."""

    def __init__(self, *, sure: bool) -> None:
        self.sure = sure

    def sure_to_hold(self, account: str) -> bool:
        return self.sure


async def test_ledger_pushes_unclaimed_while_the_lease_is_sure_and_records_the_claims(store: SqliteStore) -> None:
    got = Pushed()
    pipeline = PushPipeline(PushLedger(store, "solo", leases=_Leases(sure=True)), FanOut(got))
    ledger = pipeline.dedupe
    await store.close()
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(7),), uidvalidity=1))
    await async_wait_for(lambda: len(got) == 1, 10, "pushed unclaimed")
    assert len(ledger.pending) == 1
    await store.open()
    await ledger.write_pending()
    assert len(ledger.pending) == 0
    await async_wait_for(lambda: store.health.up, 5, "the probe to find the store back")
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(7),), uidvalidity=1))  # e.g. the taker's catch-up
    await pipeline.flush()
    assert len(got) == 1  # the recorded claim stops the second push


async def test_ledger_holds_events_past_the_lease_and_claims_them_when_the_store_is_back(store: SqliteStore) -> None:
    got = Pushed()
    pipeline = PushPipeline(PushLedger(store, "solo", leases=_Leases(sure=False)), FanOut(got))
    await store.close()
    store.health.failed(StoreUnavailable("gone"))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(8),), uidvalidity=1))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(9),), uidvalidity=1))
    await pipeline.flush()
    assert got == []  # held: another node may hold the lease now
    await store.open()
    await pipeline.release()  # a recovery step: the events go on once the store counts as up
    await async_wait_for(lambda: store.health.up, 5, "the probe to find the store back")
    await async_wait_for(lambda: len(got) == 2, 5, "the held events")
    await pipeline.flush()
    assert [e.messages[0].uid for e in got if isinstance(e, NewMail)] == [8, 9]  # once each, in order


async def test_webpush_subscriptions_are_read_from_memory_while_the_store_is_away(store: SqliteStore) -> None:
    from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription

    subs = store.queries(WebPushQueries)
    sub = WebPushSubscription("alice", "s1", "https://push.example/x", "BAAA", "auth", "k1", active=True)
    await subs.put_subscription(sub)
    assert [s.sub_id for s in await subs.subscriptions_for_account("alice")] == ["s1"]
    await store.close()
    store.health.failed(StoreUnavailable("gone"))
    again = await subs.subscriptions_for_account("alice")
    assert [s.sub_id for s in again] == ["s1"] and again[0].endpoint == sub.endpoint
    again[0].active = False  # a caller changing its copy does not change the view
    assert (await subs.subscriptions_for_account("alice"))[0].active
    await store.open()


async def test_an_event_whose_send_cannot_read_the_store_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    from pushproxy.extensions.base import Extension
    from pushproxy.extensions.manager import ExtensionManager

    class NeedsTheStore(Extension):
        def __init__(self) -> None:
            super().__init__(name="needs-store")
            self.calls = 0
            self.sent: list[MailEvent] = []

        async def on_event(self, event: MailEvent) -> None:
            self.calls += 1
            if self.calls == 1:
                raise StoreUnavailable("the store is away and the devices of this account were never read")
            self.sent.append(event)

    ext = NeedsTheStore()
    manager = ExtensionManager([ext])
    with caplog.at_level(logging.DEBUG):
        await manager.on_event(NewMail("alice", "INBOX", (MessageInfo(3),), uidvalidity=1))
        await async_wait_for(lambda: len(ext.sent) == 1, 5, "the event again")
    assert ext.calls == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]  # no line, no traceback
