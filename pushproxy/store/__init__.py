"""Persistence: the :class:`Store` interface, its records, and the back ends."""

from pushproxy.store.base import (
    ApnsDevice,
    MailboxState,
    Store,
    StoredCredential,
    StoreUnavailable,
    VapidKey,
    WebPushSubscription,
)
from pushproxy.store.factory import open_store
from pushproxy.store.schema import StoreSchemaError
from pushproxy.store.sql import SqlStore
from pushproxy.store.sqlite import SqliteStore
from pushproxy.store.vault import Vault, VaultError

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
