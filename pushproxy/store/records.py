"""The core's records (credentials, watch state) and rows to records, shared by every back end
(SQLite rows and asyncpg records both index by column name).

The associated data of each encrypted column binds a secret to its row: a blob
copied to another account fails to decrypt.  Keep these exactly as they are:
changing them makes every stored secret unreadable.  Extensions' records are in
their packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pushproxy.store.vault import Vault


@dataclass(slots=True)
class StoredCredential:
    account: str  # normalised
    login: str  # exactly as the user typed it: what the watcher sends upstream
    secret: str  # clear text here; encrypted at rest, bound to the account
    stale: bool = False  # upstream said AUTHENTICATIONFAILED: wait for a new login
    updated: float = 0.0


@dataclass(slots=True)
class MailboxState:
    account: str
    mailbox: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int | None = None
    updated: float = 0.0


class Row(Protocol):
    """A result row (sqlite3.Row, asyncpg.Record): indexable by column name."""

    def __getitem__(self, key: Any, /) -> Any: ...


def credential_aad(account: str) -> bytes:
    return b"credential\0" + account.encode()


def opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def credential_from_row(row: Row, vault: Vault) -> StoredCredential:
    """Raises VaultError when the secret cannot be decrypted."""
    secret = vault.decrypt(bytes(row["secret"]), credential_aad(row["account"]))
    return StoredCredential(
        account=row["account"],
        login=row["login"],
        secret=secret.decode(),
        stale=bool(row["stale"]),
        updated=float(row["updated"]),
    )


def mailbox_state_from_row(row: Row) -> MailboxState:
    return MailboxState(
        account=row["account"],
        mailbox=row["mailbox"],
        uidvalidity=int(row["uidvalidity"]),
        uidnext=int(row["uidnext"]),
        highestmodseq=None if row["highestmodseq"] is None else int(row["highestmodseq"]),
        updated=float(row["updated"]),
    )
