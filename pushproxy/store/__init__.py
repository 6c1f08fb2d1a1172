"""Persistence: the :class:`Store` interface, its records, and the back ends.

The back ends are imported when first used (PEP 562): extensions import
:mod:`pushproxy.store.schema` and :mod:`pushproxy.store.sql_base` for their
tables and queries, while the back ends import the extension list for the
schema parts (``pushproxy.store.tables``).
"""

from typing import TYPE_CHECKING

from pushproxy.lazy import lazy_attributes
from pushproxy.store.base import MailboxState, Store, StoredCredential, StoreUnavailable
from pushproxy.store.schema import StoreSchemaError
from pushproxy.store.vault import Vault, VaultError

if TYPE_CHECKING:
    from pushproxy.store.factory import open_store
    from pushproxy.store.sql import SqlStore
    from pushproxy.store.sqlite import SqliteStore

_LAZY = {
    "open_store": "pushproxy.store.factory",
    "SqlStore": "pushproxy.store.sql",
    "SqliteStore": "pushproxy.store.sqlite",
}

__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "MailboxState",
    "SqlStore",
    "SqliteStore",
    "Store",
    "StoreSchemaError",
    "StoreUnavailable",
    "StoredCredential",
    "Vault",
    "VaultError",
    "open_store",
]
