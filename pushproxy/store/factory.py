"""Build the configured store back end from ``store.url``."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from pushproxy.config import Config, ConfigError
from pushproxy.store.base import Store
from pushproxy.store.sqlite import MEMORY, SqliteStore, StoreSchemaError
from pushproxy.store.vault import Vault, VaultError

log = logging.getLogger(__name__)

_SQLITE_PREFIX = "sqlite://"


def sqlite_path_from_url(url: str) -> Path:
    """``sqlite:///var/lib/x.db`` -> ``/var/lib/x.db``; ``sqlite:///:memory:`` -> ``:memory:``.

    The path after ``sqlite://`` is absolute (as in the default
    ``sqlite:///var/lib/pushproxy/pushproxy.db``); the SQLAlchemy spelling
    with four slashes is accepted too.
    """
    if not url.startswith(_SQLITE_PREFIX):
        raise ConfigError(f"store.url {url!r} is not a sqlite:/// URL")
    rest = url[len(_SQLITE_PREFIX) :]
    if rest in ("/" + MEMORY, "//" + MEMORY):
        return Path(MEMORY)
    if "?" in rest or "#" in rest:
        raise ConfigError("store.url: SQLite URLs take no query or fragment (sqlite:///path/to/pushproxy.db)")
    if not rest.startswith("/") or rest.strip("/") == "":
        raise ConfigError(
            f"store.url {url!r}: give an absolute database path, e.g. sqlite:///var/lib/pushproxy/pushproxy.db"
        )
    return Path("/" + rest.lstrip("/"))


async def open_store(config: Config) -> Store:
    """Open (creating and migrating as needed) the store named by ``store.url``.

    Raises :class:`ConfigError` for anything the admin has to fix before the
    proxy can start: an unsupported back end, a bad URL, an unusable vault key
    file, a database written by a newer pushproxy, an unwritable location.
    """
    url = config.store.url
    if url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "store.url: the PostgreSQL back end is not available in this version of pushproxy "
            "(it is planned and the store interface is ready for it); use sqlite:///path/to/pushproxy.db"
        )
    path = sqlite_path_from_url(url)
    try:
        if path == Path(MEMORY) and config.watch.vault_key_file is None:
            # Nothing outlives the process, so neither needs the key.
            vault = Vault.generate()
        else:
            vault = await asyncio.to_thread(Vault.load_or_create, config.vault_key_path())
    except VaultError as exc:
        raise ConfigError(str(exc)) from exc
    store = SqliteStore(path, vault)
    try:
        await store.open()
    except StoreSchemaError as exc:
        raise ConfigError(str(exc)) from exc
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the SQLite store {path}: {exc}") from exc
    log.info("store open: SQLite %s", path)
    return store
