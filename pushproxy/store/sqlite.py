"""The embedded SQLite back end (aiosqlite: one connection on its own thread).

Durability: WAL with ``synchronous=FULL``, and every write runs in its own
``BEGIN IMMEDIATE ... COMMIT`` before the coroutine returns.  All operations
on the shared connection are serialised by an asyncio lock, because a
statement issued while another coroutine's transaction is open would silently
join (and possibly be rolled back with) that transaction.

Secrets are encrypted with the vault; the associated data names the row, so a
blob copied into another row does not decrypt.  Push endpoints are capability
URLs (whoever knows one can push to that browser), so they are encrypted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

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
from pushproxy.store.vault import Vault

log = logging.getLogger(__name__)

MEMORY = ":memory:"
BUSY_TIMEOUT_MS = 5000
PING_TIMEOUT = 5.0


class StoreSchemaError(Exception):
    """The database cannot be used by this version of the code (e.g. it is newer)."""


# Schema migrations: step N brings the database from user_version N-1 to N.
# Never edit a released step; append a new one.
MIGRATIONS: list[list[str]] = [
    # 1: initial schema
    [
        """CREATE TABLE apns_devices (
            account TEXT NOT NULL,
            aps_account_id TEXT NOT NULL,
            device_token TEXT NOT NULL,
            subtopic TEXT NOT NULL,
            version INTEGER NOT NULL,
            mailboxes TEXT NOT NULL,            -- JSON list of mailbox names
            first_registered REAL NOT NULL,
            last_registered REAL NOT NULL,
            PRIMARY KEY (account, aps_account_id, device_token)
        )""",
        "CREATE INDEX apns_devices_by_token ON apns_devices (device_token)",
        "CREATE INDEX apns_devices_by_last_registered ON apns_devices (last_registered)",
        """CREATE TABLE webpush_subscriptions (
            account TEXT NOT NULL,
            sub_id TEXT NOT NULL,
            endpoint BLOB NOT NULL,             -- vault-encrypted
            p256dh TEXT NOT NULL,
            auth BLOB NOT NULL,                 -- vault-encrypted
            vapid_key_id TEXT NOT NULL,
            active INTEGER NOT NULL,
            ack_token_hash BLOB,
            ack_expires REAL,
            silenced_until REAL,
            silenced_session TEXT,
            want_changes INTEGER NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            last_success REAL,
            failures INTEGER NOT NULL,
            PRIMARY KEY (account, sub_id)
        )""",
        "CREATE INDEX webpush_by_ack ON webpush_subscriptions (account, ack_token_hash)",
        "CREATE INDEX webpush_by_session ON webpush_subscriptions (silenced_session)",
        "CREATE INDEX webpush_by_ack_expires ON webpush_subscriptions (active, ack_expires)",
        """CREATE TABLE credentials (
            account TEXT PRIMARY KEY,
            login TEXT NOT NULL,
            secret BLOB NOT NULL,               -- vault-encrypted, aad names the account
            stale INTEGER NOT NULL,
            updated REAL NOT NULL
        )""",
        """CREATE TABLE mailbox_state (
            account TEXT NOT NULL,
            mailbox TEXT NOT NULL,
            uidvalidity INTEGER NOT NULL,
            uidnext INTEGER NOT NULL,
            highestmodseq INTEGER,
            updated REAL NOT NULL,
            PRIMARY KEY (account, mailbox)
        )""",
        """CREATE TABLE vapid_keys (
            key_id TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,
            private_key_path TEXT NOT NULL,
            created REAL NOT NULL,
            current INTEGER NOT NULL
        )""",
        # At most one current key, enforced by the database.
        "CREATE UNIQUE INDEX vapid_keys_one_current ON vapid_keys (current) WHERE current = 1",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


class SqliteStore(Store):
    """:class:`Store` on one SQLite file (or ``:memory:``)."""

    def __init__(self, path: Path, vault: Vault) -> None:
        self._path = path
        self._vault = vault
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) at open, to notice deletion

    @property
    def _in_memory(self) -> bool:
        return str(self._path) == MEMORY

    # --- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        if self._conn is not None:
            return
        if not self._in_memory:
            self._file_id = await asyncio.to_thread(_prepare_db_file, self._path)
        conn = await aiosqlite.connect(str(self._path), isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not self._in_memory:
                async with conn.execute("PRAGMA journal_mode = WAL") as cur:
                    row = await cur.fetchone()
                if row is None or str(row[0]).lower() != "wal":
                    log.warning("SQLite store %s: could not enable WAL mode", self._path)
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await self._migrate(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute("BEGIN IMMEDIATE")  # also serialises against another process migrating
        try:
            async with conn.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StoreSchemaError(
                    f"database {self._path} has schema version {current}, but this version of pushproxy "
                    f"only knows up to {SCHEMA_VERSION}: upgrade pushproxy (downgrades are not supported)"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {version}")
            await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await conn.execute("ROLLBACK")
            raise
        if current < SCHEMA_VERSION:
            log.info("SQLite store %s: schema migrated from version %d to %d", self._path, current, SCHEMA_VERSION)

    async def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        async with self._lock:
            self._conn = None
            await conn.close()

    async def ping(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                async with conn.execute("SELECT count(*) FROM sqlite_master") as cur:
                    await cur.fetchone()
                if self._file_id is not None:
                    # An open connection keeps working on a deleted file: compare identities.
                    st = await asyncio.to_thread(os.stat, self._path)
                    if (st.st_dev, st.st_ino) != self._file_id:
                        return False
        except Exception:  # ping reports, never raises: anything wrong means "not ready"
            return False
        return True

    # --- connection helpers ----------------------------------------------------
    def _require(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreUnavailable("the store is not open")
        return self._conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            conn = self._require()
            try:
                yield conn
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"SQLite: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One committed transaction; the commit is durable when the block is left."""
        async with self._lock:
            conn = self._require()
            try:
                if conn.in_transaction:  # left over by a cancelled rollback
                    await conn.execute("ROLLBACK")
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise StoreUnavailable(f"SQLite: {exc}") from exc
                raise

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._read() as conn:
            return list(await conn.execute_fetchall(sql, tuple(params)))

    async def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def _modify(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one write statement in its own committed transaction; rows changed."""
        async with self._write() as conn:
            cur = await conn.execute(sql, tuple(params))
            count = cur.rowcount
            await cur.close()
        return count

    # --- APNs devices --------------------------------------------------------
    async def upsert_device(self, device: ApnsDevice) -> ApnsDevice:
        last = device.last_registered or time.time()
        first = device.first_registered or last
        async with self._write() as conn:
            async with conn.execute(
                """INSERT INTO apns_devices (account, aps_account_id, device_token, subtopic, version,
                                             mailboxes, first_registered, last_registered)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (account, aps_account_id, device_token) DO UPDATE SET
                       subtopic = excluded.subtopic,
                       version = excluded.version,
                       mailboxes = excluded.mailboxes,
                       last_registered = excluded.last_registered
                   RETURNING *""",
                (
                    device.account,
                    device.aps_account_id,
                    device.device_token.lower(),
                    device.subtopic,
                    device.version,
                    json.dumps(list(device.mailboxes)),
                    first,
                    last,
                ),
            ) as cur:
                row = await cur.fetchone()
        assert row is not None  # RETURNING always yields the row
        return _device_from_row(row)

    async def devices_for_account(self, account: str) -> list[ApnsDevice]:
        return await self.list_devices(account)

    async def list_devices(self, account: str | None = None) -> list[ApnsDevice]:
        # account IS NULL selects every row when no account is given (one static query).
        rows = await self._fetchall(
            """SELECT * FROM apns_devices WHERE (?1 IS NULL OR account = ?1)
               ORDER BY account, aps_account_id, device_token""",
            (account,),
        )
        return [_device_from_row(r) for r in rows]

    async def remove_device(self, account: str, aps_account_id: str | None, device_token: str) -> int:
        if aps_account_id is None:
            return await self._modify(
                "DELETE FROM apns_devices WHERE account = ? AND device_token = ?",
                (account, device_token.lower()),
            )
        return await self._modify(
            "DELETE FROM apns_devices WHERE account = ? AND aps_account_id = ? AND device_token = ?",
            (account, aps_account_id, device_token.lower()),
        )

    async def remove_device_token(self, device_token: str, registered_before: float | None = None) -> int:
        if registered_before is None:
            return await self._modify("DELETE FROM apns_devices WHERE device_token = ?", (device_token.lower(),))
        return await self._modify(
            "DELETE FROM apns_devices WHERE device_token = ? AND last_registered < ?",
            (device_token.lower(), registered_before),
        )

    async def expire_devices(self, not_registered_since: float) -> int:
        return await self._modify("DELETE FROM apns_devices WHERE last_registered < ?", (not_registered_since,))

    # --- WebPush subscriptions ----------------------------------------------
    async def put_subscription(self, sub: WebPushSubscription) -> None:
        now = time.time()
        endpoint = self._vault.encrypt(sub.endpoint.encode(), endpoint_aad(sub.account, sub.sub_id))
        auth = self._vault.encrypt(sub.auth.encode(), auth_aad(sub.account, sub.sub_id))
        async with self._write() as conn:
            await conn.execute(
                """INSERT INTO webpush_subscriptions (account, sub_id, endpoint, p256dh, auth, vapid_key_id,
                       active, ack_token_hash, ack_expires, silenced_until, silenced_session, want_changes,
                       created, updated, last_success, failures)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (account, sub_id) DO UPDATE SET
                       endpoint = excluded.endpoint, p256dh = excluded.p256dh, auth = excluded.auth,
                       vapid_key_id = excluded.vapid_key_id, active = excluded.active,
                       ack_token_hash = excluded.ack_token_hash, ack_expires = excluded.ack_expires,
                       silenced_until = excluded.silenced_until, silenced_session = excluded.silenced_session,
                       want_changes = excluded.want_changes,
                       -- a replacement that does not say when it was created keeps the original time
                       created = CASE WHEN ? THEN excluded.created ELSE webpush_subscriptions.created END,
                       updated = excluded.updated, last_success = excluded.last_success,
                       failures = excluded.failures""",
                (
                    sub.account,
                    sub.sub_id,
                    endpoint,
                    sub.p256dh,
                    auth,
                    sub.vapid_key_id,
                    int(sub.active),
                    sub.ack_token_hash,
                    sub.ack_expires,
                    sub.silenced_until,
                    sub.silenced_session,
                    int(sub.want_changes),
                    sub.created or now,
                    sub.updated or now,
                    sub.last_success,
                    sub.failures,
                    int(bool(sub.created)),
                ),
            )

    async def get_subscription(self, account: str, sub_id: str) -> WebPushSubscription | None:
        row = await self._fetchone(
            "SELECT * FROM webpush_subscriptions WHERE account = ? AND sub_id = ?", (account, sub_id)
        )
        return None if row is None else self._subscription_from_row(row)

    async def subscriptions_for_account(self, account: str) -> list[WebPushSubscription]:
        return await self.list_subscriptions(account)

    async def list_subscriptions(self, account: str | None = None) -> list[WebPushSubscription]:
        rows = await self._fetchall(
            """SELECT * FROM webpush_subscriptions WHERE (?1 IS NULL OR account = ?1)
               ORDER BY account, created, sub_id""",
            (account,),
        )
        return [self._subscription_from_row(r) for r in rows]

    async def delete_subscription(self, account: str, sub_id: str) -> bool:
        count = await self._modify(
            "DELETE FROM webpush_subscriptions WHERE account = ? AND sub_id = ?", (account, sub_id)
        )
        return count > 0

    async def count_subscriptions(self, account: str) -> int:
        row = await self._fetchone("SELECT count(*) FROM webpush_subscriptions WHERE account = ?", (account,))
        return int(row[0]) if row else 0

    async def find_subscription_by_ack(self, account: str, token_hash: bytes) -> WebPushSubscription | None:
        row = await self._fetchone(
            "SELECT * FROM webpush_subscriptions WHERE account = ? AND ack_token_hash = ?",
            (account, token_hash),
        )
        return None if row is None else self._subscription_from_row(row)

    async def expire_inactive_subscriptions(self, now: float) -> int:
        return await self._modify(
            """DELETE FROM webpush_subscriptions
               WHERE active = 0 AND ack_expires IS NOT NULL AND ack_expires <= ?""",
            (now,),
        )

    async def clear_session_silences(self, session_id: str) -> int:
        return await self._modify(
            "UPDATE webpush_subscriptions SET silenced_session = NULL WHERE silenced_session = ?",
            (session_id,),
        )

    def _subscription_from_row(self, row: sqlite3.Row) -> WebPushSubscription:
        return subscription_from_row(row, self._vault)  # type: ignore[arg-type]

    # --- credentials ----------------------------------------------------------
    async def put_credential(self, cred: StoredCredential) -> None:
        secret = self._vault.encrypt(cred.secret.encode(), credential_aad(cred.account))
        await self._modify(
            """INSERT INTO credentials (account, login, secret, stale, updated) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (account) DO UPDATE SET login = excluded.login, secret = excluded.secret,
                   stale = excluded.stale, updated = excluded.updated""",
            (cred.account, cred.login, secret, int(cred.stale), cred.updated or time.time()),
        )

    async def get_credential(self, account: str) -> StoredCredential | None:
        row = await self._fetchone("SELECT * FROM credentials WHERE account = ?", (account,))
        if row is None:
            return None
        return credential_from_row(row, self._vault)  # type: ignore[arg-type]  # VaultError propagates

    async def mark_credential_stale(self, account: str) -> None:
        await self._modify("UPDATE credentials SET stale = 1, updated = ? WHERE account = ?", (time.time(), account))

    async def delete_credential(self, account: str) -> None:
        await self._modify("DELETE FROM credentials WHERE account = ?", (account,))

    # --- watch state ------------------------------------------------------------
    async def get_mailbox_state(self, account: str, mailbox: str) -> MailboxState | None:
        row = await self._fetchone("SELECT * FROM mailbox_state WHERE account = ? AND mailbox = ?", (account, mailbox))
        if row is None:
            return None
        return mailbox_state_from_row(row)  # type: ignore[arg-type]

    async def put_mailbox_state(self, state: MailboxState) -> None:
        await self._modify(
            """INSERT INTO mailbox_state (account, mailbox, uidvalidity, uidnext, highestmodseq, updated)
               VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (account, mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity,
                   uidnext = excluded.uidnext, highestmodseq = excluded.highestmodseq,
                   updated = excluded.updated""",
            (
                state.account,
                state.mailbox,
                state.uidvalidity,
                state.uidnext,
                state.highestmodseq,
                state.updated or time.time(),
            ),
        )

    async def delete_mailbox_states(self, account: str) -> None:
        await self._modify("DELETE FROM mailbox_state WHERE account = ?", (account,))

    # --- accounts -----------------------------------------------------------------
    async def accounts_with_registrations(self) -> list[str]:
        rows = await self._fetchall(
            """SELECT account FROM apns_devices
               UNION SELECT account FROM webpush_subscriptions WHERE active = 1
               ORDER BY account"""
        )
        return [r[0] for r in rows]

    # --- VAPID key metadata -----------------------------------------------------
    async def vapid_keys(self) -> list[VapidKey]:
        rows = await self._fetchall("SELECT * FROM vapid_keys ORDER BY created, key_id")
        return [vapid_key_from_row(r) for r in rows]  # type: ignore[arg-type]

    async def add_vapid_key(self, key: VapidKey, make_current: bool = True) -> None:
        """Insert (or update by key_id).  ``key.current`` is ignored: ``make_current`` decides.

        The first key always becomes current, so there is exactly one current
        key as soon as there is any.
        """
        async with self._write() as conn:
            if make_current:
                await conn.execute("UPDATE vapid_keys SET current = 0 WHERE current = 1 AND key_id != ?", (key.key_id,))
                current = 1
            else:
                async with conn.execute(
                    "SELECT key_id FROM vapid_keys WHERE current = 1 AND key_id != ?", (key.key_id,)
                ) as cur:
                    current = 0 if await cur.fetchone() else 1
            await conn.execute(
                """INSERT INTO vapid_keys (key_id, public_key, private_key_path, created, current)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (key_id) DO UPDATE SET public_key = excluded.public_key,
                       private_key_path = excluded.private_key_path, created = excluded.created,
                       current = excluded.current""",
                (key.key_id, key.public_key, key.private_key_path, key.created or time.time(), current),
            )


def _device_from_row(row: sqlite3.Row) -> ApnsDevice:
    return device_from_row(row)  # type: ignore[arg-type]


def _prepare_db_file(path: Path) -> tuple[int, int]:
    """Create the directory (0700) and an empty database file (0600) when missing; its identity."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # Created here rather than by SQLite so that the mode is 0600 from the first instant;
        # SQLite gives the -wal and -shm files the mode of the database file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "SQLite store %s has mode %o: group/other can read registrations; run chmod 600 on it",
            path,
            stat.S_IMODE(st.st_mode),
        )
    return st.st_dev, st.st_ino
