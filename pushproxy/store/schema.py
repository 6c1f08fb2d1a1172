"""Numbered schema migrations, per part, applied by every SQL back end.

A :class:`SchemaPart` is a named, numbered list of migrations: the core has
one, and each extension with tables has its own (``Extension.schema``, in its
package, numbered independently).  Migration N of a part
brings that part from version N-1 to N; applied versions are rows of
``schema_migrations (part, version)``.  Never edit a released migration;
append one.

A step is a DDL string (column types written ``{blob}``, ``{real}``,
``{bool}``, ``{json}``, ``{bigint}``; ``{true}`` for a boolean literal in an
index predicate) or a coroutine that converts data (it gets the connection,
the dialect and the vault).  Every pending step of every part runs in one
transaction, under a lock that excludes other processes migrating at the
same time: a failure leaves the database as it was.

Before ``schema_migrations`` existed, both back ends kept one global version
(SQLite ``PRAGMA user_version``, PostgreSQL table ``schema_version``), which
was 1.  Version 1 of the first three parts is exactly that schema; the
legacy version is then set to :data:`SCHEMA_VERSION` (2) so that an older
pushproxy refuses the database instead of misreading it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pushproxy.store.dialect import Dialect
from pushproxy.store.records import Row
from pushproxy.store.vault import Vault

log = logging.getLogger(__name__)

# The legacy global version: 1 = the single-version schema, 2 = "see schema_migrations".
SCHEMA_VERSION = 2
_LEGACY_SINGLE = 1


class StoreSchemaError(Exception):
    """The database cannot be used by this version of the code (e.g. it is newer)."""


class SqlConn(Protocol):
    """One connection inside a transaction (or autocommit for reads), placeholders ``$1``..."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Rows changed."""
        ...

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for each row of arguments, in one round trip (a group of writes)."""
        ...


DataStep = Callable[[SqlConn, Dialect, Vault], Awaitable[None]]
Step = str | DataStep


@dataclass(frozen=True, slots=True)
class SchemaPart:
    name: str
    migrations: tuple[tuple[Step, ...], ...]  # migrations[N-1] brings the part to version N
    # Seeded as applied up to this version when a legacy single-version database is adopted.
    legacy_version: int = 0
    # SELECT of one column, ``account``: the accounts with push registrations in these tables
    # (they are watched from the start; see Store.accounts_with_registrations).
    registered_accounts: str | None = None

    @property
    def version(self) -> int:
        return len(self.migrations)


_CREATE_MIGRATIONS = """CREATE TABLE IF NOT EXISTS schema_migrations (
    part TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied {real} NOT NULL,
    PRIMARY KEY (part, version)
)"""


async def migrate(
    conn: SqlConn, dialect: Dialect, vault: Vault, parts: Sequence[SchemaPart], legacy: int, where: str
) -> tuple[int, int] | None:
    """Apply pending migrations inside the caller's exclusive transaction.

    ``legacy`` is the database's legacy global version (0 for a new
    database).  Returns the new legacy version to record, or None when it
    is already current; raises :class:`StoreSchemaError` for a database
    written by a newer pushproxy.
    """
    if legacy > SCHEMA_VERSION:
        raise _newer(where, f"schema version {legacy}", SCHEMA_VERSION)
    await conn.execute(dialect.ddl(_CREATE_MIGRATIONS))
    applied: dict[str, int] = {}
    for row in await conn.fetch("SELECT part, max(version) AS version FROM schema_migrations GROUP BY part"):
        applied[row["part"]] = int(row["version"])
    now = time.time()
    if legacy == _LEGACY_SINGLE and not applied:
        for part in parts:
            for version in range(1, part.legacy_version + 1):
                await _record(conn, part.name, version, now)
            applied[part.name] = part.legacy_version
    ran: list[str] = []
    for part in parts:
        current = applied.get(part.name, 0)
        if current > part.version:
            raise _newer(where, f"part {part.name!r} at version {current}", part.version)
        for version in range(current + 1, part.version + 1):
            for step in part.migrations[version - 1]:
                if isinstance(step, str):
                    await conn.execute(dialect.ddl(step))
                else:
                    await step(conn, dialect, vault)
            await _record(conn, part.name, version, now)
            ran.append(f"{part.name} {version}")
    if ran:
        log.info("%s: schema migrations applied: %s", where, ", ".join(ran))
    return None if legacy == SCHEMA_VERSION else (legacy, SCHEMA_VERSION)


async def _record(conn: SqlConn, part: str, version: int, now: float) -> None:
    await conn.execute("INSERT INTO schema_migrations (part, version, applied) VALUES ($1, $2, $3)", part, version, now)


def _newer(where: str, what: str, known: int) -> StoreSchemaError:
    return StoreSchemaError(
        f"{where} has {what}, but this version of pushproxy only knows up to {known}: "
        "upgrade pushproxy (downgrades are not supported)"
    )
