"""The store contract: every behaviour of :class:`~pushproxy.store.sql.SqlStore`, on SQLite and on PostgreSQL.

Each test runs twice, against an SQLite file and against a fresh database
on a real PostgreSQL server (tests/support/postgres.py; skipped with the
reason when the server binaries are missing).  Back-end specific checks
(files, pragmas, pools, timeouts, the factory) live in
tests/unit/test_sqlite_store.py and tests/integration/test_postgres_store.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pushproxy.extensions.deltachat.store import DeltaChatQueries
from pushproxy.extensions.webpush.ratelimit import VerificationLimiter, VerificationQueries
from pushproxy.extensions.webpush.schema import WEBPUSH
from pushproxy.extensions.webpush.store import VapidKey, WebPushQueries
from pushproxy.extensions.xapplepush.schema import XAPPLEPUSH
from pushproxy.extensions.xapplepush.store import ApnsQueries
from pushproxy.store import (
    MailboxState,
    SqliteStore,
    SqlStore,
    StoredCredential,
    StoreSchemaError,
    StoreUnavailable,
    Vault,
)
from pushproxy.store.schema import SchemaPart
from pushproxy.store.sql_base import Queries
from pushproxy.store.tables import CORE, parts_of_extensions
from tests.support.store_records import ENDPOINT, PASSWORD, TOKEN, device, subscription, vapid

DEFAULT_PARTS = parts_of_extensions()  # the core's and every listed extension's schema part

MakeStore = Callable[..., SqlStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    """``make_store(vault=None, parts=DEFAULT_PARTS)``: a store on this test's one database (not opened)."""
    if request.param == "sqlite":
        path = tmp_path / "pushproxy.db"
        return lambda vault=None, parts=DEFAULT_PARTS: SqliteStore(path, vault or VAULT, parts)
    pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'pushproxy[postgres]'")
    from pushproxy.store.postgres import PostgresStore

    dsn = request.getfixturevalue("postgres_dsn")
    return lambda vault=None, parts=DEFAULT_PARTS: PostgresStore(dsn, vault or VAULT, parts=parts)


@pytest.fixture
async def store(make_store: MakeStore) -> AsyncIterator[SqlStore]:
    s = make_store()
    await s.open()
    yield s
    await s.close()


VAULT = Vault.generate()


async def raw_rows(store: SqlStore, sql: str) -> list[Any]:
    """Rows as the database holds them (what a stolen backup shows)."""
    async with store.backend.read() as conn:
        return await conn.fetch(sql)


async def test_closed_store_raises_unavailable(store: SqlStore) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.queries(ApnsQueries).upsert_device(device())
    with pytest.raises(StoreUnavailable):
        await store.get_credential("alice")


async def test_upsert_device_insert_and_refresh(store: SqlStore) -> None:
    first = await store.queries(ApnsQueries).upsert_device(device(mailboxes=["INBOX"], last_registered=100.0))
    assert first.first_registered == 100.0 and first.last_registered == 100.0
    second = await store.queries(ApnsQueries).upsert_device(
        device(mailboxes=["INBOX", "Work"], subtopic="other", version=3, first_registered=150.0, last_registered=200.0)
    )
    assert second.first_registered == 100.0  # kept from the existing row
    assert second.last_registered == 200.0
    assert second.mailboxes == ["INBOX", "Work"]
    assert second.subtopic == "other" and second.version == 3
    assert await store.queries(ApnsQueries).devices_for_account("alice") == [second]


async def test_upsert_device_fills_times_and_lowercases_token(store: SqlStore) -> None:
    stored = await store.queries(ApnsQueries).upsert_device(device(token=TOKEN.upper()))
    assert stored.device_token == TOKEN
    assert stored.last_registered > 0 and stored.first_registered == stored.last_registered


async def test_list_devices(store: SqlStore) -> None:
    await store.queries(ApnsQueries).upsert_device(device("alice", "a1", "01" * 32))
    await store.queries(ApnsQueries).upsert_device(device("alice", "a2", "01" * 32))
    await store.queries(ApnsQueries).upsert_device(device("bob", "b1", "02" * 32))
    assert len(await store.queries(ApnsQueries).list_devices()) == 3
    assert {d.aps_account_id for d in await store.queries(ApnsQueries).list_devices("alice")} == {"a1", "a2"}
    assert [d.account for d in await store.queries(ApnsQueries).devices_for_account("bob")] == ["bob"]
    assert await store.queries(ApnsQueries).devices_for_account("carol") == []


async def test_remove_device(store: SqlStore) -> None:
    await store.queries(ApnsQueries).upsert_device(device("alice", "a1", TOKEN))
    await store.queries(ApnsQueries).upsert_device(device("alice", "a2", TOKEN))
    await store.queries(ApnsQueries).upsert_device(device("bob", "b1", TOKEN))
    assert await store.queries(ApnsQueries).remove_device("alice", "a1", TOKEN) == 1
    assert await store.queries(ApnsQueries).remove_device("alice", "a1", TOKEN) == 0
    await store.queries(ApnsQueries).upsert_device(device("alice", "a1", TOKEN))
    assert await store.queries(ApnsQueries).remove_device("alice", None, TOKEN) == 2  # any aps_account_id
    assert [d.account for d in await store.queries(ApnsQueries).list_devices()] == ["bob"]


async def test_remove_device_token_everywhere(store: SqlStore) -> None:
    await store.queries(ApnsQueries).upsert_device(device("alice", "a1", TOKEN))
    await store.queries(ApnsQueries).upsert_device(device("bob", "b1", TOKEN))
    await store.queries(ApnsQueries).upsert_device(device("bob", "b1", "cd" * 32))
    assert await store.queries(ApnsQueries).remove_device_token(TOKEN.upper()) == 2
    assert [d.device_token for d in await store.queries(ApnsQueries).list_devices()] == ["cd" * 32]


async def test_remove_device_token_410_timestamp(store: SqlStore) -> None:
    """Only registrations older than Apple's 410 timestamp go; a re-registered device stays."""
    await store.queries(ApnsQueries).upsert_device(device("alice", "a1", TOKEN, last_registered=1000.0))
    await store.queries(ApnsQueries).upsert_device(device("bob", "b1", TOKEN, last_registered=3000.0))
    assert await store.queries(ApnsQueries).remove_device_token(TOKEN, registered_before=2000.0) == 1
    assert [d.account for d in await store.queries(ApnsQueries).list_devices()] == ["bob"]
    # re-registration after the timestamp makes it alive again
    await store.queries(ApnsQueries).upsert_device(device("bob", "b1", TOKEN, last_registered=5000.0))
    assert await store.queries(ApnsQueries).remove_device_token(TOKEN, registered_before=4000.0) == 0
    assert len(await store.queries(ApnsQueries).list_devices()) == 1


async def test_expire_devices(store: SqlStore) -> None:
    await store.queries(ApnsQueries).upsert_device(device("alice", "a1", "01" * 32, last_registered=100.0))
    await store.queries(ApnsQueries).upsert_device(device("alice", "a2", "02" * 32, last_registered=300.0))
    assert await store.queries(ApnsQueries).expire_devices(200.0, 500) == 1
    assert [d.aps_account_id for d in await store.queries(ApnsQueries).list_devices()] == ["a2"]
    assert await store.queries(ApnsQueries).expire_devices(200.0, 500) == 0


async def test_subscription_round_trip(store: SqlStore) -> None:
    sub = subscription(
        active=False,
        ack_token_hash=hashlib.sha256(b"token").digest(),
        ack_expires=1234.5,
        silenced_until=99.0,
        silenced_session="sess-1",
        want_changes=True,
        created=10.0,
        updated=20.0,
        last_success=15.0,
        failures=3,
    )
    await store.queries(WebPushQueries).put_subscription(sub)
    assert await store.queries(WebPushQueries).get_subscription("alice", "s1") == sub
    assert await store.queries(WebPushQueries).get_subscription("alice", "nope") is None
    assert await store.queries(WebPushQueries).get_subscription("bob", "s1") is None


async def test_put_subscription_replaces_and_keeps_created(store: SqlStore) -> None:
    await store.queries(WebPushQueries).put_subscription(subscription(created=10.0, updated=10.0))
    await store.queries(WebPushQueries).put_subscription(
        subscription(endpoint=ENDPOINT + "2", active=True, created=0.0, updated=30.0)
    )
    got = await store.queries(WebPushQueries).get_subscription("alice", "s1")
    assert got is not None
    assert got.endpoint == ENDPOINT + "2" and got.active and got.created == 10.0 and got.updated == 30.0
    assert await store.queries(WebPushQueries).count_subscriptions("alice") == 1
    fresh = subscription(sub_id="s2")
    await store.queries(WebPushQueries).put_subscription(fresh)
    got2 = await store.queries(WebPushQueries).get_subscription("alice", "s2")
    assert got2 is not None and got2.created > 0 and got2.updated > 0


async def test_list_count_delete_subscriptions(store: SqlStore) -> None:
    await store.queries(WebPushQueries).put_subscription(subscription("alice", "s1", created=1.0))
    await store.queries(WebPushQueries).put_subscription(subscription("alice", "s2", created=2.0))
    await store.queries(WebPushQueries).put_subscription(subscription("bob", "s1", created=3.0))
    assert [s.sub_id for s in await store.queries(WebPushQueries).subscriptions_for_account("alice")] == ["s1", "s2"]
    assert len(await store.queries(WebPushQueries).list_subscriptions()) == 3
    assert [s.account for s in await store.queries(WebPushQueries).list_subscriptions("bob")] == ["bob"]
    assert await store.queries(WebPushQueries).count_subscriptions("alice") == 2
    assert await store.queries(WebPushQueries).count_subscriptions("carol") == 0
    assert await store.queries(WebPushQueries).delete_subscription("alice", "s1") is True
    assert await store.queries(WebPushQueries).delete_subscription("alice", "s1") is False
    assert await store.queries(WebPushQueries).count_subscriptions("alice") == 1
    assert await store.queries(WebPushQueries).get_subscription("bob", "s1") is not None


async def test_find_subscription_by_ack(store: SqlStore) -> None:
    h = hashlib.sha256(b"tok").digest()
    await store.queries(WebPushQueries).put_subscription(subscription("alice", "s1", ack_token_hash=h))
    await store.queries(WebPushQueries).put_subscription(
        subscription("alice", "s2", ack_token_hash=hashlib.sha256(b"other").digest())
    )
    found = await store.queries(WebPushQueries).find_subscription_by_ack("alice", h)
    assert found is not None and found.sub_id == "s1"
    assert await store.queries(WebPushQueries).find_subscription_by_ack("bob", h) is None  # bound to the account
    assert (
        await store.queries(WebPushQueries).find_subscription_by_ack("alice", hashlib.sha256(b"nope").digest()) is None
    )


async def test_expire_inactive_subscriptions(store: SqlStore) -> None:
    await store.queries(WebPushQueries).put_subscription(
        subscription(sub_id="old-pending", active=False, ack_expires=100.0)
    )
    await store.queries(WebPushQueries).put_subscription(
        subscription(sub_id="new-pending", active=False, ack_expires=300.0)
    )
    await store.queries(WebPushQueries).put_subscription(subscription(sub_id="active", active=True, ack_expires=100.0))
    await store.queries(WebPushQueries).put_subscription(
        subscription(sub_id="no-expiry", active=False, ack_expires=None)
    )
    assert await store.queries(WebPushQueries).expire_inactive_subscriptions(200.0, 500) == [("alice", "old-pending")]
    assert {s.sub_id for s in await store.queries(WebPushQueries).list_subscriptions()} == {
        "new-pending",
        "active",
        "no-expiry",
    }


async def test_clear_session_silences(store: SqlStore) -> None:
    await store.queries(WebPushQueries).put_subscription(
        subscription(sub_id="s1", silenced_session="sess-A", silenced_until=50.0)
    )
    await store.queries(WebPushQueries).put_subscription(subscription(sub_id="s2", silenced_session="sess-A"))
    await store.queries(WebPushQueries).put_subscription(subscription(sub_id="s3", silenced_session="sess-B"))
    assert await store.queries(WebPushQueries).clear_session_silences("sess-A") == 2
    subs = {s.sub_id: s for s in await store.queries(WebPushQueries).list_subscriptions()}
    assert subs["s1"].silenced_session is None and subs["s1"].silenced_until == 50.0
    assert subs["s2"].silenced_session is None
    assert subs["s3"].silenced_session == "sess-B"
    assert await store.queries(WebPushQueries).clear_session_silences("sess-A") == 0


async def test_credentials(store: SqlStore) -> None:
    assert await store.get_credential("alice") is None
    await store.put_credential(StoredCredential("alice", "Alice@Example.org", PASSWORD, updated=5.0))
    cred = await store.get_credential("alice")
    assert cred == StoredCredential("alice", "Alice@Example.org", PASSWORD, stale=False, updated=5.0)
    await store.mark_credential_stale("alice")
    stale = await store.get_credential("alice")
    assert stale is not None and stale.stale and stale.secret == PASSWORD
    await store.put_credential(StoredCredential("alice", "alice", "new password"))  # a new login
    fresh = await store.get_credential("alice")
    assert fresh is not None and not fresh.stale and fresh.secret == "new password" and fresh.updated > 5.0
    await store.mark_credential_stale("nobody")  # no row: no error
    await store.delete_credential("alice")
    assert await store.get_credential("alice") is None
    await store.delete_credential("alice")


async def test_mailbox_state(store: SqlStore) -> None:
    assert await store.get_mailbox_state("alice", "INBOX") is None
    await store.put_mailbox_state(MailboxState("alice", "INBOX", 1, 10, None, updated=1.0))
    await store.put_mailbox_state(MailboxState("alice", "Work", 2, 20, 2**40, updated=1.0))
    await store.put_mailbox_state(MailboxState("bob", "INBOX", 3, 30, 5, updated=1.0))
    assert await store.get_mailbox_state("alice", "INBOX") == MailboxState("alice", "INBOX", 1, 10, None, 1.0)
    await store.put_mailbox_state(MailboxState("alice", "INBOX", 1, 11, 77, updated=2.0))
    assert await store.get_mailbox_state("alice", "INBOX") == MailboxState("alice", "INBOX", 1, 11, 77, 2.0)
    work = await store.get_mailbox_state("alice", "Work")
    assert work is not None and work.highestmodseq == 2**40
    await store.delete_mailbox_states("alice")
    assert await store.get_mailbox_state("alice", "INBOX") is None
    assert await store.get_mailbox_state("alice", "Work") is None
    assert await store.get_mailbox_state("bob", "INBOX") is not None


async def test_accounts_with_registrations(store: SqlStore) -> None:
    assert await store.accounts_with_registrations() == []
    await store.queries(ApnsQueries).upsert_device(device("carol", "c1", "01" * 32))
    await store.queries(ApnsQueries).upsert_device(device("carol", "c2", "02" * 32))
    await store.queries(WebPushQueries).put_subscription(subscription("alice", "s1", active=True))
    await store.queries(WebPushQueries).put_subscription(subscription("alice", "s2", active=True))
    await store.queries(WebPushQueries).put_subscription(
        subscription("bob", "s1", active=False)
    )  # pending: not counted
    await store.queries(WebPushQueries).put_subscription(subscription("carol", "s1", active=True))
    await store.put_credential(StoredCredential("dave", "dave", "pw"))  # credentials alone: no
    assert await store.accounts_with_registrations() == ["alice", "carol"]


async def test_vapid_keys_exactly_one_current(store: SqlStore) -> None:
    assert await store.queries(WebPushQueries).vapid_keys() == []
    await store.queries(WebPushQueries).add_vapid_key(
        vapid("a", 1.0), make_current=False
    )  # the first key is current anyway
    assert [(k.key_id, k.current) for k in await store.queries(WebPushQueries).vapid_keys()] == [("a", True)]
    await store.queries(WebPushQueries).add_vapid_key(vapid("b", 2.0), make_current=False)
    assert [(k.key_id, k.current) for k in await store.queries(WebPushQueries).vapid_keys()] == [
        ("a", True),
        ("b", False),
    ]
    await store.queries(WebPushQueries).add_vapid_key(vapid("c", 3.0))
    assert [(k.key_id, k.current) for k in await store.queries(WebPushQueries).vapid_keys()] == [
        ("a", False),
        ("b", False),
        ("c", True),
    ]
    await store.queries(WebPushQueries).add_vapid_key(vapid("a", 1.0), make_current=True)  # back to an older key
    keys = await store.queries(WebPushQueries).vapid_keys()
    assert [(k.key_id, k.current) for k in keys] == [("a", True), ("b", False), ("c", False)]
    assert keys[0] == VapidKey("a", "B" + "a" * 86, "/keys/a.pem", 1.0, True)
    await store.queries(WebPushQueries).add_vapid_key(
        vapid("a", 1.0), make_current=False
    )  # re-adding the current key keeps it
    assert sum(k.current for k in await store.queries(WebPushQueries).vapid_keys()) == 1


async def test_concurrent_writes(store: SqlStore) -> None:
    n = 200
    await asyncio.gather(
        *(
            store.queries(ApnsQueries).upsert_device(
                device(f"user{i % 20}", f"a{i}", f"{i:064x}", last_registered=float(i))
            )
            for i in range(n)
        ),
        *(
            store.queries(WebPushQueries).put_subscription(subscription(f"user{i}", f"s{i}", active=True))
            for i in range(50)
        ),
        *(store.put_credential(StoredCredential(f"user{i}", f"User{i}", f"pw{i}")) for i in range(50)),
        *(store.put_mailbox_state(MailboxState(f"user{i % 5}", "INBOX", 1, i)) for i in range(50)),
    )
    assert len(await store.queries(ApnsQueries).list_devices()) == n
    assert len(await store.queries(WebPushQueries).list_subscriptions()) == 50
    creds = await asyncio.gather(*(store.get_credential(f"user{i}") for i in range(50)))
    assert [c.secret for c in creds if c is not None] == [f"pw{i}" for i in range(50)]
    assert len(await store.accounts_with_registrations()) == 50


async def test_concurrent_upserts_same_key(store: SqlStore) -> None:
    results = await asyncio.gather(
        *(store.queries(ApnsQueries).upsert_device(device(last_registered=float(i + 1))) for i in range(100))
    )
    assert all(r.first_registered == 1.0 for r in results)
    devices = await store.queries(ApnsQueries).list_devices()
    assert len(devices) == 1 and devices[0].last_registered == 100.0


# --- secrets at rest and the migrations that put them there ------------------------


def _row_bytes(rows: list[Any]) -> bytes:
    return b"".join(bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for r in rows for v in r)


async def test_device_tokens_encrypted_at_rest(store: SqlStore) -> None:
    """Issue 9 item 9: a device token addresses a user's phone; the table holds no token in clear."""
    await store.queries(ApnsQueries).upsert_device(device("alice", "a1", TOKEN))
    await store.queries(ApnsQueries).upsert_device(device("bob", "b1", TOKEN))
    dump = _row_bytes(await raw_rows(store, "SELECT * FROM apns_devices"))
    assert b"alice" in dump  # sanity: the right rows
    assert TOKEN.encode() not in dump and bytes.fromhex(TOKEN) not in dump
    # Same token, two rows: each encrypted separately, found by one keyed hash.
    rows = await raw_rows(store, "SELECT token_hash, device_token FROM apns_devices")
    assert rows[0][0] == rows[1][0] and rows[0][1] != rows[1][1]
    assert await store.queries(ApnsQueries).remove_device_token(TOKEN) == 2


async def test_migration_encrypts_existing_device_tokens(make_store: MakeStore) -> None:
    """A database with clear tokens (xapplepush schema 1) is converted on open; lookups keep working."""
    old_parts = (CORE, SchemaPart(XAPPLEPUSH.name, XAPPLEPUSH.migrations[:1]), WEBPUSH)
    old = make_store(parts=old_parts)
    await old.open()
    async with old.backend.write() as conn:
        for i, (account, token) in enumerate([("alice", TOKEN), ("bob", TOKEN), ("bob", "cd" * 32)]):
            await conn.execute(
                "INSERT INTO apns_devices VALUES ($1, $2, $3, 'com.apple.mobilemail', 2, $4, $5, $5)",
                account,
                f"aps{i}",
                token,
                '["INBOX", "Work"]',
                float(100 + i),
            )
    await old.close()
    new = make_store()
    await new.open()
    try:
        devices = await new.queries(ApnsQueries).list_devices()
        assert sorted((d.account, d.aps_account_id, d.device_token) for d in devices) == [
            ("alice", "aps0", TOKEN),
            ("bob", "aps1", TOKEN),
            ("bob", "aps2", "cd" * 32),
        ]
        assert {tuple(d.mailboxes) for d in devices} == {("INBOX", "Work")}
        assert [d.first_registered for d in devices if d.aps_account_id == "aps2"] == [102.0]
        dump = _row_bytes(await raw_rows(new, "SELECT * FROM apns_devices"))
        assert TOKEN.encode() not in dump and b"cd" * 32 not in dump
        assert await new.queries(ApnsQueries).remove_device_token(TOKEN.upper()) == 2
        assert [d.device_token for d in await new.queries(ApnsQueries).list_devices()] == ["cd" * 32]
        versions = await raw_rows(new, "SELECT part, max(version) FROM schema_migrations GROUP BY part ORDER BY part")
        # webpush 2: the verification counts (webpush_verifications); deltachat 1: its token table, new
        expected = [("core", CORE.version), ("deltachat", 1), ("webpush", 2), ("xapplepush", 2)]
        assert [tuple(r) for r in versions] == expected
    finally:
        await new.close()


async def test_newer_part_is_refused(make_store: MakeStore) -> None:
    s = make_store()
    await s.open()
    async with s.backend.write() as conn:
        await conn.execute("INSERT INTO schema_migrations VALUES ('xapplepush', 99, 0)")
    await s.close()
    with pytest.raises(StoreSchemaError, match="part 'xapplepush' at version 99"):
        await make_store().open()


async def test_extension_parts_are_numbered_on_their_own(make_store: MakeStore) -> None:
    """An add-on brings its own part; adding it later migrates only it."""
    s = make_store()
    await s.open()
    await s.close()
    extra = SchemaPart(
        "recorder", (("CREATE TABLE recorder_events (n INTEGER)",), ("CREATE INDEX r_n ON recorder_events (n)",))
    )
    s = make_store(parts=(*DEFAULT_PARTS, extra))
    await s.open()
    try:
        rows = await raw_rows(s, "SELECT version FROM schema_migrations WHERE part = 'recorder' ORDER BY version")
        assert [r[0] for r in rows] == [1, 2]
        assert await raw_rows(s, "SELECT count(*) FROM recorder_events") != []
    finally:
        await s.close()


class RecorderQueries(Queries):
    """A third extension's queries, written like the push extensions' (tests only)."""

    async def record(self, account: str) -> None:
        await self._change_registrations("INSERT INTO recorded (account) VALUES ($1)", account, account=account)

    async def accounts(self) -> list[str]:
        return [r["account"] for r in await self._fetch("SELECT account FROM recorded ORDER BY account")]


async def test_an_extension_brings_its_queries_and_registered_accounts(make_store: MakeStore) -> None:
    """Its tables, queries bound to the store, and its accounts watched: no edit of the core store."""
    part = SchemaPart(
        "recorder",
        (("CREATE TABLE recorded (account TEXT NOT NULL)",),),
        registered_accounts="SELECT account FROM recorded",
    )
    s = make_store(parts=(*DEFAULT_PARTS, part))
    await s.open()
    try:
        changed: list[str | None] = []
        s.add_registration_listener(changed.append)
        recorder = s.queries(RecorderQueries)
        await recorder.record("zoe")
        await s.queries(ApnsQueries).upsert_device(device("alice"))
        assert await recorder.accounts() == ["zoe"]
        assert changed == ["zoe", "alice"]  # the store's listeners hear every extension's changes
        assert await s.accounts_with_registrations() == ["alice", "zoe"]
    finally:
        await s.close()


async def test_key_fingerprint_recorded_once(store: SqlStore) -> None:
    assert await store.claim_key_fingerprint("vault", "aaaa") == "aaaa"
    assert await store.claim_key_fingerprint("vault", "bbbb") == "aaaa"
    assert await store.claim_key_fingerprint("vapid", "cccc") == "cccc"


async def test_device_token_bound_to_its_row(store: SqlStore) -> None:
    """A token blob copied into another row does not decrypt there; that row is skipped, the others stay."""
    await store.queries(ApnsQueries).upsert_device(device("alice", "a1", TOKEN))
    await store.queries(ApnsQueries).upsert_device(device("bob", "b1", "cd" * 32))
    async with store.backend.write() as conn:
        await conn.execute(
            """UPDATE apns_devices SET device_token = (SELECT device_token FROM apns_devices WHERE account = 'alice')
               WHERE account = 'bob'"""
        )
    assert [(d.account, d.device_token) for d in await store.queries(ApnsQueries).list_devices()] == [("alice", TOKEN)]


async def test_verification_counts_survive_a_restart_and_are_pruned(make_store: MakeStore) -> None:
    """The verification-push bounds are counted in the store, not in the process (issue 9 item 5)."""
    first = make_store()
    await first.open()
    try:
        limiter = VerificationLimiter(first.queries(VerificationQueries), per_endpoint=2, per_account=10)
        assert [await limiter.take("alice", "https://push.example/a") for _ in range(2)] == [None, None]
    finally:
        await first.close()
    again = make_store()
    await again.open()
    try:
        queries = again.queries(VerificationQueries)
        limiter = VerificationLimiter(queries, per_endpoint=2, per_account=10)
        refusal = await limiter.take("alice", "https://push.example/a")
        assert refusal is not None and "endpoint" in refusal  # still 2 sends in the hour after the restart
        key = queries.key("endpoint", "https://push.example/a")
        assert await queries.count(key, 3600.0) == 2  # the refused one was not counted
        assert await queries.prune(3600.0) == 0  # within the hour: kept
        assert await queries.prune(0.0) == 4  # a window of 0: every row is older (2 sends x account + endpoint)
        assert await limiter.take("alice", "https://push.example/a") is None
    finally:
        await again.close()


async def test_deltachat_tokens(store: SqlStore) -> None:
    """Delta Chat tokens: set, renew (expiry from the last set), per-token removal across accounts, expiry."""
    tokens = store.queries(DeltaChatQueries)
    token = "openpgp:" + "Q" * 200
    first = await tokens.set_token("alice", token, now=1000.0)
    renewed = await tokens.set_token("alice", token, now=2000.0)
    assert (renewed.first_registered, renewed.last_registered) == (1000.0, 2000.0)
    assert renewed.token_id == first.token_id and renewed.token == token
    await tokens.set_token("bob", token, now=3000.0)
    await tokens.set_token("bob", "openpgp:other", now=3000.0)
    assert [(t.account, t.token) for t in await tokens.list_tokens("alice")] == [("alice", token)]
    assert len(await tokens.list_tokens()) == 3
    rows = await raw_rows(store, "SELECT token, token_hash FROM deltachat_tokens")
    assert all(token.encode() not in bytes(r["token"]) + bytes(r["token_hash"]) for r in rows)  # encrypted
    # A 410 removes the token wherever it was set before the POST, not where it was set again since.
    assert await tokens.remove_token_everywhere(token, registered_before=2500.0) == 1
    assert [t.account for t in await tokens.list_tokens() if t.token == token] == ["bob"]
    assert await tokens.expire_tokens(not_registered_since=3500.0, limit=500) == 2
    assert await tokens.list_tokens() == []
    await tokens.set_token("carol", token)
    assert "carol" in await store.accounts_with_registrations()
    assert await tokens.remove_account("carol") == 1


async def test_registrations_of_a_batch_of_accounts(store: SqlStore) -> None:
    """A lease batch's reads: each extension's registrations and the credentials of many accounts, one query
    each; every account asked is answered (empty where it has none), in each account's usual order."""
    odd = 'o\'brien "quoted" \u00e9'  # quotes and non-ASCII go through the JSON parameter unharmed
    apns, webpush, deltachat = (
        store.queries(ApnsQueries),
        store.queries(WebPushQueries),
        store.queries(DeltaChatQueries),
    )
    await apns.upsert_device(device("alice", "acct-1", "aa" * 32))
    await apns.upsert_device(device("alice", "acct-2", "bb" * 32))
    await apns.upsert_device(device(odd, "acct-1", "cc" * 32))
    await webpush.put_subscription(subscription("alice", "s2", created=2.0))
    await webpush.put_subscription(subscription("alice", "s1", created=1.0))
    await webpush.put_subscription(subscription("bob", "s1", created=3.0))
    await deltachat.set_token("bob", "openpgp:one", now=2.0)
    await deltachat.set_token("bob", "openpgp:two", now=1.0)
    await store.put_credential(StoredCredential("alice", "alice", PASSWORD))
    await store.put_credential(StoredCredential(odd, odd, "pw", stale=True))
    accounts = ["alice", "bob", odd, "nobody"]

    devices = await apns.devices_of_accounts(accounts)
    assert {a: [d.aps_account_id for d in ds] for a, ds in devices.items()} == {
        "alice": ["acct-1", "acct-2"],
        "bob": [],
        odd: ["acct-1"],
        "nobody": [],
    }
    assert devices["alice"] == await apns.list_devices("alice")
    subs = await webpush.subscriptions_of_accounts(accounts)
    assert {a: [s.sub_id for s in ss] for a, ss in subs.items()} == {
        "alice": ["s1", "s2"],
        "bob": ["s1"],
        odd: [],
        "nobody": [],
    }
    tokens = await deltachat.tokens_of_accounts(accounts)
    assert [t.token for t in tokens["bob"]] == ["openpgp:two", "openpgp:one"]  # least recently set first
    assert tokens["alice"] == tokens[odd] == tokens["nobody"] == []
    creds = await store.get_credentials(accounts)
    assert sorted(creds) == sorted(["alice", odd])
    assert creds["alice"].secret == PASSWORD and not creds["alice"].stale and creds[odd].stale
    assert await store.get_credentials([]) == {}
    assert await apns.devices_of_accounts([]) == {}
