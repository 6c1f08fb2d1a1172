"""The PostgreSQL store against a real PostgreSQL server.

The behaviour tests shared with SQLite are the store contract
(tests/integration/test_store_contract.py, run over both back ends).  Here
are the back-end specific checks: secrets at rest, migrations under
concurrency, several nodes on one database, timeouts, the factory, and one
end-to-end run of the real proxy.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'pushproxy[postgres]'")

from pushproxy.config import Config, ConfigError, StoreConfig, WatchConfig  # noqa: E402
from pushproxy.extensions.webpush.store import VapidKey, WebPushQueries  # noqa: E402
from pushproxy.extensions.xapplepush.store import ApnsQueries  # noqa: E402
from pushproxy.store import (  # noqa: E402
    MailboxState,
    Store,
    StoredCredential,
    StoreSchemaError,
    StoreUnavailable,
    Vault,
    VaultError,
    open_store,
)
from pushproxy.store.dialect import POSTGRES  # noqa: E402
from pushproxy.store.postgres import SCHEMA_VERSION, PostgresStore, redact_dsn  # noqa: E402
from pushproxy.store.schema import SchemaPart  # noqa: E402
from pushproxy.store.tables import parts_of_extensions  # noqa: E402
from tests.support.dovecot import Dovecot, make_message  # noqa: E402
from tests.support.postgres import PASSWORD as PG_PASSWORD  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.proxy import ProxyProcess, free_port  # noqa: E402
from tests.support.push_standin import PushStandin  # noqa: E402
from tests.support.store_records import AUTH, ENDPOINT, PASSWORD, TOKEN, device, subscription, vapid  # noqa: E402

DEFAULT_PARTS = parts_of_extensions()  # the core's and every listed extension's schema part

TABLES = {"apns_devices", "webpush_subscriptions", "credentials", "mailbox_state", "vapid_keys", "schema_version"}
TABLES |= {"schema_migrations", "key_fingerprints"}


@pytest.fixture
def vault() -> Vault:
    return Vault.generate()


@pytest.fixture
async def store(postgres_dsn: str, vault: Vault) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(postgres_dsn, vault)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def raw(postgres_dsn: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection to the same database: what another program sees."""
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    yield conn
    await conn.close()


# --- lifecycle and migrations ------------------------------------------------


async def test_migrates_empty_database(store: PostgresStore, raw: Any) -> None:
    tables = {r[0] for r in await raw.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables >= TABLES
    assert await raw.fetchval("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
    settings = await store.pg.pool.fetchval("SHOW statement_timeout")
    assert settings == "10s"


async def test_reopen_is_idempotent_and_durable(postgres_dsn: str, vault: Vault) -> None:
    s = PostgresStore(postgres_dsn, vault)
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
        s = PostgresStore(postgres_dsn, vault)
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


async def test_newer_schema_is_refused(postgres_dsn: str, vault: Vault, raw: Any) -> None:
    s = PostgresStore(postgres_dsn, vault)
    await s.open()
    await s.close()
    await raw.execute("INSERT INTO schema_version (version, applied) VALUES ($1, 0)", SCHEMA_VERSION + 1)
    s = PostgresStore(postgres_dsn, vault)
    with pytest.raises(StoreSchemaError, match="upgrade pushproxy"):
        await s.open()
    assert not await s.ping()
    with pytest.raises(StoreUnavailable):
        await s.queries(ApnsQueries).list_devices()


async def test_failed_migration_is_rolled_back(
    postgres_dsn: str, vault: Vault, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = SchemaPart("broken", (("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"),))
    s = PostgresStore(postgres_dsn, vault, parts=(*DEFAULT_PARTS, broken))
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await s.open()
    tables = await raw.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert tables == 0  # nothing at all: not even schema_version or step 1


async def test_concurrent_migrations_from_several_nodes(postgres_dsn: str, vault: Vault, raw: Any) -> None:
    """Nodes starting at once: one migrates, the others wait on the advisory lock and find it done."""
    stores = [PostgresStore(postgres_dsn, vault, max_size=2) for _ in range(6)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert await raw.fetchval("SELECT count(*) FROM schema_version") == SCHEMA_VERSION
        await stores[0].put_credential(StoredCredential("alice", "alice", PASSWORD))
        for s in stores:
            cred = await s.get_credential("alice")
            assert cred is not None and cred.secret == PASSWORD
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_two_nodes_see_each_others_writes(postgres_dsn: str, vault: Vault) -> None:
    a, b = PostgresStore(postgres_dsn, vault), PostgresStore(postgres_dsn, vault)
    await a.open()
    await b.open()
    try:
        await a.queries(ApnsQueries).upsert_device(device("alice", "a1", TOKEN, last_registered=100.0))
        await b.queries(ApnsQueries).upsert_device(device("alice", "a1", TOKEN, last_registered=200.0))
        (on_a,) = await a.queries(ApnsQueries).list_devices()
        assert on_a.first_registered == 100.0 and on_a.last_registered == 200.0
        await b.queries(WebPushQueries).put_subscription(subscription(active=True))
        assert (await a.queries(WebPushQueries).get_subscription("alice", "s1")) is not None
        await a.put_credential(StoredCredential("alice", "alice", PASSWORD))
        await b.mark_credential_stale("alice")
        cred = await a.get_credential("alice")
        assert cred is not None and cred.stale
        await a.queries(WebPushQueries).add_vapid_key(vapid("a", 1.0))
        await b.queries(WebPushQueries).add_vapid_key(vapid("b", 2.0))
        assert [(k.key_id, k.current) for k in await a.queries(WebPushQueries).vapid_keys()] == [
            ("a", False),
            ("b", True),
        ]
        assert await b.accounts_with_registrations() == ["alice"]
        assert (
            await a.queries(ApnsQueries).remove_device_token(TOKEN, registered_before=150.0) == 0
        )  # b re-registered it at 200
        assert await b.queries(ApnsQueries).remove_device_token(TOKEN, registered_before=250.0) == 1
        assert await a.queries(ApnsQueries).list_devices() == []
    finally:
        await a.close()
        await b.close()


async def test_concurrent_upserts_from_two_nodes(postgres_dsn: str, vault: Vault) -> None:
    a, b = PostgresStore(postgres_dsn, vault), PostgresStore(postgres_dsn, vault)
    await a.open()
    await b.open()
    try:
        upserts = asyncio.gather(
            *(
                (a if i % 2 else b).queries(ApnsQueries).upsert_device(device(last_registered=float(i + 1)))
                for i in range(100)
            )
        )
        puts = asyncio.gather(
            *((a if i % 2 else b).put_credential(StoredCredential("alice", "alice", f"pw{i}")) for i in range(40))
        )
        results, _ = await asyncio.gather(upserts, puts)
        firsts = {r.first_registered for r in results}
        assert len(firsts) == 1  # every upsert kept the first row's first_registered
        (d,) = await a.queries(ApnsQueries).list_devices()
        assert d.first_registered in firsts
        cred = await b.get_credential("alice")
        assert cred is not None and cred.secret.startswith("pw")  # whichever won, it decrypts
    finally:
        await a.close()
        await b.close()


async def test_one_nodes_writes_to_a_row_apply_in_call_order(store: PostgresStore) -> None:
    """As with SQLite: a watcher's UIDNEXT never goes back because two writes overtook each other."""
    await asyncio.gather(
        *(store.put_mailbox_state(MailboxState("alice", "INBOX", 1, i, i, updated=float(i))) for i in range(1, 101)),
        *(store.put_credential(StoredCredential("alice", "alice", f"pw{i}", updated=float(i))) for i in range(1, 51)),
        *(store.queries(WebPushQueries).put_subscription(subscription(failures=i)) for i in range(1, 51)),
    )
    state = await store.get_mailbox_state("alice", "INBOX")
    assert state is not None and state.uidnext == 100 and state.highestmodseq == 100
    cred = await store.get_credential("alice")
    assert cred is not None and cred.secret == "pw50"
    sub = await store.queries(WebPushQueries).get_subscription("alice", "s1")
    assert sub is not None and sub.failures == 50
    assert len(store._row_locks) == 0  # no lock kept once nobody waits


async def test_concurrent_vapid_rotation_from_two_nodes(postgres_dsn: str, vault: Vault) -> None:
    a, b = PostgresStore(postgres_dsn, vault), PostgresStore(postgres_dsn, vault)
    await a.open()
    await b.open()
    try:
        await asyncio.gather(
            *(
                (a if i % 2 else b)
                .queries(WebPushQueries)
                .add_vapid_key(vapid(chr(ord("a") + i), float(i)), make_current=i % 3 == 0)
                for i in range(12)
            )
        )
        keys = await a.queries(WebPushQueries).vapid_keys()
        assert len(keys) == 12 and sum(k.current for k in keys) == 1
    finally:
        await a.close()
        await b.close()


async def test_vapid_one_current_enforced_by_db(store: PostgresStore, raw: Any) -> None:
    await store.queries(WebPushQueries).add_vapid_key(vapid("a", 1.0))
    await store.queries(WebPushQueries).add_vapid_key(vapid("b", 2.0), make_current=False)
    with pytest.raises(asyncpg.UniqueViolationError):
        await raw.execute("UPDATE vapid_keys SET current = true WHERE key_id = 'b'")


# --- availability ----------------------------------------------------------------


async def test_ping(store: PostgresStore) -> None:
    assert await store.ping()
    await store.close()
    assert await store.ping() is False


async def test_ping_false_when_server_unreachable(vault: Vault) -> None:
    s = PostgresStore(f"postgresql://nobody:x@127.0.0.1:{free_port()}/db", vault)
    assert await s.ping() is False
    with pytest.raises(OSError):
        await s.open()
    assert await s.ping() is False


async def test_ping_recovers_after_connections_are_killed(store: PostgresStore, raw: Any) -> None:
    assert await store.ping()
    await raw.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'pushproxy' AND pid <> pg_backend_pid()"
    )
    results = [await store.ping() for _ in range(3)]  # the first may see the dead connection
    assert results[-1] is True
    await store.queries(ApnsQueries).upsert_device(device())
    assert len(await store.queries(ApnsQueries).list_devices()) == 1


async def test_statement_timeout_is_store_unavailable(postgres_dsn: str, vault: Vault, raw: Any) -> None:
    s = PostgresStore(postgres_dsn, vault, statement_timeout_ms=200)
    await s.open()
    try:
        async with raw.transaction():
            await raw.execute("LOCK TABLE credentials IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailable, match="QueryCanceled"):
                await s.get_credential("alice")
        await s.put_credential(StoredCredential("alice", "alice", PASSWORD))  # usable again
        assert (await s.get_credential("alice")) is not None
    finally:
        await s.close()


async def test_client_deadline_is_store_unavailable(postgres_dsn: str, vault: Vault, raw: Any) -> None:
    s = PostgresStore(postgres_dsn, vault, operation_timeout=0.3, statement_timeout_ms=60_000)
    await s.open()
    try:
        async with raw.transaction():
            await raw.execute("LOCK TABLE apns_devices IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailable):
                await s.queries(ApnsQueries).upsert_device(device())
        await s.queries(ApnsQueries).upsert_device(device(aps="after"))
        assert [d.aps_account_id for d in await s.queries(ApnsQueries).list_devices()] == ["after"]
    finally:
        await s.close()


async def test_cancelled_writes_leave_store_usable(store: PostgresStore) -> None:
    tasks = [asyncio.create_task(store.queries(ApnsQueries).upsert_device(device(aps=f"a{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    for t in tasks[::2]:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.queries(ApnsQueries).upsert_device(device(aps="after"))
    assert "after" in {d.aps_account_id for d in await store.queries(ApnsQueries).list_devices()}


# --- secrets at rest ----------------------------------------------------------------


async def test_secrets_not_in_clear_in_tables(store: PostgresStore, raw: Any) -> None:
    await store.put_credential(StoredCredential("alice", "alice", PASSWORD))
    await store.queries(WebPushQueries).put_subscription(subscription())
    rows = [
        *(await raw.fetch("SELECT * FROM credentials")),
        *(await raw.fetch("SELECT * FROM webpush_subscriptions")),
    ]
    dump = b"".join(v if isinstance(v, bytes) else str(v).encode() for r in rows for v in r.values() if v is not None)
    assert b"alice" in dump  # sanity: we are looking at the right rows
    for secret in (PASSWORD, AUTH, ENDPOINT, "gAAAAABsecretcapabilitypath"):
        assert secret.encode() not in dump
    (secret_blob,) = await raw.fetchrow("SELECT secret FROM credentials")
    assert isinstance(secret_blob, bytes) and secret_blob[0] == 1  # a vault v1 blob


async def test_credential_bound_to_account(store: PostgresStore, raw: Any) -> None:
    await store.put_credential(StoredCredential("alice", "alice", PASSWORD))
    await store.put_credential(StoredCredential("mallory", "mallory", "mallory's own"))
    await raw.execute(
        "UPDATE credentials SET secret = (SELECT secret FROM credentials WHERE account = 'alice') "
        "WHERE account = 'mallory'"
    )
    with pytest.raises(VaultError):
        await store.get_credential("mallory")
    cred = await store.get_credential("alice")
    assert cred is not None and cred.secret == PASSWORD


async def test_subscription_auth_bound_to_row(store: PostgresStore, raw: Any) -> None:
    await store.queries(WebPushQueries).put_subscription(subscription("alice", "s1"))
    await store.queries(WebPushQueries).put_subscription(subscription("bob", "s9"))
    await raw.execute(
        "UPDATE webpush_subscriptions SET auth = (SELECT auth FROM webpush_subscriptions WHERE account = 'alice') "
        "WHERE account = 'bob'"
    )
    with pytest.raises(VaultError):
        await store.queries(WebPushQueries).get_subscription("bob", "s9")
    assert (await store.queries(WebPushQueries).get_subscription("alice", "s1")) is not None


async def test_other_vault_key_cannot_decrypt(postgres_dsn: str, vault: Vault) -> None:
    s = PostgresStore(postgres_dsn, vault)
    await s.open()
    await s.put_credential(StoredCredential("alice", "alice", PASSWORD))
    await s.queries(WebPushQueries).put_subscription(subscription())
    await s.queries(ApnsQueries).upsert_device(device())
    await s.close()
    other = PostgresStore(postgres_dsn, Vault.generate())
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


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:secret@db:5432/pp") == "postgresql://u:********@db:5432/pp"
    assert redact_dsn("postgresql://u@db/pp") == "postgresql://u@db/pp"
    assert "secret" not in redact_dsn("postgres://u:secret@[::1]:5432/pp?sslmode=require")


# --- factory ---------------------------------------------------------------------------


def pg_config(dsn: str, tmp_path: Path) -> Config:
    return Config(
        store=StoreConfig(url=dsn),
        watch=WatchConfig.model_validate({"vault_key_file": tmp_path / "keys" / "vault.key"}),
    )


async def test_open_store_postgres(postgres_dsn: str, tmp_path: Path) -> None:
    config = pg_config(postgres_dsn.replace("postgresql://", "postgres://", 1), tmp_path)
    s = await open_store(config)
    try:
        assert isinstance(s, PostgresStore) and isinstance(s, Store) and await s.ping()
        await s.put_credential(StoredCredential("alice", "alice", PASSWORD))
    finally:
        await s.close()
    assert (tmp_path / "keys" / "vault.key").exists()
    s = await open_store(pg_config(postgres_dsn, tmp_path))  # the same key file: the secret decrypts
    try:
        cred = await s.get_credential("alice")
        assert cred is not None and cred.secret == PASSWORD
    finally:
        await s.close()


async def test_open_store_unreachable_is_config_error(tmp_path: Path) -> None:
    dsn = f"postgresql://u:topsecret@127.0.0.1:{free_port()}/pushproxy"
    with pytest.raises(ConfigError, match="cannot open the PostgreSQL store") as info:
        await open_store(pg_config(dsn, tmp_path))
    assert "topsecret" not in str(info.value)
    assert not (tmp_path / "keys" / "vault.key").exists()  # no fresh key made on the way out


async def test_open_store_wrong_password_is_config_error(
    postgres_server: PostgresServer, postgres_dsn: str, tmp_path: Path
) -> None:
    dsn = postgres_dsn.replace(f":{PG_PASSWORD}@", ":wrong-password@")
    with pytest.raises(ConfigError, match="InvalidPassword") as info:
        await open_store(pg_config(dsn, tmp_path))
    assert "wrong-password" not in str(info.value)
    assert not (tmp_path / "keys" / "vault.key").exists()


async def test_open_store_newer_schema_is_config_error(postgres_dsn: str, tmp_path: Path, raw: Any) -> None:
    await raw.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION)")
    await raw.execute("INSERT INTO schema_version VALUES ($1, 0)", SCHEMA_VERSION + 5)
    with pytest.raises(ConfigError, match="schema version"):
        await open_store(pg_config(postgres_dsn, tmp_path))


async def test_open_store_without_asyncpg_is_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg -> ImportError
    monkeypatch.delitem(sys.modules, "pushproxy.store.postgres")
    with pytest.raises(ConfigError, match=r"pip install 'pushproxy\[postgres\]'"):
        await open_store(pg_config("postgresql://u@127.0.0.1/db", tmp_path))


async def test_bad_vault_key_file_is_config_error(postgres_dsn: str, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "vault.key"
    key_file.parent.mkdir()
    key_file.write_text(base64.b64encode(b"short").decode())
    with pytest.raises(ConfigError, match="vault key file"):
        await open_store(pg_config(postgres_dsn, tmp_path))


# --- end to end: two real proxy nodes on one database -------------------------------------

ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture
def standin() -> Iterator[PushStandin]:
    with PushStandin() as s:
        yield s


@pytest.mark.timeout(120)
def test_two_proxy_nodes_share_postgres(
    postgres_dsn: str, dovecot: Dovecot, proxy_factory: ProxyFactory, standin: PushStandin, tmp_path: Path
) -> None:
    # postgres_dsn first: its database is dropped only after the proxies have stopped.
    from tests.support.webpush_proxy import WATCH, RawImap, subscribe_and_ack, wait_pushes, wait_until

    shared = {
        "store": {"url": postgres_dsn},
        # What every node needs: the same vault key and the same VAPID key file.
        "watch": {**WATCH, "vault_key_file": str(tmp_path / "vault.key")},
        "webpush": {
            "enabled": True,
            "allow_private_endpoints": True,
            "subject": "mailto:ops@example.org",
            "timeout": 5.0,
            "retry_budget": 3,
            "vapid_private_key_file": str(tmp_path / "vapid.pem"),
        },
    }
    node_a = proxy_factory(dovecot, **shared)
    node_b = proxy_factory(dovecot, **shared)
    for node in (node_a, node_b):
        status, body = node.admin_get("/readyz")
        assert status == 200 and '"store": true' in body, body

    client = RawImap(node_a.port)
    client.login()
    ss = subscribe_and_ack(client, standin, "sub-on-a")
    client.close()
    # One node watches the account, whichever holds its lease (issue 14: no longer every node).
    wait_until(
        lambda: sum(n.metric("pushproxy_watchers", {"state": "idle"}) for n in (node_a, node_b)) == 1,
        what="one node to watch the account",
    )
    dovecot.deliver("alice", make_message("hello from postgres"))
    pushes = wait_pushes(standin, ss, 2)  # the ack push, then the new-mail push
    assert pushes[-1].problems == []

    # Node B serves the subscription node A stored: the same VAPID key, and it lists it.
    client_b = RawImap(node_b.port)
    client_b.login()
    vapid_a = RawImap(node_a.port)
    vapid_a.login()
    assert client_b.ok("GETVAPID") == vapid_a.ok("GETVAPID")
    vapid_a.close()
    client_b.close()

    async def stored() -> list[Any]:
        s = await open_store(
            Config(
                store=StoreConfig(url=postgres_dsn),
                watch=WatchConfig.model_validate({"vault_key_file": tmp_path / "vault.key"}),
            )
        )
        try:
            return await s.queries(WebPushQueries).subscriptions_for_account("alice")
        finally:
            await s.close()

    (sub,) = asyncio.run(stored())
    assert sub.sub_id == "sub-on-a" and sub.active and sub.endpoint == ss.endpoint


async def test_legacy_single_version_database_is_adopted_and_converted(
    postgres_dsn: str, vault: Vault, raw: Any
) -> None:
    """A database of the previous release (schema_version 1, clear device tokens) opens and is converted."""
    await raw.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)")
    await raw.execute("INSERT INTO schema_version VALUES (1, 0)")
    for part in DEFAULT_PARTS:
        if not part.legacy_version:
            continue  # a part added after the single-version schema (deltachat) was not in it
        for statement in part.migrations[0]:
            assert isinstance(statement, str)
            await raw.execute(POSTGRES.ddl(statement))
    await raw.execute(
        "INSERT INTO apns_devices VALUES ('alice', 'a1', $1, 'com.apple.mobilemail', 2, '[\"INBOX\"]', 1.0, 2.0)",
        TOKEN,
    )
    s = PostgresStore(postgres_dsn, vault)
    await s.open()
    try:
        assert [(d.account, d.device_token, d.mailboxes) for d in await s.queries(ApnsQueries).list_devices()] == [
            ("alice", TOKEN, ["INBOX"])
        ]
    finally:
        await s.close()
    assert await raw.fetchval("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
    rows = await raw.fetch("SELECT part, max(version) AS v FROM schema_migrations GROUP BY part")
    assert {r["part"]: r["v"] for r in rows} == {part.name: part.version for part in DEFAULT_PARTS}
    rows = await raw.fetch("SELECT * FROM apns_devices")
    dump = b"".join(bytes(v) if isinstance(v, bytes) else str(v).encode() for r in rows for v in r.values())
    assert TOKEN.encode() not in dump
