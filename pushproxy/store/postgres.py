"""The PostgreSQL back end (asyncpg), for several proxy nodes sharing one database.

The queries are those of :class:`~pushproxy.store.sql.SqlStore`, shared with
SQLite; this module only provides pooled connections under deadlines.

Multi-node notes:

- Every node must load the same vault key file (``watch.vault_key_file``),
  or it cannot decrypt what another node stored (checked at start by the key
  fingerprint, see :mod:`pushproxy.store.factory`).
- Only VAPID key *metadata* is shared; the private key files stay local.
  Every node needs the same VAPID key file at the path recorded here.
- Schema migrations run in one transaction under a transaction-scoped
  advisory lock, so nodes starting together do not race: the second waits,
  then finds the schema current.

Durability: each write is its own committed transaction before the coroutine
returns; with PostgreSQL's default ``synchronous_commit = on`` that is on
disk.  Every await is bounded: a client-side deadline per operation plus a
server-side ``statement_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from pushproxy.store.base import StoreUnavailable
from pushproxy.store.dialect import POSTGRES
from pushproxy.store.records import Row
from pushproxy.store.schema import SCHEMA_VERSION, SchemaPart, SqlConn, StoreSchemaError
from pushproxy.store.sql import SqlBackend, SqlStore
from pushproxy.store.vault import Vault

__all__ = ["SCHEMA_VERSION", "PostgresBackend", "PostgresStore", "StoreSchemaError", "probe_server", "redact_dsn"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # one connection attempt
OPERATION_TIMEOUT = 15.0  # a whole store call: waiting for a pooled connection + the statements
STATEMENT_TIMEOUT_MS = 10_000  # server side, per statement
IDLE_IN_TRANSACTION_TIMEOUT_MS = 3_000  # server side: a transaction left idle (frozen node) is ended
MIGRATION_STATEMENT_TIMEOUT_MS = 120_000  # waiting for another node's migration, then DDL
MIGRATION_TIMEOUT = 150.0
PING_TIMEOUT = 5.0
CLOSE_TIMEOUT = 10.0

# pg_advisory_xact_lock key serialising migrations (any fixed int64; this spells "pushprox").
_SCHEMA_LOCK_KEY = 0x7075736870726F78

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


class _PoolNotices(logging.Filter):
    """asyncpg's pool logs a traceback each time it cannot reconnect its minimum of connections (the
    server is away): one DEBUG line instead; the store's health says it once per outage."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


logging.getLogger("asyncpg.pool").addFilter(_PoolNotices())


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


class _Conn(SqlConn):
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.fetch(POSTGRES.sql(sql), *args))

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._conn.execute(POSTGRES.sql(sql), *args))

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(POSTGRES.sql(sql), rows)


class PostgresBackend(SqlBackend):
    """A pool of connections to one PostgreSQL database."""

    dialect = POSTGRES

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        operation_timeout: float = OPERATION_TIMEOUT,
        statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
    ) -> None:
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self.operation_timeout = operation_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._pool: asyncpg.Pool | None = None

    def describe(self) -> str:
        return f"PostgreSQL database {redact_dsn(self.dsn)}"

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    async def connect(self) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT * 2):
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=self.operation_timeout,
                server_settings={
                    "application_name": "pushproxy",
                    "statement_timeout": str(self._statement_timeout_ms),
                    # Every transaction here is a few statements sent back to back: one idle
                    # for seconds belongs to a node that froze or hung (SIGSTOP, a stalled VM)
                    # while holding row locks (watch_leases, push_ledger). The server ends it
                    # soon, so the live nodes can take those leases within cluster.lease_ttl.
                    "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS),
                },
            )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
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

    @contextlib.asynccontextmanager
    async def _connection(self, transaction: bool, timeout: float) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection (optionally in one committed transaction) under one deadline."""
        pool = self.pool
        try:
            async with asyncio.timeout(timeout), pool.acquire() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except _TRANSIENT as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[SqlConn]:
        async with self._connection(False, self.operation_timeout) as conn:
            yield _Conn(conn)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[SqlConn]:
        async with self._connection(True, self.operation_timeout) as conn:
            yield _Conn(conn)

    @contextlib.asynccontextmanager
    async def migration(self) -> AsyncIterator[tuple[SqlConn, int]]:
        async with self._connection(True, MIGRATION_TIMEOUT) as conn:
            await conn.execute(f"SET LOCAL statement_timeout = {MIGRATION_STATEMENT_TIMEOUT_MS}")
            # Serialises nodes migrating at once; released at commit/rollback.  Under READ
            # COMMITTED every later statement sees what a node that held the lock before us did.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
            # The legacy single-version table: kept so that an older pushproxy refuses the database.
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_version (
                       version INTEGER PRIMARY KEY,
                       applied DOUBLE PRECISION NOT NULL
                   )"""
            )
            legacy = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
            yield _Conn(conn), legacy

    async def set_legacy_version(self, conn: SqlConn, version: int) -> None:
        await conn.execute(
            """INSERT INTO schema_version (version, applied)
               SELECT v, $2 FROM generate_series(1, $1::integer) AS v ON CONFLICT DO NOTHING""",
            version,
            time.time(),
        )


class PostgresStore(SqlStore):
    """:class:`~pushproxy.store.sql.SqlStore` on a PostgreSQL database shared by any number of proxy nodes."""

    def __init__(
        self,
        dsn: str,
        vault: Vault,
        *,
        min_size: int = 1,
        max_size: int = 10,
        operation_timeout: float = OPERATION_TIMEOUT,
        statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
        parts: Sequence[SchemaPart] | None = None,
    ) -> None:
        backend = PostgresBackend(
            dsn,
            min_size=min_size,
            max_size=max_size,
            operation_timeout=operation_timeout,
            statement_timeout_ms=statement_timeout_ms,
        )
        super().__init__(backend, vault, parts)
        self.pg = backend

    def __repr__(self) -> str:
        return f"<PostgresStore {redact_dsn(self.pg.dsn)}>"
