"""The PostgreSQL back end (asyncpg), for several proxy nodes sharing one database.

Semantics are those of :class:`~pushproxy.store.sqlite.SqliteStore`, method
for method; the secrets are encrypted with the same vault and the same
associated data (the aad helpers are imported from the SQLite module), so a
row means the same thing in either back end.

Multi-node notes:

- Every node must load the same vault key file (``watch.vault_key_file``),
  or it cannot decrypt what another node stored.
- Only VAPID key *metadata* is shared; the private key files stay local.
  Every node needs the same VAPID key file at the path recorded here.
- Schema migrations run in one transaction under a transaction-scoped
  advisory lock, so nodes starting together do not race: the second waits,
  then finds the schema current.

Durability: each write is its own committed transaction (or autocommitted
statement) before the coroutine returns; with PostgreSQL's default
``synchronous_commit = on`` that is on disk.  Every await is bounded: a
client-side deadline per operation plus a server-side ``statement_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from pushproxy.store.base import (
    ApnsDevice,
    MailboxState,
    Store,
    StoredCredential,
    StoreUnavailable,
    VapidKey,
    WebPushSubscription,
)
from pushproxy.store.records import (
    auth_aad,
    credential_aad,
    credential_from_row,
    device_from_row,
    endpoint_aad,
    mailbox_state_from_row,
    subscription_from_row,
    vapid_key_from_row,
)
from pushproxy.store.sqlite import StoreSchemaError
from pushproxy.store.vault import Vault

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT = 10.0  # one connection attempt
OPERATION_TIMEOUT = 15.0  # a whole store call: waiting for a pooled connection + the statements
STATEMENT_TIMEOUT_MS = 10_000  # server side, per statement
MIGRATION_STATEMENT_TIMEOUT_MS = 120_000  # waiting for another node's migration, then DDL
MIGRATION_TIMEOUT = 150.0
PING_TIMEOUT = 5.0
CLOSE_TIMEOUT = 10.0

# pg_advisory_xact_lock keys (any fixed int64; these spell "pushprox" and "pushvapi").
_SCHEMA_LOCK_KEY = 0x7075736870726F78
_VAPID_LOCK_KEY = 0x7075736876617069

# Schema migrations: step N brings the database from version N-1 to N.  The
# applied versions are rows of ``schema_version``.  Never edit a released
# step; append a new one.
MIGRATIONS: list[list[str]] = [
    # 1: initial schema (the SQLite schema, with PostgreSQL types)
    [
        """CREATE TABLE apns_devices (
            account TEXT NOT NULL,
            aps_account_id TEXT NOT NULL,
            device_token TEXT NOT NULL,
            subtopic TEXT NOT NULL,
            version INTEGER NOT NULL,
            mailboxes JSONB NOT NULL,
            first_registered DOUBLE PRECISION NOT NULL,
            last_registered DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (account, aps_account_id, device_token)
        )""",
        "CREATE INDEX apns_devices_by_token ON apns_devices (device_token)",
        "CREATE INDEX apns_devices_by_last_registered ON apns_devices (last_registered)",
        """CREATE TABLE webpush_subscriptions (
            account TEXT NOT NULL,
            sub_id TEXT NOT NULL,
            endpoint BYTEA NOT NULL,
            p256dh TEXT NOT NULL,
            auth BYTEA NOT NULL,
            vapid_key_id TEXT NOT NULL,
            active BOOLEAN NOT NULL,
            ack_token_hash BYTEA,
            ack_expires DOUBLE PRECISION,
            silenced_until DOUBLE PRECISION,
            silenced_session TEXT,
            want_changes BOOLEAN NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL,
            last_success DOUBLE PRECISION,
            failures INTEGER NOT NULL,
            PRIMARY KEY (account, sub_id)
        )""",
        "COMMENT ON COLUMN webpush_subscriptions.endpoint IS 'vault-encrypted'",
        "COMMENT ON COLUMN webpush_subscriptions.auth IS 'vault-encrypted'",
        "CREATE INDEX webpush_by_ack ON webpush_subscriptions (account, ack_token_hash)",
        "CREATE INDEX webpush_by_session ON webpush_subscriptions (silenced_session)",
        "CREATE INDEX webpush_by_ack_expires ON webpush_subscriptions (active, ack_expires)",
        """CREATE TABLE credentials (
            account TEXT PRIMARY KEY,
            login TEXT NOT NULL,
            secret BYTEA NOT NULL,
            stale BOOLEAN NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        )""",
        "COMMENT ON COLUMN credentials.secret IS 'vault-encrypted, aad names the account'",
        """CREATE TABLE mailbox_state (
            account TEXT NOT NULL,
            mailbox TEXT NOT NULL,
            uidvalidity BIGINT NOT NULL,
            uidnext BIGINT NOT NULL,
            highestmodseq BIGINT,
            updated DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (account, mailbox)
        )""",
        """CREATE TABLE vapid_keys (
            key_id TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,
            private_key_path TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            current BOOLEAN NOT NULL
        )""",
        # At most one current key, enforced by the database.
        "CREATE UNIQUE INDEX vapid_keys_one_current ON vapid_keys (current) WHERE current",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)

# Errors that mean "the database cannot be reached or cannot serve us right
# now", as opposed to a bug in a statement.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # TimeoutError is one
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.InterfaceError,  # connection lost / pool closing
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, statement_timeout
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # class 40: serialization failure, deadlock
)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        netloc = parts.netloc.rpartition("@")
        userinfo = netloc[0].partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{userinfo}:********@{netloc[2]}"))
    except ValueError:
        return "<unparseable PostgreSQL URL>"


async def probe_server(dsn: str) -> None:
    """Connect once and disconnect: raises what asyncpg raises when the server is unusable."""
    async with asyncio.timeout(CONNECT_TIMEOUT * 2):
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
        await conn.close(timeout=CLOSE_TIMEOUT)


def _rowcount(status: str) -> int:
    """``DELETE 3`` / ``UPDATE 0`` / ``INSERT 0 1`` -> the row count."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except (ValueError, IndexError):
        return 0


class PostgresStore(Store):
    """:class:`Store` on a PostgreSQL database shared by any number of proxy nodes."""

    def __init__(
        self,
        dsn: str,
        vault: Vault,
        *,
        min_size: int = 1,
        max_size: int = 10,
        operation_timeout: float = OPERATION_TIMEOUT,
        statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
    ) -> None:
        self._dsn = dsn
        self._vault = vault
        self._min_size = min_size
        self._max_size = max_size
        self._op_timeout = operation_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._pool: asyncpg.Pool | None = None
        self._open_lock = asyncio.Lock()
        # One FIFO lock per row being upserted (dropped when nobody holds or waits for it).
        self._row_locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = weakref.WeakValueDictionary()

    def __repr__(self) -> str:
        return f"<PostgresStore {redact_dsn(self._dsn)}>"

    # --- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        async with self._open_lock:
            if self._pool is not None:
                return
            async with asyncio.timeout(CONNECT_TIMEOUT * 2):
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=self._op_timeout,
                    server_settings={
                        "application_name": "pushproxy",
                        "statement_timeout": str(self._statement_timeout_ms),
                        # A session that dies with a transaction open must not hold locks forever.
                        "idle_in_transaction_session_timeout": str(self._statement_timeout_ms * 6),
                    },
                )
            try:
                await self._migrate(pool)
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        async with asyncio.timeout(MIGRATION_TIMEOUT), pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {MIGRATION_STATEMENT_TIMEOUT_MS}")
            # Serialises nodes migrating at once; released at commit/rollback.  Under READ
            # COMMITTED every later statement sees what a node that held the lock before us did.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_version (
                       version INTEGER PRIMARY KEY,
                       applied DOUBLE PRECISION NOT NULL
                   )"""
            )
            current = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
            if current > SCHEMA_VERSION:
                raise StoreSchemaError(
                    f"PostgreSQL database {redact_dsn(self._dsn)} has schema version {current}, but this "
                    f"version of pushproxy only knows up to {SCHEMA_VERSION}: upgrade pushproxy "
                    "(downgrades are not supported)"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, applied) VALUES ($1, $2)", version, time.time()
                )
        if current < SCHEMA_VERSION:
            log.info("PostgreSQL store: schema migrated from version %d to %d", current, SCHEMA_VERSION)

    async def close(self) -> None:
        pool = self._pool
        if pool is None:
            return
        self._pool = None
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await pool.close()
        except _TRANSIENT:
            pool.terminate()

    async def ping(self) -> bool:
        pool = self._pool
        if pool is None:
            return False
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await pool.fetchval("SELECT 1", timeout=PING_TIMEOUT)
        except Exception:  # ping reports, never raises: anything wrong means "not ready"
            return False
        return True

    # --- connection helpers ----------------------------------------------------
    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self, transaction: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection (optionally in one committed transaction) under one deadline."""
        pool = self._require()
        try:
            async with asyncio.timeout(self._op_timeout), pool.acquire() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except _TRANSIENT as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _in_call_order(self, row_key: Hashable) -> AsyncIterator[None]:
        """Apply this node's writes to one row in the order they were called.

        The pool runs statements concurrently, so without this two upserts of
        the same row could commit in either order (SQLite, with its single
        connection, applies them in call order).  That matters: a watcher's
        mailbox state must never go back to an older UIDNEXT, and a device
        re-registration must not be overwritten by an earlier one.  Writes to
        different rows still run in parallel.  Across nodes, commit order rules.
        """
        lock = self._row_locks.get(row_key)
        if lock is None:
            lock = self._row_locks[row_key] = asyncio.Lock()
        try:
            async with asyncio.timeout(self._op_timeout):
                await lock.acquire()
        except TimeoutError as exc:
            raise StoreUnavailable("PostgreSQL: timed out waiting for earlier writes to the same row") from exc
        try:
            yield
        finally:
            lock.release()

    async def _run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async with self._connection() as conn:
            return await fn(conn)

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            return list(await conn.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self._connection() as conn:
            return await conn.fetchrow(sql, *args)

    async def _modify(self, sql: str, *args: Any) -> int:
        """One autocommitted write statement; rows changed."""
        async with self._connection() as conn:
            return _rowcount(await conn.execute(sql, *args))

    # --- APNs devices --------------------------------------------------------
    async def upsert_device(self, device: ApnsDevice) -> ApnsDevice:
        last = device.last_registered or time.time()
        first = device.first_registered or last
        token = device.device_token.lower()
        async with self._in_call_order(("device", device.account, device.aps_account_id, token)):
            row = await self._fetchrow(
                """INSERT INTO apns_devices (account, aps_account_id, device_token, subtopic, version,
                                         mailboxes, first_registered, last_registered)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)
               ON CONFLICT (account, aps_account_id, device_token) DO UPDATE SET
                   subtopic = excluded.subtopic,
                   version = excluded.version,
                   mailboxes = excluded.mailboxes,
                   last_registered = excluded.last_registered
               RETURNING *""",
                device.account,
                device.aps_account_id,
                token,
                device.subtopic,
                device.version,
                json.dumps(list(device.mailboxes)),
                first,
                last,
            )
        assert row is not None  # RETURNING always yields the row
        return _device_from_row(row)

    async def devices_for_account(self, account: str) -> list[ApnsDevice]:
        return await self.list_devices(account)

    async def list_devices(self, account: str | None = None) -> list[ApnsDevice]:
        rows = await self._fetch(
            """SELECT * FROM apns_devices WHERE ($1::text IS NULL OR account = $1)
               ORDER BY account, aps_account_id, device_token""",
            account,
        )
        return [_device_from_row(r) for r in rows]

    async def remove_device(self, account: str, aps_account_id: str | None, device_token: str) -> int:
        return await self._modify(
            """DELETE FROM apns_devices
               WHERE account = $1 AND ($2::text IS NULL OR aps_account_id = $2) AND device_token = $3""",
            account,
            aps_account_id,
            device_token.lower(),
        )

    async def remove_device_token(self, device_token: str, registered_before: float | None = None) -> int:
        return await self._modify(
            """DELETE FROM apns_devices
               WHERE device_token = $1 AND ($2::double precision IS NULL OR last_registered < $2)""",
            device_token.lower(),
            registered_before,
        )

    async def expire_devices(self, not_registered_since: float) -> int:
        return await self._modify("DELETE FROM apns_devices WHERE last_registered < $1", not_registered_since)

    # --- WebPush subscriptions ----------------------------------------------
    async def put_subscription(self, sub: WebPushSubscription) -> None:
        now = time.time()
        endpoint = self._vault.encrypt(sub.endpoint.encode(), endpoint_aad(sub.account, sub.sub_id))
        auth = self._vault.encrypt(sub.auth.encode(), auth_aad(sub.account, sub.sub_id))
        async with self._in_call_order(("subscription", sub.account, sub.sub_id)):
            await self._modify(
                """INSERT INTO webpush_subscriptions (account, sub_id, endpoint, p256dh, auth, vapid_key_id,
                   active, ack_token_hash, ack_expires, silenced_until, silenced_session, want_changes,
                   created, updated, last_success, failures)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
               ON CONFLICT (account, sub_id) DO UPDATE SET
                   endpoint = excluded.endpoint, p256dh = excluded.p256dh, auth = excluded.auth,
                   vapid_key_id = excluded.vapid_key_id, active = excluded.active,
                   ack_token_hash = excluded.ack_token_hash, ack_expires = excluded.ack_expires,
                   silenced_until = excluded.silenced_until, silenced_session = excluded.silenced_session,
                   want_changes = excluded.want_changes,
                   -- a replacement that does not say when it was created keeps the original time
                   created = CASE WHEN $17::boolean THEN excluded.created ELSE webpush_subscriptions.created END,
                   updated = excluded.updated, last_success = excluded.last_success,
                   failures = excluded.failures""",
                sub.account,
                sub.sub_id,
                endpoint,
                sub.p256dh,
                auth,
                sub.vapid_key_id,
                bool(sub.active),
                sub.ack_token_hash,
                sub.ack_expires,
                sub.silenced_until,
                sub.silenced_session,
                bool(sub.want_changes),
                sub.created or now,
                sub.updated or now,
                sub.last_success,
                sub.failures,
                bool(sub.created),
            )

    async def get_subscription(self, account: str, sub_id: str) -> WebPushSubscription | None:
        row = await self._fetchrow(
            "SELECT * FROM webpush_subscriptions WHERE account = $1 AND sub_id = $2", account, sub_id
        )
        return None if row is None else self._subscription_from_row(row)

    async def subscriptions_for_account(self, account: str) -> list[WebPushSubscription]:
        return await self.list_subscriptions(account)

    async def list_subscriptions(self, account: str | None = None) -> list[WebPushSubscription]:
        rows = await self._fetch(
            """SELECT * FROM webpush_subscriptions WHERE ($1::text IS NULL OR account = $1)
               ORDER BY account, created, sub_id""",
            account,
        )
        return [self._subscription_from_row(r) for r in rows]

    async def delete_subscription(self, account: str, sub_id: str) -> bool:
        count = await self._modify(
            "DELETE FROM webpush_subscriptions WHERE account = $1 AND sub_id = $2", account, sub_id
        )
        return count > 0

    async def count_subscriptions(self, account: str) -> int:
        value = await self._run(
            lambda conn: conn.fetchval("SELECT count(*) FROM webpush_subscriptions WHERE account = $1", account)
        )
        return int(value or 0)

    async def find_subscription_by_ack(self, account: str, token_hash: bytes) -> WebPushSubscription | None:
        row = await self._fetchrow(
            "SELECT * FROM webpush_subscriptions WHERE account = $1 AND ack_token_hash = $2 LIMIT 1",
            account,
            token_hash,
        )
        return None if row is None else self._subscription_from_row(row)

    async def expire_inactive_subscriptions(self, now: float) -> int:
        return await self._modify(
            """DELETE FROM webpush_subscriptions
               WHERE NOT active AND ack_expires IS NOT NULL AND ack_expires <= $1""",
            now,
        )

    async def clear_session_silences(self, session_id: str) -> int:
        return await self._modify(
            "UPDATE webpush_subscriptions SET silenced_session = NULL WHERE silenced_session = $1", session_id
        )

    def _subscription_from_row(self, row: asyncpg.Record) -> WebPushSubscription:
        return subscription_from_row(row, self._vault)  # type: ignore[arg-type]

    # --- credentials ----------------------------------------------------------
    async def put_credential(self, cred: StoredCredential) -> None:
        secret = self._vault.encrypt(cred.secret.encode(), credential_aad(cred.account))
        async with self._in_call_order(("credential", cred.account)):
            await self._modify(
                """INSERT INTO credentials (account, login, secret, stale, updated) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (account) DO UPDATE SET login = excluded.login, secret = excluded.secret,
                   stale = excluded.stale, updated = excluded.updated""",
                cred.account,
                cred.login,
                secret,
                bool(cred.stale),
                cred.updated or time.time(),
            )

    async def get_credential(self, account: str) -> StoredCredential | None:
        row = await self._fetchrow("SELECT * FROM credentials WHERE account = $1", account)
        if row is None:
            return None
        return credential_from_row(row, self._vault)  # type: ignore[arg-type]  # VaultError propagates

    async def mark_credential_stale(self, account: str) -> None:
        await self._modify("UPDATE credentials SET stale = true, updated = $1 WHERE account = $2", time.time(), account)

    async def delete_credential(self, account: str) -> None:
        await self._modify("DELETE FROM credentials WHERE account = $1", account)

    # --- watch state ------------------------------------------------------------
    async def get_mailbox_state(self, account: str, mailbox: str) -> MailboxState | None:
        row = await self._fetchrow("SELECT * FROM mailbox_state WHERE account = $1 AND mailbox = $2", account, mailbox)
        if row is None:
            return None
        return mailbox_state_from_row(row)  # type: ignore[arg-type]

    async def put_mailbox_state(self, state: MailboxState) -> None:
        async with self._in_call_order(("mailbox_state", state.account, state.mailbox)):
            await self._modify(
                """INSERT INTO mailbox_state (account, mailbox, uidvalidity, uidnext, highestmodseq, updated)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (account, mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity,
                   uidnext = excluded.uidnext, highestmodseq = excluded.highestmodseq,
                   updated = excluded.updated""",
                state.account,
                state.mailbox,
                state.uidvalidity,
                state.uidnext,
                state.highestmodseq,
                state.updated or time.time(),
            )

    async def delete_mailbox_states(self, account: str) -> None:
        await self._modify("DELETE FROM mailbox_state WHERE account = $1", account)

    # --- accounts -----------------------------------------------------------------
    async def accounts_with_registrations(self) -> list[str]:
        rows = await self._fetch(
            """SELECT account FROM apns_devices
               UNION SELECT account FROM webpush_subscriptions WHERE active
               ORDER BY account"""
        )
        return [r["account"] for r in rows]

    # --- VAPID key metadata -----------------------------------------------------
    async def vapid_keys(self) -> list[VapidKey]:
        rows = await self._fetch("SELECT * FROM vapid_keys ORDER BY created, key_id")
        return [vapid_key_from_row(r) for r in rows]  # type: ignore[arg-type]

    async def add_vapid_key(self, key: VapidKey, make_current: bool = True) -> None:
        """Insert (or update by key_id).  ``key.current`` is ignored: ``make_current`` decides.

        The first key always becomes current, so there is exactly one current
        key as soon as there is any.  Nodes changing keys at once are
        serialised by an advisory lock (otherwise both could find "no current
        key" and one would fail on the unique index).
        """
        async with self._connection(transaction=True) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _VAPID_LOCK_KEY)
            if make_current:
                await conn.execute("UPDATE vapid_keys SET current = false WHERE current AND key_id <> $1", key.key_id)
                current = True
            else:
                other = await conn.fetchval("SELECT key_id FROM vapid_keys WHERE current AND key_id <> $1", key.key_id)
                current = other is None
            await conn.execute(
                """INSERT INTO vapid_keys (key_id, public_key, private_key_path, created, current)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (key_id) DO UPDATE SET public_key = excluded.public_key,
                       private_key_path = excluded.private_key_path, created = excluded.created,
                       current = excluded.current""",
                key.key_id,
                key.public_key,
                key.private_key_path,
                key.created or time.time(),
                current,
            )


def _device_from_row(row: asyncpg.Record) -> ApnsDevice:
    return device_from_row(row)  # type: ignore[arg-type]
