"""The SQLite store: every method, migrations, durability, secrets at rest."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pushproxy.config import Config, ConfigError, StoreConfig, WatchConfig
from pushproxy.extensions.webpush.store import VapidKey, WebPushQueries
from pushproxy.extensions.xapplepush.store import ApnsQueries
from pushproxy.store import (
    MailboxState,
    SqliteStore,
    Store,
    StoredCredential,
    StoreSchemaError,
    StoreUnavailable,
    Vault,
    VaultError,
    open_store,
)
from pushproxy.store.dialect import SQLITE
from pushproxy.store.factory import sqlite_path_from_url
from pushproxy.store.schema import SchemaPart
from pushproxy.store.sqlite import SCHEMA_VERSION, SqliteBackend
from pushproxy.store.tables import parts_of_extensions
from tests.support.store_records import AUTH, ENDPOINT, PASSWORD, TOKEN, device, subscription, vapid

DEFAULT_PARTS = parts_of_extensions()  # the core's and every listed extension's schema part


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


def raw(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(db_path, isolation_level=None)


async def in_transaction(store: SqliteStore) -> bool:
    backend = store.backend
    assert isinstance(backend, SqliteBackend) and backend._writer is not None
    conn = backend._writer.conn
    assert conn is not None
    return await backend._writer.run(lambda: conn.in_transaction)


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
    backend = store.backend
    assert isinstance(backend, SqliteBackend)
    pragmas = {}
    for pragma in ("synchronous", "foreign_keys", "busy_timeout"):
        pragmas[pragma] = await backend.pragma(pragma)
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
    await s.queries(ApnsQueries).upsert_device(device(last_registered=100.0))
    await s.queries(WebPushQueries).put_subscription(subscription(active=True))
    await s.put_credential(StoredCredential("alice", "Alice", PASSWORD))
    await s.put_mailbox_state(MailboxState("alice", "INBOX", 7, 42, 1000))
    await s.queries(WebPushQueries).add_vapid_key(VapidKey("k1", "B" + "x" * 86, "/keys/k1.pem", 1.0, True))
    await s.close()
    await s.close()  # closing twice is harmless

    for _ in range(2):
        s = SqliteStore(db_path, vault)
        await s.open()
        assert [d.device_token for d in await s.queries(ApnsQueries).list_devices()] == [TOKEN]
        sub = await s.queries(WebPushQueries).get_subscription("alice", "s1")
        assert sub is not None and sub.endpoint == ENDPOINT and sub.auth == AUTH
        cred = await s.get_credential("alice")
        assert cred is not None and cred.secret == PASSWORD
        state = await s.get_mailbox_state("alice", "INBOX")
        assert state is not None and (state.uidvalidity, state.uidnext, state.highestmodseq) == (7, 42, 1000)
        assert [k.key_id for k in await s.queries(WebPushQueries).vapid_keys()] == ["k1"]
        await s.close()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_writes_are_visible_to_another_connection_at_once(store: SqliteStore, db_path: Path) -> None:
    """Committed before returning: a second connection (another process) sees it without close."""
    await store.queries(ApnsQueries).upsert_device(device())
    with raw(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM apns_devices").fetchone()[0] == 1
        assert not await in_transaction(store)


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
        await s.queries(ApnsQueries).list_devices()


async def test_failed_migration_is_rolled_back(db_path: Path, vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = SchemaPart("broken", (("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"),))
    s = SqliteStore(db_path, vault, (*DEFAULT_PARTS, broken))
    with pytest.raises(sqlite3.Error):
        await s.open()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] == 0


async def test_memory_store(vault: Vault) -> None:
    s = SqliteStore(Path(":memory:"), vault)
    await s.open()
    assert await s.ping()
    await s.queries(ApnsQueries).upsert_device(device())
    assert len(await s.queries(ApnsQueries).list_devices()) == 1
    await s.close()
    assert not await s.ping()


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
    backend = store.backend
    assert isinstance(backend, SqliteBackend) and backend._reader is not None and backend._reader.conn is not None
    backend._reader.conn.close()  # closed underneath the store
    assert await store.ping() is False


# --- APNs devices ---------------------------------------------------------------


# --- WebPush subscriptions ---------------------------------------------------------


async def test_subscription_auth_bound_to_row(store: SqliteStore, db_path: Path) -> None:
    await store.queries(WebPushQueries).put_subscription(subscription("alice", "s1"))
    await store.queries(WebPushQueries).put_subscription(subscription("bob", "s9"))
    with raw(db_path) as conn:
        blob = conn.execute("SELECT auth FROM webpush_subscriptions WHERE account = 'alice'").fetchone()[0]
        conn.execute("UPDATE webpush_subscriptions SET auth = ? WHERE account = 'bob'", (blob,))
    with pytest.raises(VaultError):
        await store.queries(WebPushQueries).get_subscription("bob", "s9")
    assert (await store.queries(WebPushQueries).get_subscription("alice", "s1")) is not None
    # A listing (every push to an account reads one) skips the unreadable row instead of failing them all.
    assert [sub.sub_id for sub in await store.queries(WebPushQueries).list_subscriptions()] == ["s1"]


# --- credentials ---------------------------------------------------------------------


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
    await s.queries(WebPushQueries).put_subscription(subscription())
    await s.queries(ApnsQueries).upsert_device(device())
    await s.close()
    other = SqliteStore(db_path, Vault.generate())
    await other.open()
    try:
        with pytest.raises(VaultError):
            await other.get_credential("alice")
        with pytest.raises(VaultError):
            await other.queries(WebPushQueries).get_subscription("alice", "s1")
        # Device tokens are secrets too (issue 9 item 9): unreadable rows are skipped, not pushed to.
        assert await other.queries(ApnsQueries).list_devices() == []
    finally:
        await other.close()


async def test_secrets_not_in_clear_in_db_files(store: SqliteStore, db_path: Path) -> None:
    await store.put_credential(StoredCredential("alice", "alice", PASSWORD))
    await store.queries(WebPushQueries).put_subscription(subscription())
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


# --- accounts ------------------------------------------------------------------------


# --- VAPID keys ------------------------------------------------------------------------


async def test_vapid_one_current_enforced_by_db(store: SqliteStore, db_path: Path) -> None:
    await store.queries(WebPushQueries).add_vapid_key(vapid("a", 1.0))
    await store.queries(WebPushQueries).add_vapid_key(vapid("b", 2.0), make_current=False)
    with raw(db_path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE vapid_keys SET current = 1 WHERE key_id = 'b'")


# --- concurrency -----------------------------------------------------------------------


async def test_cancelled_write_leaves_store_usable(store: SqliteStore) -> None:
    tasks = [asyncio.create_task(store.queries(ApnsQueries).upsert_device(device(aps=f"a{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    for t in tasks[::2]:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.queries(ApnsQueries).upsert_device(device(aps="after"))
    assert "after" in {d.aps_account_id for d in await store.queries(ApnsQueries).list_devices()}
    assert not await in_transaction(store)


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


async def test_open_store_refuses_another_vault_key(tmp_path: Path) -> None:
    """A node (or restart) with another key would write records nobody can read: refused at start."""
    db = tmp_path / "state" / "pushproxy.db"
    first = Config(store=StoreConfig(url=f"sqlite://{db}"))
    s = await open_store(first)
    await s.close()
    other_key = tmp_path / "other.key"
    other_key.write_text(base64.b64encode(b"k" * 32).decode() + "\n")
    other_key.chmod(0o600)
    other = Config(store=StoreConfig(url=f"sqlite://{db}"), watch=WatchConfig(vault_key_file=other_key))
    with pytest.raises(ConfigError, match="same vault key file"):
        await open_store(other)
    s = await open_store(first)  # the right key still opens it
    await s.close()


# --- upgrades and concurrency of the two connections -----------------------------------------


async def test_legacy_single_version_database_is_adopted_and_converted(db_path: Path, vault: Vault) -> None:
    """A database of the previous release (user_version 1, clear device tokens) opens and is converted."""
    db_path.parent.mkdir()
    with raw(db_path) as conn:
        for part in DEFAULT_PARTS:
            if not part.legacy_version:
                continue  # a part added after the single-version schema (deltachat) was not in it
            for statement in part.migrations[0]:
                assert isinstance(statement, str)
                conn.execute(SQLITE.ddl(statement))
        conn.execute(
            "INSERT INTO apns_devices VALUES ('alice', 'a1', ?, 'com.apple.mobilemail', 2, '[\"INBOX\"]', 1.0, 2.0)",
            (TOKEN,),
        )
        conn.execute("PRAGMA user_version = 1")
    s = SqliteStore(db_path, vault)
    await s.open()
    try:
        assert [(d.account, d.device_token, d.mailboxes) for d in await s.queries(ApnsQueries).list_devices()] == [
            ("alice", TOKEN, ["INBOX"])
        ]
    finally:
        await s.close()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # an older release refuses it
        parts = dict(conn.execute("SELECT part, max(version) FROM schema_migrations GROUP BY part").fetchall())
        assert parts == {part.name: part.version for part in DEFAULT_PARTS}
        assert TOKEN.encode() not in b"".join(
            p.read_bytes() for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)
        )


async def test_reads_do_not_wait_for_a_write_transaction(store: SqliteStore) -> None:
    """Issue 11: no lock serialises reads behind writes; WAL gives the reader the last committed state."""
    await store.put_credential(StoredCredential("alice", "alice", PASSWORD))
    entered, release = asyncio.Event(), asyncio.Event()

    async def long_write() -> None:
        async with store.backend.write() as conn:
            await conn.execute("UPDATE credentials SET login = 'changing' WHERE account = 'alice'")
            entered.set()
            await release.wait()

    writer = asyncio.create_task(long_write())
    await entered.wait()
    try:
        async with asyncio.timeout(5):  # would wait for ever behind a shared lock
            cred = await store.get_credential("alice")
        assert cred is not None and cred.login == "alice"  # the uncommitted change is not visible
    finally:
        release.set()
        await writer
    cred = await store.get_credential("alice")
    assert cred is not None and cred.login == "changing"


async def test_sqlite_calls_never_run_on_the_event_loop_thread(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from pushproxy.store import sqlite as sqlite_mod

    loop_thread = threading.get_ident()
    threads: set[int] = set()
    original = sqlite_mod._fetch

    def spy(*args: object) -> object:
        threads.add(threading.get_ident())
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_mod, "_fetch", spy)
    await store.queries(ApnsQueries).upsert_device(device())
    await store.queries(ApnsQueries).list_devices()
    assert threads and loop_thread not in threads
