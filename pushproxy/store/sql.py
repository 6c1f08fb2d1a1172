"""The SQL store: every query written once, over a small back-end interface.

:class:`SqlStore` implements :class:`~pushproxy.store.base.Store` on a
:class:`~pushproxy.store.sql_base.SqlBackend`, which provides connections (a
read, a committed write transaction, the exclusive migration transaction)
and a :class:`~pushproxy.store.dialect.Dialect` for what cannot be written
the same way in SQLite and PostgreSQL.  The back ends are
:mod:`pushproxy.store.sqlite` and :mod:`pushproxy.store.postgres`.

Extensions bring their tables (``Extension.schema``: a
:class:`~pushproxy.store.schema.SchemaPart`, migrated with the core's) and
their queries (a :class:`~pushproxy.store.sql_base.Queries` subclass in
their package, bound with :meth:`SqlStore.queries`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import TypeVar

from pushproxy.store.base import MailboxState, Store, StoredCredential
from pushproxy.store.records import credential_aad, credential_from_row, mailbox_state_from_row
from pushproxy.store.schema import SCHEMA_VERSION, SchemaPart, migrate
from pushproxy.store.sql_base import Queries, SqlBackend, SqlBase, readable
from pushproxy.store.tables import parts_of_extensions
from pushproxy.store.vault import Vault

__all__ = ["SqlBackend", "SqlStore"]

Q = TypeVar("Q", bound=Queries)


_PUT_MAILBOX_STATE = """INSERT INTO mailbox_state (account, mailbox, uidvalidity, uidnext, highestmodseq, updated)
   VALUES ($1, $2, $3, $4, $5, $6)
   ON CONFLICT (account, mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity,
       uidnext = excluded.uidnext, highestmodseq = excluded.highestmodseq, updated = excluded.updated"""


def _mailbox_state_args(state: MailboxState) -> tuple[object, ...]:
    return (
        state.account,
        state.mailbox,
        state.uidvalidity,
        state.uidnext,
        state.highestmodseq,
        state.updated or time.time(),
    )


class SqlStore(SqlBase, Store):
    """:class:`Store` on any :class:`SqlBackend`.

    ``parts``: the schema parts to migrate, by default the core's and every
    listed extension's (:func:`~pushproxy.store.tables.parts_of_extensions`).
    """

    def __init__(self, backend: SqlBackend, vault: Vault, parts: Sequence[SchemaPart] | None = None) -> None:
        super().__init__(backend, vault)
        self._parts = parts_of_extensions() if parts is None else tuple(parts)
        self._open_lock = asyncio.Lock()

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
        await self.health.close()
        await self._backend.close()

    async def ping(self) -> bool:
        return await self._backend.ping()

    def queries(self, kind: type[Q]) -> Q:
        return kind(self)

    # --- credentials ----------------------------------------------------------
    async def put_credential(self, cred: StoredCredential) -> None:
        secret = self._vault.encrypt(cred.secret.encode(), credential_aad(cred.account))
        # A new credential can make an account watchable (registered on one node, its owner on
        # another waits for it): it is announced like a registration change.
        async with self._in_call_order(("credential", cred.account)):
            await self._change_registrations(
                """INSERT INTO credentials (account, login, secret, stale, updated) VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (account) DO UPDATE SET login = excluded.login, secret = excluded.secret,
                       stale = excluded.stale, updated = excluded.updated""",
                cred.account,
                cred.login,
                secret,
                bool(cred.stale),
                cred.updated or time.time(),
                account=cred.account,
            )

    async def get_credential(self, account: str) -> StoredCredential | None:
        row = await self._fetchone("SELECT * FROM credentials WHERE account = $1", account)
        return None if row is None else credential_from_row(row, self._vault)  # VaultError propagates

    async def get_credentials(self, accounts: Sequence[str]) -> dict[str, StoredCredential]:
        rows = await self._fetch(
            f"SELECT * FROM credentials WHERE account IN {self.dialect.text_list(1)}",  # noqa: S608  (no input)
            json.dumps(list(accounts)),
        )
        # One that does not decrypt reads as absent (VaultCredentials: missing until the next login).
        return {cred.account: cred for cred in readable(rows, credential_from_row, self._vault, "stored credential(s)")}

    async def mark_credential_stale(self, account: str) -> None:
        await self._modify("UPDATE credentials SET stale = TRUE, updated = $1 WHERE account = $2", time.time(), account)

    async def delete_credential(self, account: str) -> None:
        await self._modify("DELETE FROM credentials WHERE account = $1", account)

    # --- watch state ------------------------------------------------------------
    async def get_mailbox_state(self, account: str, mailbox: str) -> MailboxState | None:
        row = await self._fetchone("SELECT * FROM mailbox_state WHERE account = $1 AND mailbox = $2", account, mailbox)
        return None if row is None else mailbox_state_from_row(row)

    async def put_mailbox_state(self, state: MailboxState) -> None:
        await self.put_mailbox_states([state])

    async def put_mailbox_states(self, states: Sequence[MailboxState]) -> None:
        """Several mailbox states in one transaction: one commit (one fsync) for a group of watchers' writes."""
        if not states:
            return
        keys = sorted({("mailbox_state", s.account, s.mailbox) for s in states})
        async with contextlib.AsyncExitStack() as held:
            for key in keys:  # each row's writes in call order; sorted, so two groups never wait on each other
                await held.enter_async_context(self._in_call_order(key))
            async with self._backend.write() as conn:  # one round trip: a busy loop is not a hop per row
                await conn.execute_many(_PUT_MAILBOX_STATE, [_mailbox_state_args(state) for state in states])

    async def delete_mailbox_states(self, account: str) -> None:
        await self._modify("DELETE FROM mailbox_state WHERE account = $1", account)

    async def last_activity(self, accounts: Sequence[str] | None = None) -> dict[str, float]:
        if accounts is None:
            rows = await self._fetch("SELECT account, MAX(updated) AS last FROM mailbox_state GROUP BY account")
        else:
            rows = await self._fetch(
                f"""SELECT account, MAX(updated) AS last FROM mailbox_state
                    WHERE account IN {self.dialect.text_list(1)} GROUP BY account""",  # noqa: S608  (no input)
                json.dumps(list(accounts)),
            )
        return {row["account"]: float(row["last"]) for row in rows}

    # --- accounts -----------------------------------------------------------------
    async def accounts_with_registrations(self) -> list[str]:
        registered = self.registered_accounts_sql()
        if registered is None:
            return []
        rows = await self._fetch(registered + " ORDER BY account")
        return [r["account"] for r in rows]

    def registered_accounts_sql(self) -> str | None:
        """One SELECT of the accounts with registrations (``account``), for queries to join; None: no part has any."""
        selects = [part.registered_accounts for part in self._parts if part.registered_accounts]
        return " UNION ".join(selects) if selects else None

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
