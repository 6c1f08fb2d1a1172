"""The embedded SQLite back end: a writer thread and a reader thread, never a blocking call on the loop.

Every SQLite call runs on one of two threads, each with its own connection:

- the writer: every write is one ``BEGIN IMMEDIATE ... COMMIT`` transaction
  (WAL, ``synchronous=FULL``: durable when the coroutine returns).  Writers
  take turns (an asyncio lock held for one transaction), because a statement
  issued while another transaction is open on the connection would silently
  join it;
- the reader (``query_only``): reads run at once, never behind a write
  transaction; WAL gives each statement a consistent committed snapshot.

An in-memory database exists only on its one connection: there, reads take
the writer's turn too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pushproxy.store.dialect import SQLITE
from pushproxy.store.errors import STORE_BUSY, STORE_DAMAGED, FaultEpisodes, StoreUnavailable
from pushproxy.store.records import Row
from pushproxy.store.schema import SCHEMA_VERSION, SchemaPart, SqlConn, StoreSchemaError
from pushproxy.store.sql import SqlBackend, SqlStore
from pushproxy.store.sqlite_faults import classified
from pushproxy.store.vault import Vault

__all__ = ["MEMORY", "SCHEMA_VERSION", "SqliteBackend", "SqliteStore", "StoreSchemaError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MEMORY = ":memory:"
BUSY_TIMEOUT_MS = 5000
TURN_TIMEOUT = 30.0  # waiting for the writer's turn
CALL_TIMEOUT = 30.0  # one statement on a worker thread
PING_TIMEOUT = 5.0


class _Worker:
    """One thread owning one sqlite3 connection; calls run in submission order.

    A call's SQLite error that is a store fault
    (:func:`~pushproxy.store.sqlite_faults.sqlite_fault`) comes back as
    :class:`StoreUnavailable` with its reason; it is classified on the
    thread, which may look at the file system without blocking the loop.
    """

    def __init__(self, name: str, directory: Path | None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._directory = directory
        self.conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        # Submitted before the first await: even if the caller is cancelled, the call keeps its place in line.
        future = self._executor.submit(classified, self._directory, fn, *args)
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                return await asyncio.wrap_future(future)
        except TimeoutError as exc:
            raise StoreUnavailable(f"SQLite: no answer within {CALL_TIMEOUT:.0f} s", STORE_BUSY) from exc

    async def open(self, path: str, setup: Callable[[sqlite3.Connection], None]) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                conn.row_factory = sqlite3.Row
                setup(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        self.conn = await self.run(connect)

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error, StoreUnavailable):
                await self.run(conn.close)
        self._executor.shutdown(wait=False)


class _Conn(SqlConn):
    def __init__(self, worker: _Worker) -> None:
        self._worker = worker

    def _require(self) -> sqlite3.Connection:
        if self._worker.conn is None:
            raise StoreUnavailable("the store is not open")
        return self._worker.conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._worker.run(_fetch, self._require(), SQLITE.sql(sql), args)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._worker.run(_execute, self._require(), SQLITE.sql(sql), args)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._worker.run(_execute_many, self._require(), SQLITE.sql(sql), rows)


def _fetch(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[Row]:
    cur = conn.execute(sql, args)
    try:
        return list(cur.fetchall())
    finally:
        cur.close()


def _execute(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> int:
    cur = conn.execute(sql, args)
    try:
        return cur.rowcount
    finally:
        cur.close()


def _execute_many(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    conn.executemany(sql, rows).close()


def _begin(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:  # left over by a cancelled caller
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class SqliteBackend(SqlBackend):
    """One SQLite file (or ``:memory:``)."""

    dialect = SQLITE

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer: _Worker | None = None
        self._reader: _Worker | None = None
        self._turn = asyncio.Lock()
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) at open, to notice deletion
        self._directory = None if self._in_memory else path.parent  # where a fault is diagnosed
        self.faults = FaultEpisodes(f"SQLite store {path}", log)

    @property
    def _in_memory(self) -> bool:
        return str(self._path) == MEMORY

    def describe(self) -> str:
        return f"SQLite database {self._path}"

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def connect(self) -> None:
        if not self._in_memory:
            self._file_id = await asyncio.to_thread(_prepare_db_file, self._path)
        writer = _Worker("pushproxy-sqlite-writer", self._directory)
        try:
            await writer.open(str(self._path), self._setup_writer)
            if not self._in_memory:
                reader = _Worker("pushproxy-sqlite-reader", self._directory)
                await reader.open(str(self._path), _setup_reader)
                self._reader = reader
        except BaseException:
            await writer.close()
            raise
        self._writer = writer

    def _setup_writer(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not self._in_memory:
            # Before anything could write to it: a damaged file is refused as it is, never "repaired".
            _check_integrity(conn, self._path)
            row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if row is None or str(row[0]).lower() != "wal":
                log.warning("SQLite store %s: could not enable WAL mode", self._path)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        if reader is not None:
            await reader.close()
        if writer is not None:
            async with self._turn:  # let a transaction in progress finish
                await writer.close()  # last connection: checkpoints the WAL into the file

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                async with self.read() as conn:
                    await conn.fetch("SELECT count(*) FROM sqlite_master")
                if self._file_id is not None:
                    # An open connection keeps working on a deleted file: compare identities.
                    st = await asyncio.to_thread(os.stat, self._path)
                    if (st.st_dev, st.st_ino) != self._file_id:
                        return False
        except Exception:  # ping reports, never raises: anything wrong means "not ready"
            return False
        return True

    # --- connections --------------------------------------------------------------
    def _worker(self, worker: _Worker | None) -> _Worker:
        if worker is None or worker.conn is None:
            raise StoreUnavailable("the store is not open")
        return worker

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[SqlConn]:
        if self._in_memory:
            async with self.write() as conn:
                yield conn
            return
        worker = self._worker(self._reader)
        try:
            yield _Conn(worker)
        except StoreUnavailable as exc:
            self.faults.failed(exc)
            raise
        except sqlite3.OperationalError as exc:
            fault = StoreUnavailable(f"SQLite: {exc}")
            self.faults.failed(fault)
            raise fault from exc

    def write(self) -> contextlib.AbstractAsyncContextManager[SqlConn]:
        return self._transaction(unavailable_on_error=True)

    @contextlib.asynccontextmanager
    async def _transaction(self, unavailable_on_error: bool) -> AsyncIterator[SqlConn]:
        try:
            async with asyncio.timeout(TURN_TIMEOUT):
                await self._turn.acquire()
        except TimeoutError as exc:
            fault = StoreUnavailable("SQLite: timed out waiting for the writer", STORE_BUSY)
            self.faults.failed(fault)
            raise fault from exc
        try:
            worker = self._worker(self._writer)
            conn = worker.conn
            assert conn is not None  # checked by _worker
            try:
                await worker.run(_begin, conn)
                yield _Conn(worker)
                await worker.run(_commit, conn)
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error, StoreUnavailable, asyncio.CancelledError):
                    await worker.run(_rollback, conn)
                if isinstance(exc, StoreUnavailable):
                    self.faults.failed(exc)
                    raise
                if unavailable_on_error and isinstance(exc, sqlite3.OperationalError):
                    fault = StoreUnavailable(f"SQLite: {exc}")
                    self.faults.failed(fault)
                    raise fault from exc
                raise
            self.faults.succeeded()
        finally:
            self._turn.release()

    @contextlib.asynccontextmanager
    async def migration(self) -> AsyncIterator[tuple[SqlConn, int]]:
        # BEGIN IMMEDIATE also excludes another process migrating the same file.  A failing
        # step raises its own error: that is a bug or a database that is not ours, not an outage.
        async with self._transaction(unavailable_on_error=False) as conn:
            (row,) = await conn.fetch("PRAGMA user_version")
            yield conn, int(row[0])

    async def set_legacy_version(self, conn: SqlConn, version: int) -> None:
        await conn.execute(f"PRAGMA user_version = {int(version)}")

    async def pragma(self, name: str) -> Any:
        """The value of a PRAGMA on the writer connection (tests, diagnostics)."""
        async with self.write() as conn:
            (row,) = await conn.fetch(f"PRAGMA {name}")
        return row[0]


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """Raise StoreUnavailable(STORE_DAMAGED) unless ``PRAGMA quick_check`` finds the file sound.

    quick_check reads every page once (linear in the file's size; the
    registrations database is small) and changes nothing.  A file that is
    not a database at all fails already here, with SQLITE_NOTADB.
    """
    rows = conn.execute("PRAGMA quick_check(5)").fetchall()
    problems = [str(row[0]) for row in rows]
    if problems != ["ok"]:
        raise StoreUnavailable(f"SQLite quick_check of {path}: {'; '.join(problems)}", STORE_DAMAGED)


def _setup_reader(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = ON")


class SqliteStore(SqlStore):
    """:class:`~pushproxy.store.sql.SqlStore` on one SQLite file (or ``:memory:``)."""

    def __init__(self, path: Path, vault: Vault, parts: Sequence[SchemaPart] | None = None) -> None:
        super().__init__(SqliteBackend(path), vault, parts)


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
