"""The base of the SQL store: the back-end interface, query helpers, registration-change notices.

Queries use PostgreSQL's numbered placeholders and the common subset of
SQLite and PostgreSQL; see :mod:`pushproxy.store.dialect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol, TypeVar

from pushproxy.store.dialect import Dialect
from pushproxy.store.errors import STORE_BUSY, StoreUnavailable
from pushproxy.store.health import StoreHealth
from pushproxy.store.records import Row
from pushproxy.store.regview import RegistrationView
from pushproxy.store.schema import SqlConn
from pushproxy.store.vault import Vault, VaultError

log = logging.getLogger("pushproxy.store")

T = TypeVar("T")


class _OfAnAccount(Protocol):
    @property
    def account(self) -> str: ...


A = TypeVar("A", bound=_OfAnAccount)  # a registration record: it belongs to an account

ORDER_TIMEOUT = 15.0  # waiting for this node's earlier writes to the same row

# The channel on which every node hears that an account's registrations changed (PostgreSQL NOTIFY).
REGISTRATIONS_CHANNEL = "pushproxy_registrations"
_MAX_NOTIFY_PAYLOAD = 7000  # PostgreSQL allows < 8000 bytes; longer names: an empty payload means "all"

RegistrationListener = Callable[[str | None], None]


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


class SqlBase:
    """State and helpers shared by the query groups of :class:`~pushproxy.store.sql.SqlStore`."""

    def __init__(self, backend: SqlBackend, vault: Vault) -> None:
        self._backend = backend
        self._vault = vault
        # One FIFO lock per row being upserted (dropped when nobody holds or waits for it).
        self._row_locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = weakref.WeakValueDictionary()
        self._registration_listeners: list[RegistrationListener] = []
        # Reachability (one log line per outage, pushproxy_store_up) and what the senders read
        # while the store is away (pushproxy.store.health, pushproxy.store.regview).
        self.health = StoreHealth(self._backend.ping, quiet=hasattr(self._backend, "faults"))
        self.registrations = RegistrationView(self.health, notified=self._backend.dialect.notify is not None)

    @property
    def backend(self) -> SqlBackend:
        return self._backend

    @property
    def dialect(self) -> Dialect:
        return self._backend.dialect

    @property
    def shared_by_nodes(self) -> bool:
        return self._backend.dialect.notify is not None  # the dialect that tells other nodes about changes

    def add_registration_listener(self, listener: RegistrationListener) -> None:
        """Call ``listener(account)`` after every committed change of an account's registrations
        (or of its stored credential, which can make it watchable).

        This covers every writer on this node: the IMAP extensions, the
        senders pruning dead devices and subscriptions, housekeeping.  On
        PostgreSQL the same change is also NOTIFYed on
        :data:`REGISTRATIONS_CHANNEL` to every node, in the same transaction.
        """
        self._registration_listeners.append(listener)

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
            raise StoreUnavailable("timed out waiting for earlier writes to the same row", STORE_BUSY) from exc
        try:
            yield
        finally:
            lock.release()

    async def _change_registrations(self, sql: str, *args: Any, account: str | None = None) -> int:
        """One write that adds, changes or removes registrations; rows changed.

        With ``account`` the statement changes that account's rows; without,
        it must return the changed rows' ``account`` (``RETURNING account``).
        """
        async with self._backend.write() as conn:
            if account is None:
                rows = await conn.fetch(sql, *args)
                count, accounts = len(rows), {r["account"] for r in rows}
            else:
                count = await conn.execute(sql, *args)
                accounts = {account} if count else set()
            await self._notify(conn, accounts)
        self._registrations_changed(accounts)
        return count

    async def _notify(self, conn: SqlConn, accounts: Iterable[str]) -> None:
        """Tell the other nodes, at commit (inside the caller's write transaction)."""
        if self.dialect.notify is None:
            return
        for account in accounts:
            payload = account if len(account.encode()) <= _MAX_NOTIFY_PAYLOAD else ""
            await conn.execute(self.dialect.notify, REGISTRATIONS_CHANNEL, payload)

    def _registrations_changed(self, accounts: Iterable[str]) -> None:
        for account in accounts:
            self.registrations.changed(account)
            for listener in self._registration_listeners:
                try:
                    listener(account)
                except Exception:  # a listener's bug must not fail the write that already committed
                    log.exception("registration listener failed")


class Queries:
    """The queries of an extension's tables, on a store's connections: ``store.queries(cls)``.

    A subclass writes its queries once for every back end, with the store's
    helpers below; it keeps no state of its own (row locks and registration
    listeners are the store's, shared by every group).
    """

    def __init__(self, store: SqlBase) -> None:
        self._backend = store.backend
        self._vault = store._vault
        self.dialect: Final = store.dialect
        self.shared_by_nodes: Final = store.shared_by_nodes
        self._fetch = store._fetch
        self._fetchone = store._fetchone
        self._modify = store._modify
        self._in_call_order = store._in_call_order
        self._change_registrations = store._change_registrations
        self._notify = store._notify
        self._registrations_changed = store._registrations_changed
        self._registrations = store.registrations

    # --- what every registration table (a row per account and device) has in common --------------
    # Its rows have ``account``, and those that name a push token ``token_hash`` and ``last_registered``.
    # The f-strings below insert only the caller's table and column names, never input.

    async def _listing(
        self, table: str, order_by: str, account: str | None, read: Callable[[Row, Vault], T], what: str
    ) -> list[T]:
        """``read`` of the table's rows of ``account`` (every account's with None) that decrypt, ordered."""
        rows = await self._fetch(
            # A NULL account selects every row (one static query).
            f"SELECT * FROM {table} WHERE (CAST($1 AS TEXT) IS NULL OR account = $1) ORDER BY {order_by}",  # noqa: S608
            account,
        )
        return self._readable(rows, read, what)

    async def _listing_of(
        self, table: str, order_by: str, accounts: Sequence[str], read: Callable[[Row, Vault], A], what: str
    ) -> dict[str, list[A]]:
        """:meth:`_listing` of many accounts with one query: each account's readable rows, ordered."""
        rows = await self._fetch(
            f"SELECT * FROM {table} WHERE account IN {self.dialect.text_list(1)} ORDER BY {order_by}",  # noqa: S608
            json.dumps(list(accounts)),
        )
        by_account: dict[str, list[A]] = {account: [] for account in accounts}
        for record in self._readable(rows, read, what):
            by_account[record.account].append(record)
        return by_account

    async def _forget_token(self, table: str, digest: bytes, registered_before: float | None) -> int:
        """The push service says the token is gone: every account's rows of it, unless registered again since."""
        return await self._change_registrations(
            f"""DELETE FROM {table}
                WHERE token_hash = $1 AND (CAST($2 AS DOUBLE PRECISION) IS NULL OR last_registered < $2)
                RETURNING account""",  # noqa: S608
            digest,
            registered_before,
        )

    async def _expire(self, table: str, key: str, not_registered_since: float, limit: int) -> int:
        """At most ``limit`` of the rows not registered again since ``not_registered_since`` (unix time),
        the oldest first; how many.  ``key``: the table's primary key columns.

        One batch of a housekeeping sweep (``store.housekeeping_batch``): what
        is left waits for the next batch, so the loop never handles (and tells
        the watchers about) every expired row of a table at once.
        """
        return await self._change_registrations(
            f"""DELETE FROM {table}
                WHERE last_registered < $1 AND ({key}) IN (
                    SELECT {key} FROM {table} WHERE last_registered < $1 ORDER BY last_registered LIMIT $2)
                RETURNING account""",  # noqa: S608
            not_registered_since,
            limit,
        )

    async def _count(self, table: str) -> int:
        """How many rows the table has, counted by the database (a gauge's census: nothing read or decrypted)."""
        row = await self._fetchone(f"SELECT COUNT(*) AS n FROM {table}")  # noqa: S608
        return 0 if row is None else int(row["n"])

    def _readable(self, rows: Iterable[Row], read: Callable[[Row, Vault], T], what: str) -> list[T]:
        return readable(rows, read, self._vault, what)


def readable(rows: Iterable[Row], read: Callable[[Row, Vault], T], vault: Vault, what: str) -> list[T]:
    """``read`` of each row that decrypts; the others are skipped with one log line naming ``what``.

    One unreadable row (tampered, or written under another key, which the
    factory refuses at start) must not stop the pushes of the rest.
    """
    records: list[T] = []
    skipped = 0
    for row in rows:
        try:
            records.append(read(row, vault))
        except VaultError:
            skipped += 1
    if skipped:
        log.warning("skipped %d %s that do not decrypt", skipped, what)
    return records
