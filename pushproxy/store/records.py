"""The core's records (credentials, watch state) and rows to records, shared by every back end
(SQLite rows and asyncpg records both index by column name).

The associated data of each encrypted column binds a secret to its row: a blob
copied to another account fails to decrypt.  Keep these exactly as they are:
changing them makes every stored secret unreadable.  Extensions' records are in
their packages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

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


R = TypeVar("R")

# A record field's declared type -> how a column's value becomes one (SQLite gives 0 / 1 for booleans and
# integers for whole floats; both back ends may give bytes-like objects that are not bytes).
_CONVERSIONS: dict[str, Callable[[Any], Any]] = {"str": str, "int": int, "float": float, "bool": bool, "bytes": bytes}


_Field = tuple[str, Callable[[Any], Any] | None, bool]
_FIELDS: dict[type[Any], tuple[_Field, ...]] = {}


def _fields(record: type[Any]) -> tuple[_Field, ...]:
    """Each field of a record dataclass: its name, the conversion of its type (None: not a column type),
    and whether it may be None (worked out once per class)."""
    known = _FIELDS.get(record)
    if known is None:
        out = []
        for f in dataclasses.fields(record):
            kind = str(f.type)  # a string: every record module has ``from __future__ import annotations``
            out.append((f.name, _CONVERSIONS.get(kind.removesuffix(" | None")), kind.endswith(" | None")))
        known = _FIELDS[record] = tuple(out)
    return known


def record_from_row(record: type[R], row: Row, **given: Any) -> R:
    """A ``record`` (a dataclass) whose fields are the row's columns of the same names, each converted to
    the field's declared type (str, int, float, bool, bytes, or one of them ``| None``).

    What is not a plain column (a decrypted secret, a parsed JSON value, a derived id) is ``given``, as it
    is.  Every back end's rows go through here, so a column reads the same from SQLite and PostgreSQL.
    """
    values = dict(given)
    for name, convert, optional in _fields(record):
        if name in values:
            continue
        if convert is None:
            raise TypeError(f"{record.__name__}.{name} is not a column type: give it")
        value = row[name]
        values[name] = None if value is None and optional else convert(value)
    return record(**values)


def credential_from_row(row: Row, vault: Vault) -> StoredCredential:
    """Raises VaultError when the secret cannot be decrypted."""
    secret = vault.decrypt(bytes(row["secret"]), credential_aad(row["account"]))
    return record_from_row(StoredCredential, row, secret=secret.decode())


def mailbox_state_from_row(row: Row) -> MailboxState:
    return record_from_row(MailboxState, row)
