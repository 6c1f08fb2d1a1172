"""What differs between the SQL back ends, in one small object.

Queries are written once, in the common subset of SQLite (3.35+) and
PostgreSQL: ``INSERT ... ON CONFLICT ... DO UPDATE``, ``RETURNING``,
``CAST(x AS TYPE)``, ``TRUE``/``FALSE``, and PostgreSQL's numbered
placeholders ``$1``, ``$2`` (rewritten to SQLite's ``?1``, ``?2``).  What
cannot be written the same way is here: column types in DDL, how a JSON
parameter is passed, the database clock (written ``epoch_now()`` in queries:
seconds since the epoch, the same clock for every node), and the lock that
serialises a read-modify-write across processes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

_PLACEHOLDER = re.compile(r"\$(\d+)")


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    # DDL column types, used as ``{blob}``, ``{real}``, ... in migration statements.
    types: dict[str, str] = field(default_factory=dict)
    question_placeholders: bool = False  # SQLite: ?N instead of $N
    epoch_now: str = "epoch_now()"  # the database clock, seconds since the epoch
    json_cast: bool = False  # PostgreSQL: a JSON parameter is text cast to jsonb
    # A statement taking one int64 parameter that holds a lock until the transaction ends
    # (PostgreSQL advisory lock); None where a write transaction already excludes every other writer.
    xact_lock: str | None = None
    # A statement (channel, payload) telling every listening node about a change at commit; None: one node.
    notify: str | None = None

    def sql(self, text: str) -> str:
        """The statement with this dialect's placeholders (cached: the set of statements is fixed)."""
        return _render(text, self.question_placeholders, self.epoch_now)

    def ddl(self, text: str) -> str:
        """A DDL statement with its ``{type}`` names filled in."""
        return text.format(**self.types)

    def json_param(self, n: int) -> str:
        return f"CAST(${n} AS JSONB)" if self.json_cast else f"${n}"

    def text_list(self, n: int) -> str:
        """A subquery of the strings of parameter ``n``, a JSON array (``account IN {text_list(1)}``).

        One parameter however long the list: a batch of accounts is one statement, one plan.
        """
        if self.json_cast:
            return f"(SELECT jsonb_array_elements_text(CAST(${n} AS JSONB)))"
        return f"(SELECT value FROM json_each(${n}))"  # noqa: S608  (a placeholder number, no input)


@functools.lru_cache(maxsize=1024)
def _render(text: str, question: bool, epoch_now: str) -> str:
    text = text.replace("epoch_now()", epoch_now)
    return _PLACEHOLDER.sub(r"?\1", text) if question else text


SQLITE = Dialect(
    name="sqlite",
    types={"blob": "BLOB", "real": "REAL", "bool": "INTEGER", "json": "TEXT", "bigint": "INTEGER", "true": "1"},
    question_placeholders=True,
    epoch_now="((julianday('now') - 2440587.5) * 86400.0)",
)

POSTGRES = Dialect(
    name="postgresql",
    types={
        "blob": "BYTEA",
        "real": "DOUBLE PRECISION",
        "bool": "BOOLEAN",
        "json": "JSONB",
        "bigint": "BIGINT",
        "true": "TRUE",
    },
    json_cast=True,
    epoch_now="extract(epoch FROM clock_timestamp())::double precision",
    notify="SELECT pg_notify($1, $2)",
    xact_lock="SELECT pg_advisory_xact_lock($1)",
)
