"""Leases, push ledger (the push pipeline's dedupe stage) and registration feed of several nodes, in-process,
on a real PostgreSQL (and SQLite).

Each "node" is its own store (its own connection pool) with its own lease
manager, as separate processes would have; rounds are driven by the test
(``run_round``) so that what happens in between is under its control.
The multi-process tests with a real Dovecot are in test_cluster_nodes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pushproxy import metrics
from pushproxy.cluster import LeaseManager, RegistrationFeed, wanted_owner
from pushproxy.cluster.leases import EXPIRY_GRACE
from pushproxy.config import ConfigError
from pushproxy.events import Expunge, MailEvent, MessageInfo, NewMail
from pushproxy.extensions.webpush.ratelimit import VerificationLimiter, VerificationQueries
from pushproxy.extensions.webpush.store import WebPushQueries
from pushproxy.extensions.webpush.vapid import VapidKeyring
from pushproxy.extensions.xapplepush.store import ApnsQueries
from pushproxy.push.pipeline import FanOut, PushLedger, PushPipeline
from pushproxy.store import SqliteStore, SqlStore, Vault
from tests.support.postgres import PostgresServer
from tests.support.store_records import device

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'pushproxy[postgres]'")

from pushproxy.store.postgres import PostgresStore  # noqa: E402

TTL = 3.0
VAULT = Vault.generate()


class FakeWatchers:
    """Runs a "watcher" for an account exactly when the supervisor would: owned and registered."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.leases: LeaseManager | None = None
        self.running: set[str] = set()

    async def registration_changed(self, account: str, session_id: str | None = None) -> None:
        assert self.leases is not None
        if self.leases.owns(account) and await self.store.queries(ApnsQueries).devices_for_account(account):
            self.running.add(account)
        else:
            self.running.discard(account)

    async def registrations_changed(self, accounts: list[str]) -> None:
        assert self.leases is not None
        registered = await self.store.queries(ApnsQueries).devices_of_accounts(accounts)
        for account in accounts:
            if self.leases.owns(account) and registered[account]:
                self.running.add(account)
            else:
                self.running.discard(account)

    async def release(self, account: str, lost: bool = False) -> None:
        self.running.discard(account)


class Received:
    """The end of the push pipeline, where the extensions are: hands each event to ``submit``."""

    def __init__(self, submit: Callable[[MailEvent], None]) -> None:
        self._submit = submit

    async def on_event(self, event: MailEvent) -> None:
        self._submit(event)

    async def flush(self) -> None:
        pass


def push_pipeline(store: SqlStore, node_id: str, submit: Callable[[MailEvent], None]) -> PushPipeline:
    """A node's push pipeline, its dedupe stage on the node's store."""
    return PushPipeline(PushLedger(store, node_id), FanOut(Received(submit)))


class Node:
    def __init__(self, store: SqlStore, node_id: str) -> None:
        self.store = store
        self.node_id = node_id
        self.leases = LeaseManager(store, node_id, f"test {node_id}", TTL, 3600.0)
        self.watchers = FakeWatchers(store)
        self.watchers.leases = self.leases
        self.leases.attach(self.watchers)
        self.feed = RegistrationFeed(store, self.leases.registration_changed, self.leases.resync)

    async def round(self) -> None:
        await self.leases.run_round()
        # What the supervisor does at start and after each round: watchers for held accounts.
        for account in self.leases.held():
            await self.watchers.registration_changed(account)


NodeFactory = Callable[[str], Awaitable[Node]]


@pytest.fixture
async def pg_nodes(postgres_dsn: str) -> AsyncIterator[NodeFactory]:
    made: list[Node] = []

    async def make(node_id: str) -> Node:
        store = PostgresStore(postgres_dsn, VAULT, max_size=4)
        await store.open()
        node = Node(store, node_id)
        made.append(node)
        return node

    yield make
    for node in made:
        await node.feed.close()
        await node.store.close()


async def register(store: SqlStore, accounts: list[str]) -> None:
    for i, account in enumerate(accounts):
        await store.queries(ApnsQueries).upsert_device(device(account, "aps", f"{i:064x}"))


async def until(
    predicate: Callable[[], bool], timeout: float, step: Callable[[], Awaitable[None]] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        if step is not None:
            await step()
        await asyncio.sleep(0.05)


def assert_exclusive_cover(nodes: list[Node], accounts: list[str]) -> None:
    held = [set(n.leases.held()) for n in nodes]
    assert set().union(*held) == set(accounts)
    assert sum(len(h) for h in held) == len(accounts)  # nobody holds an account twice
    assert [n.watchers.running for n in nodes] == held


ACCOUNTS = [f"user{i:02d}" for i in range(30)]


async def balanced(nodes: list[Node]) -> None:
    """Rounds on every node until each holds exactly its rendezvous share."""
    live = sorted(n.node_id for n in nodes)

    def done() -> bool:
        return all(set(n.leases.held()) == {a for a in ACCOUNTS if wanted_owner(a, live) == n.node_id} for n in nodes)

    async def step() -> None:
        for n in nodes:
            await n.round()

    await until(done, 20, step)


async def test_leases_spread_over_nodes_and_never_overlap(pg_nodes: NodeFactory) -> None:
    n1 = await pg_nodes("n1")
    await register(n1.store, ACCOUNTS)
    await n1.round()
    assert set(n1.leases.held()) == set(ACCOUNTS)  # alone: everything
    n2, n3 = await pg_nodes("n2"), await pg_nodes("n3")
    await balanced([n1, n2, n3])
    assert_exclusive_cover([n1, n2, n3], ACCOUNTS)
    assert all(len(n.leases.held()) >= 3 for n in (n1, n2, n3))  # 30 accounts over 3 nodes: a real share
    async with n1.store.backend.read() as conn:
        leases = await conn.fetch("SELECT account, owner FROM watch_leases")
    assert {r["account"]: r["owner"] for r in leases} == {a: n.node_id for n in (n1, n2, n3) for a in n.leases.held()}


async def test_joining_node_takes_its_share_the_round_after_it_is_handed_back(pg_nodes: NodeFactory) -> None:
    """A lease handed back to a node that joined is taken at that node's next round, not at its next
    periodic check (CHECK_EVERY rounds, 2 * lease_ttl) with nobody watching the account meanwhile."""
    n1, n2 = await pg_nodes("n1"), await pg_nodes("n2")
    await register(n1.store, ACCOUNTS)
    await n1.round()  # alone: everything
    await n2.round()  # joins: nothing free yet
    assert not n2.leases.held()
    await n1.round()  # sees n2: hands its share back
    share = {a for a in ACCOUNTS if wanted_owner(a, ["n1", "n2"]) == "n2"}
    assert not share & set(n1.leases.held())
    await n2.round()
    assert set(n2.leases.held()) == share
    assert_exclusive_cover([n1, n2], ACCOUNTS)


async def test_dead_node_taken_over_after_ttl(pg_nodes: NodeFactory) -> None:
    nodes = [await pg_nodes(f"n{i}") for i in (1, 2, 3)]
    await register(nodes[0].store, ACCOUNTS)
    await balanced(nodes)
    dead = nodes.pop()
    orphans = set(dead.leases.held())
    takeovers = metrics.CLUSTER_TAKEOVERS._value.get()
    started = time.monotonic()

    async def step() -> None:
        for n in nodes:
            await n.round()

    await until(lambda: set().union(*(n.leases.held() for n in nodes)) == set(ACCOUNTS), 3 * TTL, step)
    assert time.monotonic() - started >= TTL - 0.5  # not before its leases expired
    assert metrics.CLUSTER_TAKEOVERS._value.get() - takeovers == len(orphans)
    assert_exclusive_cover(nodes, ACCOUNTS)


async def test_accounts_no_node_watches_are_counted(pg_nodes: NodeFactory) -> None:
    """pushproxy_cluster_accounts_unwatched: the 'registrations nobody watches' alert reads it."""
    n1, n2 = await pg_nodes("n1"), await pg_nodes("n2")
    await n2.round()  # live (a heartbeat), holds nothing yet
    await register(n1.store, ACCOUNTS)
    await n1.round()  # takes its own share only: n2's is nobody's until n2's next round
    share_of_n2 = {a for a in ACCOUNTS if wanted_owner(a, ["n1", "n2"]) == "n2"}
    assert share_of_n2 and set(n1.leases.held()) == set(ACCOUNTS) - share_of_n2
    assert metrics.CLUSTER_ACCOUNTS_UNWATCHED._value.get() == len(share_of_n2)
    await n2.round()
    await n1.round()
    assert metrics.CLUSTER_ACCOUNTS_UNWATCHED._value.get() == 0


async def test_frozen_node_notices_lost_leases_and_stops_watchers(pg_nodes: NodeFactory) -> None:
    nodes = [await pg_nodes(f"n{i}") for i in (1, 2)]
    await register(nodes[0].store, ACCOUNTS)
    await balanced(nodes)
    frozen, alive = nodes
    assert frozen.watchers.running

    async def step() -> None:
        await alive.round()

    await until(lambda: set(alive.leases.held()) == set(ACCOUNTS), 3 * TTL, step)
    assert frozen.watchers.running  # it does not know yet: the ledger covers this window
    await frozen.round()  # wakes up
    assert frozen.watchers.running == set()
    # It rejoins and gets its share back, handed over by the other node.
    await balanced(nodes)
    assert_exclusive_cover(nodes, ACCOUNTS)


async def test_a_lost_lease_is_never_sure_while_the_watchers_stop(pg_nodes: NodeFactory) -> None:
    """The round that finds a frozen node's leases taken renews nothing of them: none of them counts as
    sure to be held (the push ledger's licence to push unclaimed while the store is away) at any point,
    not even while the first of their watchers is being stopped. Seen in the fault campaign: a message
    pushed by the node that took over and again, unclaimed, by the node coming back (camp05 UID 6)."""
    frozen, alive = await pg_nodes("n1"), await pg_nodes("n2")
    await register(frozen.store, ACCOUNTS)
    await balanced([frozen, alive])
    lost = set(frozen.leases.held())
    assert len(lost) >= 2

    async def step() -> None:
        await alive.round()

    await until(lambda: set(alive.leases.held()) == set(ACCOUNTS), 3 * TTL, step)
    sure_while_stopping: list[str] = []
    release = frozen.watchers.release

    async def release_and_look(account: str, lost_lease: bool = False) -> None:
        sure_while_stopping.extend(a for a in lost if frozen.leases.sure_to_hold(a))
        await asyncio.sleep(0)  # a stop takes the loop's turn: other tasks (the pipeline) run meanwhile
        await release(account, lost_lease)

    frozen.watchers.release = release_and_look  # type: ignore[method-assign]
    await frozen.round()  # wakes up: every one of its leases was taken
    assert frozen.watchers.running == set() and not frozen.leases.held()
    assert sure_while_stopping == []


async def test_registration_reaches_the_owner_within_a_second(pg_nodes: NodeFactory) -> None:
    a, b = await pg_nodes("na"), await pg_nodes("nb")
    await register(a.store, ["seed"])
    await balanced_pair(a, b)
    for node in (a, b):
        node.feed.start()
        await asyncio.wait_for(node.feed.listening.wait(), 10)
    account = next(f"new{i}" for i in range(100) if wanted_owner(f"new{i}", ["na", "nb"]) == "na")
    started = time.monotonic()
    await b.store.queries(ApnsQueries).upsert_device(
        device(account, "aps", "ef" * 32)
    )  # registered through the other node
    await until(lambda: account in a.watchers.running, 1.0)
    assert time.monotonic() - started < 1.0
    assert account not in b.watchers.running
    await b.store.queries(ApnsQueries).remove_device(
        account, None, "ef" * 32
    )  # the last registration goes, on the other node
    await until(lambda: account not in a.watchers.running, 1.0)


async def balanced_pair(a: Node, b: Node) -> None:
    for _ in range(3):
        await a.round()
        await b.round()


async def test_push_ledger_one_push_per_message_across_nodes(pg_nodes: NodeFactory) -> None:
    nodes = [await pg_nodes(f"n{i}") for i in (1, 2, 3)]
    got: list[tuple[str, int]] = []
    order: list[str] = []

    def submit(event: MailEvent) -> None:
        order.append(type(event).__name__)
        if isinstance(event, NewMail):
            got.extend((event.account, m.uid) for m in event.messages)

    pipelines = [push_pipeline(n.store, n.node_id, submit) for n in nodes]
    conflicts = metrics.PUSH_LEDGER_CONFLICTS._value.get()
    for uid in range(1, 41):
        event = NewMail("alice", "INBOX", (MessageInfo(uid),))
        for pipeline in pipelines:  # every node (or a watcher and the ox endpoint) reports it
            pipeline.submit(event)
    pipelines[0].submit(NewMail("alice", "inbox", (MessageInfo(1), MessageInfo(41))))  # INBOX in any case is INBOX
    pipelines[0].submit(Expunge("alice", "INBOX", (41,)))
    for pipeline in pipelines:
        await pipeline.flush()
    assert sorted(got) == [("alice", uid) for uid in range(1, 42)]
    assert metrics.PUSH_LEDGER_CONFLICTS._value.get() - conflicts == 40 * 2 + 1
    assert order[-1] == "Expunge"  # after the account's earlier new mail, not before


async def test_push_ledger_keys_on_uidvalidity(pg_nodes: NodeFactory) -> None:
    """A mailbox recreated upstream (new UIDVALIDITY) reuses UIDs: its new messages are pushed again,
    and Dovecot's ox event for a message the watcher already reported (same UIDVALIDITY) is not."""
    node = await pg_nodes("n1")
    got: list[tuple[int, int]] = []

    def submit(event: MailEvent) -> None:
        if isinstance(event, NewMail):
            got.extend((event.uidvalidity, m.uid) for m in event.messages)

    pipeline = push_pipeline(node.store, node.node_id, submit)
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1), MessageInfo(2)), uidvalidity=100))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(2),), source="dovecot-ox", uidvalidity=100))
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(1),), uidvalidity=200))
    await pipeline.flush()
    assert got == [(100, 1), (100, 2), (200, 1)]


async def test_single_sqlite_node_stops_watcher_when_senders_remove_the_last_registration(tmp_path: Path) -> None:
    """Issue 14 point 3: an APNs 410 (or WebPush 404/410, or housekeeping) removing the last registration
    stops the watcher at once, not at the next restart."""
    store = SqliteStore(tmp_path / "pp.db", VAULT)
    await store.open()
    node = Node(store, "solo")
    try:
        node.feed.start()
        await register(store, ["alice", "bob"])
        await node.round()
        assert node.watchers.running == {"alice", "bob"}
        await store.queries(ApnsQueries).remove_device_token(
            f"{0:064x}", registered_before=time.time() + 1
        )  # the 410 path
        await node.feed.drained()
        assert node.watchers.running == {"bob"}
        await store.queries(ApnsQueries).expire_devices(time.time() + 1, 500)  # housekeeping
        await node.feed.drained()
        assert node.watchers.running == set()
        await node.round()
        assert node.leases.held() == {}  # the lease goes too
    finally:
        await node.feed.close()
        await store.close()


class CuttableForwarder:
    """A TCP forwarder to PostgreSQL that the test can cut (the database "unreachable")."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()


async def test_readiness_fails_while_postgresql_is_unreachable(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    """/readyz reports the store's ping (pushproxy.wiring): it must turn false when PostgreSQL cannot be reached."""
    forwarder = CuttableForwarder(postgres_server.port)
    port = await forwarder.start()
    dsn = postgres_dsn.replace(f":{postgres_server.port}/", f":{port}/")
    store = PostgresStore(dsn, VAULT)
    await store.open()
    try:
        assert await store.ping()
        await forwarder.cut()
        assert not await store.ping()
    finally:
        await store.close()


async def test_push_ledger_fails_open_when_the_store_is_unreachable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "pp.db", VAULT)
    await store.open()
    got: list[MailEvent] = []
    pipeline = push_pipeline(store, "solo", got.append)
    await store.close()  # every claim now fails
    pipeline.submit(NewMail("alice", "INBOX", (MessageInfo(7),)))
    await asyncio.sleep(0)
    await until(lambda: len(got) == 1, 5)  # pushed (a possible duplicate beats a lost push)


async def test_node_with_another_vapid_key_is_refused(pg_nodes: NodeFactory, tmp_path: Path) -> None:
    """Issue 14 point 5: the VAPID key is shared like the vault key.

    On one SQLite node a new key file simply becomes current."""
    first, second = await pg_nodes("n1"), await pg_nodes("n2")
    ring = await VapidKeyring.load(tmp_path / "a" / "vapid.pem", first.store.queries(WebPushQueries))
    copy = tmp_path / "b" / "vapid.pem"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "a" / "vapid.pem").read_bytes())
    assert (
        await VapidKeyring.load(copy, second.store.queries(WebPushQueries))
    ).current.key_id == ring.current.key_id  # the same key: fine
    with pytest.raises(ConfigError, match="not the cluster's current VAPID key"):
        await VapidKeyring.load(
            tmp_path / "c" / "vapid.pem", second.store.queries(WebPushQueries)
        )  # a key of its own: refused
    solo = SqliteStore(tmp_path / "solo.db", VAULT)
    await solo.open()
    try:
        await VapidKeyring.load(tmp_path / "a" / "vapid.pem", solo.queries(WebPushQueries))
        replaced = await VapidKeyring.load(tmp_path / "c" / "vapid.pem", solo.queries(WebPushQueries))
        assert [k.key_id for k in await solo.queries(WebPushQueries).vapid_keys() if k.current] == [
            replaced.current.key_id
        ]
    finally:
        await solo.close()


async def test_next_round_is_timed_to_a_silent_nodes_lease_expiry(pg_nodes: NodeFactory) -> None:
    """Failover ~ lease_ttl: a node whose leases are not renewed is taken over right after they expire,
    not up to a round (TTL/3) later."""
    a, b = await pg_nodes("n1"), await pg_nodes("n2")
    await register(a.store, ACCOUNTS)
    await a.round()  # alone so far: a takes every account; then it falls silent (frozen, killed)
    expires = max(lease.expires for lease in await a.leases._cluster.leases())
    await b.round()
    assert b.leases._wake_in == b.leases.interval  # nothing expires within a round yet
    while len(b.leases.held()) < len(ACCOUNTS):  # what b's loop does between rounds
        await asyncio.sleep(b.leases._wake_in)
        await b.round()
    now, _ = await b.leases._cluster.nodes()
    assert expires <= now < expires + EXPIRY_GRACE + 0.5  # taken at the expiry, not a round later


async def test_verification_push_limits_hold_across_nodes_and_restarts(pg_nodes: NodeFactory, tmp_path: Path) -> None:
    """The verification-push bounds (issue 9) are counted in the shared store: a client cannot multiply them
    by reconnecting to another node, or by waiting for a restart; the rows name no account and no URL."""
    a, b = await pg_nodes("n1"), await pg_nodes("n2")
    on_a = VerificationLimiter(a.store.queries(VerificationQueries), per_endpoint=3, per_account=5)
    on_b = VerificationLimiter(b.store.queries(VerificationQueries), per_endpoint=3, per_account=5)
    url = "https://push.example/victim"
    assert [await limiter.take("alice", url) for limiter in (on_a, on_b, on_a)] == [None, None, None]
    refusal = await on_b.take("bob", url)  # another account, the same endpoint: its 4th within the hour
    assert refusal is not None and "endpoint" in refusal
    assert [await on_b.take("alice", f"{url}/{i}") for i in range(2)] == [None, None]
    refusal = await on_a.take("alice", f"{url}/other")  # alice's 6th, on the node that counted 2 of them
    assert refusal is not None and "account" in refusal
    assert await on_a.take("carol", f"{url}/carol") is None  # others are still served
    async with b.store.backend.read() as conn:
        rows = await conn.fetch("SELECT * FROM webpush_verifications")
    dump = b"".join(bytes(v) if isinstance(v, bytes) else str(v).encode() for r in rows for v in r.values())
    assert b"alice" not in dump and b"push.example" not in dump
