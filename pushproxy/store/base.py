"""The store interface: one async API over the SQL back ends (SQLite, PostgreSQL).

Callers depend only on :class:`Store` and the record types here: the core's
(credentials, watch state).  An extension's tables, records and queries are
in its own package; it gets its queries bound to the store with
:meth:`Store.queries`.  Secrets (upstream passwords, device tokens, Web Push
endpoints and auth secrets) are handed to the store in clear text and
encrypted with the :class:`~pushproxy.store.vault.Vault` it was given; the
key never enters the database.

Every write is durable when the coroutine returns (SQLite: committed in WAL
mode with ``synchronous=FULL``), because callers answer the client's tagged OK
only after it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from pushproxy.store.errors import StoreUnavailable
from pushproxy.store.records import MailboxState, StoredCredential
from pushproxy.store.vault import VaultError

if TYPE_CHECKING:
    from pushproxy.store.health import StoreHealth
    from pushproxy.store.regview import RegistrationView
    from pushproxy.store.sql_base import Queries

Q = TypeVar("Q", bound="Queries")

__all__ = ["MailboxState", "Store", "StoreUnavailable", "StoredCredential"]


class Store(ABC):
    """Async persistence for credentials and watch state, and the connections extensions' queries use."""

    health: StoreHealth  # reachability, shared by every part that must go on without the store
    registrations: RegistrationView  # what the senders read (pushproxy.store.regview)

    @property
    def shared_by_nodes(self) -> bool:
        """True when several nodes may open this store at once (PostgreSQL): keys every
        node must share are then checked against what the others recorded."""
        return False

    # --- lifecycle -----------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the back end answers a trivial query (for /readyz)."""

    @abstractmethod
    def queries(self, kind: type[Q]) -> Q:
        """``kind`` (the queries of an extension's tables) bound to this store's connections."""

    # --- credentials ----------------------------------------------------------
    @abstractmethod
    async def put_credential(self, cred: StoredCredential) -> None: ...

    @abstractmethod
    async def get_credential(self, account: str) -> StoredCredential | None:
        """None when absent; raises VaultError when the record cannot be decrypted."""

    async def get_credentials(self, accounts: Sequence[str]) -> dict[str, StoredCredential]:
        """The stored credentials of these accounts (a batch of watcher starts); one that is absent or
        does not decrypt is left out.  The SQL store reads them with one query."""
        found: dict[str, StoredCredential] = {}
        for account in accounts:
            try:
                cred = await self.get_credential(account)
            except VaultError:
                continue
            if cred is not None:
                found[account] = cred
        return found

    @abstractmethod
    async def mark_credential_stale(self, account: str) -> None: ...

    @abstractmethod
    async def delete_credential(self, account: str) -> None: ...

    # --- watch state ------------------------------------------------------------
    @abstractmethod
    async def get_mailbox_state(self, account: str, mailbox: str) -> MailboxState | None: ...

    @abstractmethod
    async def put_mailbox_state(self, state: MailboxState) -> None: ...

    async def put_mailbox_states(self, states: Sequence[MailboxState]) -> None:
        """Several states at once (the SQL store: one transaction)."""
        for state in states:
            await self.put_mailbox_state(state)

    @abstractmethod
    async def delete_mailbox_states(self, account: str) -> None: ...

    async def last_activity(self, accounts: Sequence[str] | None = None) -> dict[str, float]:
        """When each account's (of ``accounts``, or every) watch state last changed (epoch seconds):
        the watchers' start order."""
        return {}

    # --- accounts -----------------------------------------------------------------
    @abstractmethod
    async def accounts_with_registrations(self) -> list[str]:
        """Accounts with at least one push registration in some extension's tables (see ``SchemaPart``)."""
