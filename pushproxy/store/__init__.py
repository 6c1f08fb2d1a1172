"""Persistence: the :class:`Store` interface, its records, and the back ends.

The back ends are imported when first used (PEP 562): the extensions' schema
parts import :mod:`pushproxy.store.schema` while the back ends import the
parts (``pushproxy.store.tables``).
"""

from typing import TYPE_CHECKING, Any

from pushproxy.store.base import (
    ApnsDevice,
    MailboxState,
    Store,
    StoredCredential,
    StoreUnavailable,
    VapidKey,
    WebPushSubscription,
)
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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApnsDevice",
    "MailboxState",
    "SqlStore",
    "SqliteStore",
    "Store",
    "StoreSchemaError",
    "StoreUnavailable",
    "StoredCredential",
    "VapidKey",
    "Vault",
    "VaultError",
    "WebPushSubscription",
    "open_store",
]
