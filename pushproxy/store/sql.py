"""The SQL store: every query written once, over a small back-end interface.

:class:`SqlStore` implements :class:`~pushproxy.store.base.Store` on a
:class:`SqlBackend`, which provides connections (a read, a committed write
transaction, the exclusive migration transaction) and a
:class:`~pushproxy.store.dialect.Dialect` for what cannot be written the same
way in SQLite and PostgreSQL.  The back ends are
:mod:`pushproxy.store.sqlite` and :mod:`pushproxy.store.postgres`.

Secrets are encrypted with the vault; the associated data names the row, so
a blob copied into another row does not decrypt.  Push endpoints are
capability URLs and device tokens address a user's phone, so both are
encrypted too; device tokens are found by a keyed hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Hashable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from pushproxy.store.base import (
    ApnsDevice,
    MailboxState,
    Store,
    StoredCredential,
    StoreUnavailable,
    VapidKey,
    WebPushSubscription,
)
from pushproxy.store.dialect import Dialect
from pushproxy.store.records import (
    Row,
    auth_aad,
    credential_aad,
    credential_from_row,
    device_from_row,
    endpoint_aad,
    mailbox_state_from_row,
    subscription_from_row,
    token_aad,
    token_hash,
    vapid_key_from_row,
)
from pushproxy.store.schema import SCHEMA_VERSION, SchemaPart, SqlConn, migrate
from pushproxy.store.tables import DEFAULT_PARTS
from pushproxy.store.vault import Vault, VaultError

log = logging.getLogger(__name__)

ORDER_TIMEOUT = 15.0  # waiting for this node's earlier writes to the same row

# Advisory lock key serialising VAPID key changes across nodes (spells "pushvapi").
_VAPID_LOCK_KEY = 0x7075736876617069


class SqlBackend(ABC):
    """Connections to one database, and its dialect."""

    dialect: Dialect

    @abstractmethod
    def describe(self) -> str:
        """What the database is, for messages (never with a password)."""

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool: ...

    @property
    @abstractmethod
    def is_open(self) -> bool: ...

    @abstractmethod
    def read(self) -> AbstractAsyncContextManager[SqlConn]:
        """A connection for reads (it sees every committed write)."""

    @abstractmethod
    def write(self) -> AbstractAsyncContextManager[SqlConn]:
        """One transaction, committed (durably) when the block is left without an exception."""

    @abstractmethod
    def migration(self) -> AbstractAsyncContextManager[tuple[SqlConn, int]]:
        """A write transaction that excludes every other process migrating; yields the legacy version."""

    @abstractmethod
    async def set_legacy_version(self, conn: SqlConn, version: int) -> None: ...


class SqlStore(Store):
    """:class:`Store` on any :class:`SqlBackend`."""

    def __init__(self, backend: SqlBackend, vault: Vault, parts: Sequence[SchemaPart] = DEFAULT_PARTS) -> None:
        self._backend = backend
        self._vault = vault
        self._parts = tuple(parts)
        self._open_lock = asyncio.Lock()
        # One FIFO lock per row being upserted (dropped when nobody holds or waits for it).
        self._row_locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = weakref.WeakValueDictionary()

    @property
    def backend(self) -> SqlBackend:
        return self._backend

    @property
    def dialect(self) -> Dialect:
        return self._backend.dialect

    # --- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        async with self._open_lock:
            if self._backend.is_open:
                return
            await self._backend.connect()
            try:
                async with self._backend.migration() as (conn, legacy):
                    bump = await migrate(conn, self.dialect, self._vault, self._parts, legacy, self.describe())
                    if bump is not None:
                        await self._backend.set_legacy_version(conn, SCHEMA_VERSION)
            except BaseException:
                await self._backend.close()
                raise

    def describe(self) -> str:
        return self._backend.describe()

    async def close(self) -> None:
        await self._backend.close()

    async def ping(self) -> bool:
        return await self._backend.ping()

    # --- helpers ----------------------------------------------------------------
    async def _fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._backend.read() as conn:
            return await conn.fetch(sql, *args)

    async def _fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = await self._fetch(sql, *args)
        return rows[0] if rows else None

    async def _modify(self, sql: str, *args: Any) -> int:
        """One write statement in its own committed transaction; rows changed."""
        async with self._backend.write() as conn:
            return await conn.execute(sql, *args)

    @contextlib.asynccontextmanager
    async def _in_call_order(self, row_key: Hashable) -> AsyncIterator[None]:
        """Apply this node's writes to one row in the order they were called.

        PostgreSQL runs pooled statements concurrently, so two upserts of the
        same row could otherwise commit in either order.  That matters: a
        watcher's mailbox state must never go back to an older UIDNEXT, and a
        device re-registration must not be overwritten by an earlier one.
        Writes to different rows still run in parallel.  Across nodes, commit
        order rules.
        """
        lock = self._row_locks.get(row_key)
        if lock is None:
            lock = self._row_locks[row_key] = asyncio.Lock()
        try:
            async with asyncio.timeout(ORDER_TIMEOUT):
                await lock.acquire()
        except TimeoutError as exc:
            raise StoreUnavailable("timed out waiting for earlier writes to the same row") from exc
        try:
            yield
        finally:
            lock.release()

    # --- APNs devices --------------------------------------------------------
    async def upsert_device(self, device: ApnsDevice) -> ApnsDevice:
        last = device.last_registered or time.time()
        first = device.first_registered or last
        token = device.device_token.lower()
        digest = token_hash(self._vault, token)
        secret = self._vault.encrypt(token.encode(), token_aad(device.account, device.aps_account_id))
        async with self._in_call_order(("device", device.account, device.aps_account_id, digest)):
            async with self._backend.write() as conn:
                (row,) = await conn.fetch(
                    # The f-string only inserts the dialect's JSON placeholder, no input.
                    f"""INSERT INTO apns_devices (account, aps_account_id, token_hash, device_token, subtopic,
                            version, mailboxes, first_registered, last_registered)
                        VALUES ($1, $2, $3, $4, $5, $6, {self.dialect.json_param(7)}, $8, $9)
                        ON CONFLICT (account, aps_account_id, token_hash) DO UPDATE SET
                            subtopic = excluded.subtopic,
                            version = excluded.version,
                            mailboxes = excluded.mailboxes,
                            last_registered = excluded.last_registered
                        RETURNING *""",  # noqa: S608
                    device.account,
                    device.aps_account_id,
                    digest,
                    secret,
                    device.subtopic,
                    device.version,
                    json.dumps(list(device.mailboxes)),
                    first,
                    last,
                )
        return device_from_row(row, self._vault)

    async def devices_for_account(self, account: str) -> list[ApnsDevice]:
        return await self.list_devices(account)

    async def list_devices(self, account: str | None = None) -> list[ApnsDevice]:
        # A NULL account selects every row (one static query).
        rows = await self._fetch(
            """SELECT * FROM apns_devices WHERE (CAST($1 AS TEXT) IS NULL OR account = $1)
               ORDER BY account, aps_account_id, token_hash""",
            account,
        )
        return self._devices(rows)

    def _devices(self, rows: list[Row]) -> list[ApnsDevice]:
        """Rows that decrypt; the others are skipped with one log line.

        One unreadable row (tampered, or written under another key, which
        the factory refuses at start) must not stop the pushes of the rest.
        """
        devices: list[ApnsDevice] = []
        for row in rows:
            try:
                devices.append(device_from_row(row, self._vault))
            except VaultError:
                pass
        if len(devices) < len(rows):
            log.warning("skipped %d APNs registration(s) whose device token does not decrypt", len(rows) - len(devices))
        return devices

    async def remove_device(self, account: str, aps_account_id: str | None, device_token: str) -> int:
        return await self._modify(
            """DELETE FROM apns_devices
               WHERE account = $1 AND (CAST($2 AS TEXT) IS NULL OR aps_account_id = $2) AND token_hash = $3""",
            account,
            aps_account_id,
            token_hash(self._vault, device_token),
        )

    async def remove_device_token(self, device_token: str, registered_before: float | None = None) -> int:
        return await self._modify(
            """DELETE FROM apns_devices
               WHERE token_hash = $1 AND (CAST($2 AS DOUBLE PRECISION) IS NULL OR last_registered < $2)""",
            token_hash(self._vault, device_token),
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
                       created = CASE WHEN CAST($17 AS BOOLEAN) THEN excluded.created
                                      ELSE webpush_subscriptions.created END,
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
        row = await self._fetchone(
            "SELECT * FROM webpush_subscriptions WHERE account = $1 AND sub_id = $2", account, sub_id
        )
        return None if row is None else subscription_from_row(row, self._vault)

    async def subscriptions_for_account(self, account: str) -> list[WebPushSubscription]:
        return await self.list_subscriptions(account)

    async def list_subscriptions(self, account: str | None = None) -> list[WebPushSubscription]:
        rows = await self._fetch(
            """SELECT * FROM webpush_subscriptions WHERE (CAST($1 AS TEXT) IS NULL OR account = $1)
               ORDER BY account, created, sub_id""",
            account,
        )
        return [subscription_from_row(r, self._vault) for r in rows]

    async def delete_subscription(self, account: str, sub_id: str) -> bool:
        count = await self._modify(
            "DELETE FROM webpush_subscriptions WHERE account = $1 AND sub_id = $2", account, sub_id
        )
        return count > 0

    async def count_subscriptions(self, account: str) -> int:
        row = await self._fetchone("SELECT count(*) AS n FROM webpush_subscriptions WHERE account = $1", account)
        return int(row["n"]) if row else 0

    async def find_subscription_by_ack(self, account: str, token_hash: bytes) -> WebPushSubscription | None:
        row = await self._fetchone(
            "SELECT * FROM webpush_subscriptions WHERE account = $1 AND ack_token_hash = $2 LIMIT 1",
            account,
            token_hash,
        )
        return None if row is None else subscription_from_row(row, self._vault)

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
        row = await self._fetchone("SELECT * FROM credentials WHERE account = $1", account)
        return None if row is None else credential_from_row(row, self._vault)  # VaultError propagates

    async def mark_credential_stale(self, account: str) -> None:
        await self._modify("UPDATE credentials SET stale = TRUE, updated = $1 WHERE account = $2", time.time(), account)

    async def delete_credential(self, account: str) -> None:
        await self._modify("DELETE FROM credentials WHERE account = $1", account)

    # --- watch state ------------------------------------------------------------
    async def get_mailbox_state(self, account: str, mailbox: str) -> MailboxState | None:
        row = await self._fetchone("SELECT * FROM mailbox_state WHERE account = $1 AND mailbox = $2", account, mailbox)
        return None if row is None else mailbox_state_from_row(row)

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

    # --- keys shared by every node --------------------------------------------------
    async def claim_key_fingerprint(self, name: str, fingerprint: str) -> str:
        """Record ``fingerprint`` for ``name`` unless one is recorded; the recorded one."""
        async with self._backend.write() as conn:
            await conn.execute(
                """INSERT INTO key_fingerprints (name, fingerprint, created) VALUES ($1, $2, $3)
                   ON CONFLICT (name) DO NOTHING""",
                name,
                fingerprint,
                time.time(),
            )
            (row,) = await conn.fetch("SELECT fingerprint FROM key_fingerprints WHERE name = $1", name)
        return str(row["fingerprint"])

    # --- VAPID key metadata -----------------------------------------------------
    async def vapid_keys(self) -> list[VapidKey]:
        rows = await self._fetch("SELECT * FROM vapid_keys ORDER BY created, key_id")
        return [vapid_key_from_row(r) for r in rows]

    async def add_vapid_key(self, key: VapidKey, make_current: bool = True) -> None:
        """Insert (or update by key_id).  ``key.current`` is ignored: ``make_current`` decides.

        The first key always becomes current, so there is exactly one current
        key as soon as there is any.  Nodes changing keys at once are
        serialised (otherwise both could find "no current key" and one would
        fail on the unique index).
        """
        async with self._backend.write() as conn:
            if self.dialect.xact_lock is not None:
                await conn.execute(self.dialect.xact_lock, _VAPID_LOCK_KEY)
            if make_current:
                await conn.execute("UPDATE vapid_keys SET current = FALSE WHERE current AND key_id <> $1", key.key_id)
                current = True
            else:
                other = await conn.fetch("SELECT key_id FROM vapid_keys WHERE current AND key_id <> $1", key.key_id)
                current = not other
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
