"""The SQLite store: every method, migrations, durability, secrets at rest."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pushproxy.config import Config, ConfigError, StoreConfig, WatchConfig
from pushproxy.store import (
    ApnsDevice,
    MailboxState,
    SqliteStore,
    Store,
    StoredCredential,
    StoreSchemaError,
    StoreUnavailable,
    VapidKey,
    Vault,
    VaultError,
    WebPushSubscription,
    open_store,
)
from pushproxy.store.factory import sqlite_path_from_url
from pushproxy.store.sqlite import SCHEMA_VERSION

TOKEN = "ab" * 32
ENDPOINT = "https://push.example.net/wpush/v2/gAAAAABsecretcapabilitypath"
AUTH = "c2VjcmV0LWF1dGgtMTZi"  # base64url, 16 bytes
PASSWORD = "correct horse battery staple"


@pytest.fixture
def vault() -> Vault:
    return Vault.generate()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "pushproxy.db"


@pytest.fixture
async def store(db_path: Path, vault: Vault) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_path, vault)
    await s.open()
    yield s
    await s.close()


def device(account: str = "alice", aps: str = "acct-1", token: str = TOKEN, **kw: object) -> ApnsDevice:
    return ApnsDevice(account=account, aps_account_id=aps, device_token=token, **kw)  # type: ignore[arg-type]


def subscription(account: str = "alice", sub_id: str = "s1", **kw: object) -> WebPushSubscription:
    fields: dict[str, object] = {
        "endpoint": ENDPOINT,
        "p256dh": "B" + "A" * 86,
        "auth": AUTH,
        "vapid_key_id": "k1",
    }
    fields.update(kw)
    return WebPushSubscription(account=account, sub_id=sub_id, **fields)  # type: ignore[arg-type]


def raw(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(db_path, isolation_level=None)


# --- lifecycle and migrations ------------------------------------------------


async def test_open_creates_private_dir_and_file(db_path: Path, vault: Vault) -> None:
    s = SqliteStore(db_path, vault)
    await s.open()
    try:
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(db_path.parent.stat().st_mode) & 0o077 == 0
        await s.put_credential(StoredCredential("alice", "Alice", PASSWORD))
        wal = db_path.with_name(db_path.name + "-wal")
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) & 0o077 == 0
    finally:
        await s.close()


async def test_migrates_empty_db_and_sets_pragmas(store: SqliteStore, db_path: Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"apns_devices", "webpush_subscriptions", "credentials", "mailbox_state", "vapid_keys"} <= tables
    aconn = store._require()
    pragmas = {}
    for pragma in ("synchronous", "foreign_keys", "busy_timeout"):
        (row,) = await aconn.execute_fetchall(f"PRAGMA {pragma}")
        pragmas[pragma] = row[0]
    assert pragmas["synchronous"] == 2  # FULL
    assert pragmas["foreign_keys"] == 1
    assert pragmas["busy_timeout"] > 0


async def test_migrates_a_pre_existing_empty_file(db_path: Path, vault: Vault) -> None:
    db_path.parent.mkdir()
    db_path.touch(mode=0o600)
    s = SqliteStore(db_path, vault)
    await s.open()
    await s.close()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_reopen_is_idempotent_and_durable(db_path: Path, vault: Vault) -> None:
    s = SqliteStore(db_path, vault)
    await s.open()
    await s.open()  # a second open() on an open store is harmless
    await s.upsert_device(device(last_registered=100.0))
    await s.put_subscription(subscription(active=True))
    await s.put_credential(StoredCredential("alice", "Alice", PASSWORD))
    await s.put_mailbox_state(MailboxState("alice", "INBOX", 7, 42, 1000))
    await s.add_vapid_key(VapidKey("k1", "B" + "x" * 86, "/keys/k1.pem", 1.0, True))
    await s.close()
    await s.close()  # closing twice is harmless

    for _ in range(2):
        s = SqliteStore(db_path, vault)
        await s.open()
        assert [d.device_token for d in await s.list_devices()] == [TOKEN]
        sub = await s.get_subscription("alice", "s1")
        assert sub is not None and sub.endpoint == ENDPOINT and sub.auth == AUTH
        cred = await s.get_credential("alice")
        assert cred is not None and cred.secret == PASSWORD
        state = await s.get_mailbox_state("alice", "INBOX")
        assert state is not None and (state.uidvalidity, state.uidnext, state.highestmodseq) == (7, 42, 1000)
        assert [k.key_id for k in await s.vapid_keys()] == ["k1"]
        await s.close()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_writes_are_visible_to_another_connection_at_once(store: SqliteStore, db_path: Path) -> None:
    """Committed before returning: a second connection (another process) sees it without close."""
    await store.upsert_device(device())
    with raw(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM apns_devices").fetchone()[0] == 1
        assert not store._require().in_transaction


async def test_newer_schema_is_refused(db_path: Path, vault: Vault) -> None:
    s = SqliteStore(db_path, vault)
    await s.open()
    await s.close()
    with raw(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    s = SqliteStore(db_path, vault)
    with pytest.raises(StoreSchemaError, match="upgrade pushproxy"):
        await s.open()
    assert not await s.ping()
    with pytest.raises(StoreUnavailable):
        await s.list_devices()


async def test_failed_migration_is_rolled_back(db_path: Path, vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    from pushproxy.store import sqlite as sqlite_mod

    broken = [*sqlite_mod.MIGRATIONS, ["CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"]]
    monkeypatch.setattr(sqlite_mod, "MIGRATIONS", broken)
    monkeypatch.setattr(sqlite_mod, "SCHEMA_VERSION", len(broken))
    s = SqliteStore(db_path, vault)
    with pytest.raises(sqlite3.Error):
        await s.open()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] == 0


async def test_memory_store(vault: Vault) -> None:
    s = SqliteStore(Path(":memory:"), vault)
    await s.open()
    assert await s.ping()
    await s.upsert_device(device())
    assert len(await s.list_devices()) == 1
    await s.close()
    assert not await s.ping()


async def test_closed_store_raises_unavailable(store: SqliteStore) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.upsert_device(device())
    with pytest.raises(StoreUnavailable):
        await store.get_credential("alice")


async def test_ping(store: SqliteStore, db_path: Path) -> None:
    assert await store.ping()
    await store.close()
    assert await store.ping() is False


async def test_ping_false_when_file_deleted(store: SqliteStore, db_path: Path) -> None:
    assert await store.ping()
    for p in db_path.parent.iterdir():
        p.unlink()
    assert await store.ping() is False


async def test_ping_false_when_connection_broken(store: SqliteStore) -> None:
    await store._require().close()  # closed underneath the store
    assert await store.ping() is False


# --- APNs devices ---------------------------------------------------------------


async def test_upsert_device_insert_and_refresh(store: SqliteStore) -> None:
    first = await store.upsert_device(device(mailboxes=["INBOX"], last_registered=100.0))
    assert first.first_registered == 100.0 and first.last_registered == 100.0
    second = await store.upsert_device(
        device(mailboxes=["INBOX", "Work"], subtopic="other", version=3, first_registered=150.0, last_registered=200.0)
    )
    assert second.first_registered == 100.0  # kept from the existing row
    assert second.last_registered == 200.0
    assert second.mailboxes == ["INBOX", "Work"]
    assert second.subtopic == "other" and second.version == 3
    assert await store.devices_for_account("alice") == [second]


async def test_upsert_device_fills_times_and_lowercases_token(store: SqliteStore) -> None:
    stored = await store.upsert_device(device(token=TOKEN.upper()))
    assert stored.device_token == TOKEN
    assert stored.last_registered > 0 and stored.first_registered == stored.last_registered


async def test_list_devices(store: SqliteStore) -> None:
    await store.upsert_device(device("alice", "a1", "01" * 32))
    await store.upsert_device(device("alice", "a2", "01" * 32))
    await store.upsert_device(device("bob", "b1", "02" * 32))
    assert len(await store.list_devices()) == 3
    assert {d.aps_account_id for d in await store.list_devices("alice")} == {"a1", "a2"}
    assert [d.account for d in await store.devices_for_account("bob")] == ["bob"]
    assert await store.devices_for_account("carol") == []


async def test_remove_device(store: SqliteStore) -> None:
    await store.upsert_device(device("alice", "a1", TOKEN))
    await store.upsert_device(device("alice", "a2", TOKEN))
    await store.upsert_device(device("bob", "b1", TOKEN))
    assert await store.remove_device("alice", "a1", TOKEN) == 1
    assert await store.remove_device("alice", "a1", TOKEN) == 0
    await store.upsert_device(device("alice", "a1", TOKEN))
    assert await store.remove_device("alice", None, TOKEN) == 2  # any aps_account_id
    assert [d.account for d in await store.list_devices()] == ["bob"]


async def test_remove_device_token_everywhere(store: SqliteStore) -> None:
    await store.upsert_device(device("alice", "a1", TOKEN))
    await store.upsert_device(device("bob", "b1", TOKEN))
    await store.upsert_device(device("bob", "b1", "cd" * 32))
    assert await store.remove_device_token(TOKEN.upper()) == 2
    assert [d.device_token for d in await store.list_devices()] == ["cd" * 32]


async def test_remove_device_token_410_timestamp(store: SqliteStore) -> None:
    """Only registrations older than Apple's 410 timestamp go; a re-registered device stays."""
    await store.upsert_device(device("alice", "a1", TOKEN, last_registered=1000.0))
    await store.upsert_device(device("bob", "b1", TOKEN, last_registered=3000.0))
    assert await store.remove_device_token(TOKEN, registered_before=2000.0) == 1
    assert [d.account for d in await store.list_devices()] == ["bob"]
    # re-registration after the timestamp makes it alive again
    await store.upsert_device(device("bob", "b1", TOKEN, last_registered=5000.0))
    assert await store.remove_device_token(TOKEN, registered_before=4000.0) == 0
    assert len(await store.list_devices()) == 1


async def test_expire_devices(store: SqliteStore) -> None:
    await store.upsert_device(device("alice", "a1", "01" * 32, last_registered=100.0))
    await store.upsert_device(device("alice", "a2", "02" * 32, last_registered=300.0))
    assert await store.expire_devices(200.0) == 1
    assert [d.aps_account_id for d in await store.list_devices()] == ["a2"]
    assert await store.expire_devices(200.0) == 0


# --- WebPush subscriptions ---------------------------------------------------------


async def test_subscription_round_trip(store: SqliteStore) -> None:
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
    await store.put_subscription(sub)
    assert await store.get_subscription("alice", "s1") == sub
    assert await store.get_subscription("alice", "nope") is None
    assert await store.get_subscription("bob", "s1") is None


async def test_put_subscription_replaces_and_keeps_created(store: SqliteStore) -> None:
    await store.put_subscription(subscription(created=10.0, updated=10.0))
    await store.put_subscription(subscription(endpoint=ENDPOINT + "2", active=True, created=0.0, updated=30.0))
    got = await store.get_subscription("alice", "s1")
    assert got is not None
    assert got.endpoint == ENDPOINT + "2" and got.active and got.created == 10.0 and got.updated == 30.0
    assert await store.count_subscriptions("alice") == 1
    fresh = subscription(sub_id="s2")
    await store.put_subscription(fresh)
    got2 = await store.get_subscription("alice", "s2")
    assert got2 is not None and got2.created > 0 and got2.updated > 0


async def test_list_count_delete_subscriptions(store: SqliteStore) -> None:
    await store.put_subscription(subscription("alice", "s1", created=1.0))
    await store.put_subscription(subscription("alice", "s2", created=2.0))
    await store.put_subscription(subscription("bob", "s1", created=3.0))
    assert [s.sub_id for s in await store.subscriptions_for_account("alice")] == ["s1", "s2"]
    assert len(await store.list_subscriptions()) == 3
    assert [s.account for s in await store.list_subscriptions("bob")] == ["bob"]
    assert await store.count_subscriptions("alice") == 2
    assert await store.count_subscriptions("carol") == 0
    assert await store.delete_subscription("alice", "s1") is True
    assert await store.delete_subscription("alice", "s1") is False
    assert await store.count_subscriptions("alice") == 1
    assert await store.get_subscription("bob", "s1") is not None


async def test_find_subscription_by_ack(store: SqliteStore) -> None:
    h = hashlib.sha256(b"tok").digest()
    await store.put_subscription(subscription("alice", "s1", ack_token_hash=h))
    await store.put_subscription(subscription("alice", "s2", ack_token_hash=hashlib.sha256(b"other").digest()))
    found = await store.find_subscription_by_ack("alice", h)
    assert found is not None and found.sub_id == "s1"
    assert await store.find_subscription_by_ack("bob", h) is None  # bound to the account
    assert await store.find_subscription_by_ack("alice", hashlib.sha256(b"nope").digest()) is None


async def test_expire_inactive_subscriptions(store: SqliteStore) -> None:
    await store.put_subscription(subscription(sub_id="old-pending", active=False, ack_expires=100.0))
    await store.put_subscription(subscription(sub_id="new-pending", active=False, ack_expires=300.0))
    await store.put_subscription(subscription(sub_id="active", active=True, ack_expires=100.0))
    await store.put_subscription(subscription(sub_id="no-expiry", active=False, ack_expires=None))
    assert await store.expire_inactive_subscriptions(200.0) == 1
    assert {s.sub_id for s in await store.list_subscriptions()} == {"new-pending", "active", "no-expiry"}


async def test_clear_session_silences(store: SqliteStore) -> None:
    await store.put_subscription(subscription(sub_id="s1", silenced_session="sess-A", silenced_until=50.0))
    await store.put_subscription(subscription(sub_id="s2", silenced_session="sess-A"))
    await store.put_subscription(subscription(sub_id="s3", silenced_session="sess-B"))
    assert await store.clear_session_silences("sess-A") == 2
    subs = {s.sub_id: s for s in await store.list_subscriptions()}
    assert subs["s1"].silenced_session is None and subs["s1"].silenced_until == 50.0
    assert subs["s2"].silenced_session is None
    assert subs["s3"].silenced_session == "sess-B"
    assert await store.clear_session_silences("sess-A") == 0


async def test_subscription_auth_bound_to_row(store: SqliteStore, db_path: Path) -> None:
    await store.put_subscription(subscription("alice", "s1"))
    await store.put_subscription(subscription("bob", "s9"))
    with raw(db_path) as conn:
        blob = conn.execute("SELECT auth FROM webpush_subscriptions WHERE account = 'alice'").fetchone()[0]
        conn.execute("UPDATE webpush_subscriptions SET auth = ? WHERE account = 'bob'", (blob,))
    with pytest.raises(VaultError):
        await store.get_subscription("bob", "s9")
    assert (await store.get_subscription("alice", "s1")) is not None


# --- credentials ---------------------------------------------------------------------


async def test_credentials(store: SqliteStore) -> None:
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


async def test_credential_bound_to_account(store: SqliteStore, db_path: Path) -> None:
    await store.put_credential(StoredCredential("alice", "alice", PASSWORD))
    await store.put_credential(StoredCredential("mallory", "mallory", "mallory's own"))
    with raw(db_path) as conn:
        blob = conn.execute("SELECT secret FROM credentials WHERE account = 'alice'").fetchone()[0]
        conn.execute("UPDATE credentials SET secret = ? WHERE account = 'mallory'", (blob,))
    with pytest.raises(VaultError):
        await store.get_credential("mallory")
    cred = await store.get_credential("alice")
    assert cred is not None and cred.secret == PASSWORD


async def test_other_vault_key_cannot_decrypt(db_path: Path, vault: Vault) -> None:
    s = SqliteStore(db_path, vault)
    await s.open()
    await s.put_credential(StoredCredential("alice", "alice", PASSWORD))
    await s.put_subscription(subscription())
    await s.upsert_device(device())
    await s.close()
    other = SqliteStore(db_path, Vault.generate())
    await other.open()
    try:
        with pytest.raises(VaultError):
            await other.get_credential("alice")
        with pytest.raises(VaultError):
            await other.get_subscription("alice", "s1")
        assert len(await other.list_devices()) == 1  # nothing secret there: still readable
    finally:
        await other.close()


async def test_secrets_not_in_clear_in_db_files(store: SqliteStore, db_path: Path) -> None:
    await store.put_credential(StoredCredential("alice", "alice", PASSWORD))
    await store.put_subscription(subscription())
    await store.mark_credential_stale("alice")  # more WAL traffic

    def db_bytes() -> bytes:  # the database with its -wal and -shm files
        return b"".join(p.read_bytes() for p in db_path.parent.iterdir() if p.name.startswith(db_path.name))

    while_open = db_bytes()  # recent writes are still in the WAL
    await store.close()  # checkpoint into the main file
    for data in (while_open, db_bytes()):
        assert b"alice" in data  # sanity: we are looking at the right bytes
        for secret in (PASSWORD, AUTH, ENDPOINT, "gAAAAABsecretcapabilitypath"):
            assert secret.encode() not in data
            assert secret.encode("utf-16-le") not in data


# --- watch state ---------------------------------------------------------------------


async def test_mailbox_state(store: SqliteStore) -> None:
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


# --- accounts ------------------------------------------------------------------------


async def test_accounts_with_registrations(store: SqliteStore) -> None:
    assert await store.accounts_with_registrations() == []
    await store.upsert_device(device("carol", "c1", "01" * 32))
    await store.upsert_device(device("carol", "c2", "02" * 32))
    await store.put_subscription(subscription("alice", "s1", active=True))
    await store.put_subscription(subscription("alice", "s2", active=True))
    await store.put_subscription(subscription("bob", "s1", active=False))  # pending: not counted
    await store.put_subscription(subscription("carol", "s1", active=True))
    await store.put_credential(StoredCredential("dave", "dave", "pw"))  # credentials alone: no
    assert await store.accounts_with_registrations() == ["alice", "carol"]


# --- VAPID keys ------------------------------------------------------------------------


def vapid(key_id: str, created: float) -> VapidKey:
    return VapidKey(key_id, "B" + key_id * 86, f"/keys/{key_id}.pem", created, current=False)


async def test_vapid_keys_exactly_one_current(store: SqliteStore) -> None:
    assert await store.vapid_keys() == []
    await store.add_vapid_key(vapid("a", 1.0), make_current=False)  # the first key is current anyway
    assert [(k.key_id, k.current) for k in await store.vapid_keys()] == [("a", True)]
    await store.add_vapid_key(vapid("b", 2.0), make_current=False)
    assert [(k.key_id, k.current) for k in await store.vapid_keys()] == [("a", True), ("b", False)]
    await store.add_vapid_key(vapid("c", 3.0))
    assert [(k.key_id, k.current) for k in await store.vapid_keys()] == [("a", False), ("b", False), ("c", True)]
    await store.add_vapid_key(vapid("a", 1.0), make_current=True)  # back to an older key
    keys = await store.vapid_keys()
    assert [(k.key_id, k.current) for k in keys] == [("a", True), ("b", False), ("c", False)]
    assert keys[0] == VapidKey("a", "B" + "a" * 86, "/keys/a.pem", 1.0, True)
    await store.add_vapid_key(vapid("a", 1.0), make_current=False)  # re-adding the current key keeps it
    assert sum(k.current for k in await store.vapid_keys()) == 1


async def test_vapid_one_current_enforced_by_db(store: SqliteStore, db_path: Path) -> None:
    await store.add_vapid_key(vapid("a", 1.0))
    await store.add_vapid_key(vapid("b", 2.0), make_current=False)
    with raw(db_path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE vapid_keys SET current = 1 WHERE key_id = 'b'")


# --- concurrency -----------------------------------------------------------------------


async def test_concurrent_writes(store: SqliteStore) -> None:
    n = 200
    await asyncio.gather(
        *(
            store.upsert_device(device(f"user{i % 20}", f"a{i}", f"{i:064x}", last_registered=float(i)))
            for i in range(n)
        ),
        *(store.put_subscription(subscription(f"user{i}", f"s{i}", active=True)) for i in range(50)),
        *(store.put_credential(StoredCredential(f"user{i}", f"User{i}", f"pw{i}")) for i in range(50)),
        *(store.put_mailbox_state(MailboxState(f"user{i % 5}", "INBOX", 1, i)) for i in range(50)),
    )
    assert len(await store.list_devices()) == n
    assert len(await store.list_subscriptions()) == 50
    creds = await asyncio.gather(*(store.get_credential(f"user{i}") for i in range(50)))
    assert [c.secret for c in creds if c is not None] == [f"pw{i}" for i in range(50)]
    assert len(await store.accounts_with_registrations()) == 50


async def test_concurrent_upserts_same_key(store: SqliteStore) -> None:
    results = await asyncio.gather(*(store.upsert_device(device(last_registered=float(i + 1))) for i in range(100)))
    assert all(r.first_registered == 1.0 for r in results)
    devices = await store.list_devices()
    assert len(devices) == 1 and devices[0].last_registered == 100.0


async def test_cancelled_write_leaves_store_usable(store: SqliteStore) -> None:
    tasks = [asyncio.create_task(store.upsert_device(device(aps=f"a{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    for t in tasks[::2]:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.upsert_device(device(aps="after"))
    assert "after" in {d.aps_account_id for d in await store.list_devices()}
    assert not store._require().in_transaction


# --- factory ---------------------------------------------------------------------------


def test_sqlite_url_parsing() -> None:
    assert sqlite_path_from_url("sqlite:///var/lib/pushproxy/pushproxy.db") == Path("/var/lib/pushproxy/pushproxy.db")
    assert sqlite_path_from_url("sqlite:////var/lib/x.db") == Path("/var/lib/x.db")
    assert sqlite_path_from_url("sqlite:///:memory:") == Path(":memory:")
    for bad in ("sqlite://relative.db", "sqlite:///", "sqlite:///x.db?mode=ro"):
        with pytest.raises(ConfigError):
            sqlite_path_from_url(bad)


async def test_open_store_sqlite_creates_vault_key(tmp_path: Path) -> None:
    db = tmp_path / "state" / "pushproxy.db"
    config = Config(store=StoreConfig(url=f"sqlite://{db}"))
    s = await open_store(config)
    try:
        assert isinstance(s, Store) and await s.ping()
        key_file = config.vault_key_path()
        assert key_file == db.parent / "vault.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        await s.put_credential(StoredCredential("alice", "alice", PASSWORD))
    finally:
        await s.close()
    s = await open_store(config)  # the same key is loaded: the secret decrypts
    try:
        cred = await s.get_credential("alice")
        assert cred is not None and cred.secret == PASSWORD
    finally:
        await s.close()


async def test_open_store_memory(tmp_path: Path) -> None:
    s = await open_store(Config(store=StoreConfig(url="sqlite:///:memory:")))
    try:
        await s.put_credential(StoredCredential("alice", "alice", PASSWORD))
        assert (await s.get_credential("alice")) is not None
    finally:
        await s.close()


async def test_open_store_explicit_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "vault.key"
    config = Config(
        store=StoreConfig(url=f"sqlite://{tmp_path}/db/p.db"),
        watch=WatchConfig.model_validate({"vault_key_file": key_file}),
    )
    s = await open_store(config)
    await s.close()
    assert key_file.exists()


async def test_open_store_bad_key_file_is_config_error(tmp_path: Path) -> None:
    key_file = tmp_path / "vault.key"
    key_file.write_text(base64.b64encode(b"short").decode())
    config = Config(
        store=StoreConfig(url=f"sqlite://{tmp_path}/p.db"),
        watch=WatchConfig.model_validate({"vault_key_file": key_file}),
    )
    with pytest.raises(ConfigError, match="vault key file"):
        await open_store(config)


async def test_open_store_postgres_unreachable_is_config_error(tmp_path: Path) -> None:
    """PostgreSQL is a real back end now (tests/integration/test_postgres_store.py); an unreachable
    server is a clear start-up error that neither leaks the password nor creates a vault key."""
    key = tmp_path / "vault.key"
    cfg = Config(
        store=StoreConfig(url="postgresql://u:secretpw@127.0.0.1:1/db"),
        watch=WatchConfig(vault_key_file=key),
    )
    with pytest.raises(ConfigError, match="cannot open the PostgreSQL store") as info:
        await open_store(cfg)
    assert "secretpw" not in str(info.value)
    assert not key.exists()


async def test_open_store_newer_schema_is_config_error(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    with pytest.raises(ConfigError, match="schema version"):
        await open_store(Config(store=StoreConfig(url=f"sqlite://{db}")))
