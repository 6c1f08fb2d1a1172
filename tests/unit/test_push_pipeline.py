"""The push pipeline (pushproxy/push/): one entry point, dedupe, skip \\Seen, fan out; on a real SQLite store.

The same pipeline on several PostgreSQL nodes: tests/integration/test_cluster.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pushproxy.events import Expunge, MailEvent, MessageInfo, NewMail
from pushproxy.push import pipeline as pipeline_module
from pushproxy.push.pipeline import FanOut, PushLedger, PushPipeline, skip_seen
from pushproxy.store import SqliteStore, Vault
from pushproxy.store.records import MailboxState
from pushproxy.watch.checks import MailboxStates

SEEN = ("\\Seen",)


class Extensions:
    """Every extension, as the fan-out sees them (the extension manager): records what it is handed."""

    def __init__(self) -> None:
        self.events: list[MailEvent] = []
        self.flushed = 0

    async def on_event(self, event: MailEvent) -> None:
        self.events.append(event)

    async def flush(self) -> None:
        self.flushed += 1

    def uids(self) -> list[int]:
        return [uid for e in self.events if isinstance(e, NewMail) for uid in e.uids]


class Stuck(Extensions):
    async def on_event(self, event: MailEvent) -> None:
        await asyncio.Event().wait()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "pp.db", Vault.generate())
    await store.open()
    yield store
    await store.close()


def make(store: SqliteStore, extensions: Extensions) -> PushPipeline:
    return PushPipeline(PushLedger(store, "solo"), FanOut(extensions))


def test_skip_seen_keeps_the_unseen_and_drops_an_all_seen_event() -> None:
    event = NewMail("alice", "INBOX", (MessageInfo(1, SEEN), MessageInfo(2)))
    assert skip_seen(event) == NewMail("alice", "INBOX", (MessageInfo(2),), detected_at=event.detected_at)
    assert skip_seen(NewMail("alice", "INBOX", (MessageInfo(1, ("\\seen",)),))) is None
    bare = NewMail("alice", "INBOX")  # "something arrived", no messages known
    assert skip_seen(bare) is bare


async def test_a_message_from_the_watcher_and_from_dovecot_is_pushed_once(store: SqliteStore) -> None:
    extensions = Extensions()
    pipeline = make(store, extensions)
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1), MessageInfo(2)), uidvalidity=9))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(2),), source="dovecot-ox", uidvalidity=9))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1), MessageInfo(3)), uidvalidity=9))  # a replay
    await pipeline.flush()
    assert extensions.uids() == [1, 2, 3]
    assert extensions.flushed == 1  # flush reaches the extensions too


async def test_an_ox_event_without_uidvalidity_meets_the_watchers_claim(store: SqliteStore) -> None:
    """Dovecot's document may lack imap-uidvalidity: the key takes the one the watchers saw, in either order."""
    await store.put_mailbox_state(MailboxState("alice", "INBOX", 9, 3))
    extensions = Extensions()
    pipeline = make(store, extensions)
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1),), uidvalidity=9))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1),), source="dovecot-ox"))  # uidvalidity 0: unknown
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(2),), source="dovecot-ox"))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(2),), uidvalidity=9))
    await pipeline.flush()
    assert extensions.uids() == [1, 2]


async def test_the_watchers_view_of_uidvalidity_serves_while_the_store_is_away(store: SqliteStore) -> None:
    states = MailboxStates(store, store.health)
    await states.save(MailboxState("alice", "INBOX", 9, 3))
    extensions = Extensions()
    ledger = PushLedger(store, "solo")
    ledger.read_states_from(states)
    pipeline = PushPipeline(ledger, FanOut(extensions))
    store.health.failed("test: the store is away")
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1),), source="dovecot-ox"))
    await pipeline.flush()
    assert extensions.uids() == [1]  # pushed unclaimed (the lease is sure), its claim kept under UIDVALIDITY 9
    assert ledger.pending._claims == {("alice", "INBOX", 9): {1}}


async def test_a_message_reported_twice_while_the_store_is_away_is_pushed_once(store: SqliteStore) -> None:
    """While the store is away this node's unrecorded claims are its ledger: a watcher's catch-up after a
    reconnect (or a second source) reporting the same message again does not push it a second time."""
    extensions = Extensions()
    ledger = PushLedger(store, "solo")
    pipeline = PushPipeline(ledger, FanOut(extensions))
    store.health.failed("test: the store is away")
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1), MessageInfo(2)), uidvalidity=9))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(2), MessageInfo(3)), uidvalidity=9))  # a replay
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(3),), uidvalidity=9))
    await pipeline.flush()
    assert extensions.uids() == [1, 2, 3]
    assert ledger.pending._claims == {("alice", "INBOX", 9): {1, 2, 3}}


async def test_a_seen_message_is_claimed_and_never_pushed(store: SqliteStore) -> None:
    extensions = Extensions()
    pipeline = make(store, extensions)
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1, SEEN),), uidvalidity=9))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1),), source="dovecot-ox", uidvalidity=9))
    await pipeline.flush()
    assert extensions.events == []


async def test_the_mailbox_name_is_canonical_for_every_stage_and_extension(store: SqliteStore) -> None:
    extensions = Extensions()
    pipeline = make(store, extensions)
    pipeline.submit(NewMail("alice", "inbox", (MessageInfo(1),)))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1),)))  # the same message
    pipeline.submit(Expunge("alice", "Inbox", (1,)))
    await pipeline.flush()
    assert [(type(e).__name__, e.mailbox) for e in extensions.events] == [("NewMail", "INBOX"), ("Expunge", "INBOX")]


async def test_an_accounts_events_reach_the_extensions_in_order(store: SqliteStore) -> None:
    extensions = Extensions()
    pipeline = make(store, extensions)
    for uid in range(1, 21):
        pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(uid),)))
        pipeline.submit(Expunge("alice", "INBOX", (uid,)))
    await pipeline.flush()
    kinds = [(type(e).__name__, e.uids) for e in extensions.events]
    assert kinds == [(kind, (uid,)) for uid in range(1, 21) for kind in ("NewMail", "Expunge")]


async def test_close_cancels_what_a_stuck_extension_holds(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task is the pipeline's: close waits a bounded time, then none is left running."""
    monkeypatch.setattr(pipeline_module, "CLOSE_TIMEOUT", 0.2)
    pipeline = make(store, Stuck())
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1),)))
    await asyncio.sleep(0.05)
    tasks = set(pipeline.fan_out._tasks)
    assert tasks  # the event is held by the stuck extension
    await pipeline.close()
    await asyncio.sleep(0)
    assert all(task.done() for task in tasks)
