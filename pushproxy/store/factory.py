"""Build the configured store back end from ``store.url``."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from pushproxy.config import Config, ConfigError
from pushproxy.store.errors import STORE_DAMAGED, StoreUnavailable
from pushproxy.store.schema import StoreSchemaError
from pushproxy.store.sql import SqlStore
from pushproxy.store.sqlite import MEMORY, SqliteStore
from pushproxy.store.tables import parts_of_extensions
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


async def check_vault_key(store: SqlStore, vault: Vault) -> None:
    """Refuse a vault key other than the one the database's records were written with.

    The first node to open a database records the key's fingerprint; a node
    (or a restart) with another key would write records nobody else can
    read, and fail on every record the others wrote.
    """
    recorded = await store.claim_key_fingerprint("vault", vault.fingerprint())
    if recorded != vault.fingerprint():
        raise ConfigError(
            f"the vault key (watch.vault_key_file) is not the key {store.describe()} was written with "
            f"(key fingerprint {vault.fingerprint()}, database expects {recorded}): every node sharing a "
            "database must use the same vault key file"
        )


async def _checked(store: SqlStore, vault: Vault) -> SqlStore:
    try:
        await check_vault_key(store, vault)
    except BaseException:
        await store.close()
        raise
    return store


async def open_store(config: Config) -> SqlStore:
    """Open (creating and migrating as needed) the store named by ``store.url``.

    Raises :class:`ConfigError` for anything the admin has to fix before the
    proxy can start: an unsupported back end, a bad URL, an unusable vault key
    file, a database written by a newer pushproxy, an unwritable location.
    """
    url = config.store.url
    if url.startswith(("postgresql://", "postgres://")):
        return await _open_postgres(config, url)
    path = sqlite_path_from_url(url)
    try:
        if path == Path(MEMORY) and config.watch.vault_key_file is None:
            # Nothing outlives the process, so neither needs the key.
            vault = Vault.generate()
        else:
            vault = await asyncio.to_thread(Vault.load_or_create, config.vault_key_path())
    except VaultError as exc:
        raise ConfigError(str(exc)) from exc
    store = SqliteStore(path, vault, parts_of_extensions())
    try:
        await store.open()
    except StoreSchemaError as exc:
        raise ConfigError(str(exc)) from exc
    except StoreUnavailable as exc:
        if exc.reason == STORE_DAMAGED:
            raise ConfigError(
                f"the SQLite store {path} is damaged ({exc}); pushproxy left it untouched: restore it from a "
                "backup (or move it away to start with an empty store, after which every device registers again)"
            ) from exc
        raise ConfigError(f"cannot open the SQLite store {path}: {exc.reason} ({exc})") from exc
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the SQLite store {path}: {exc}") from exc
    log.info("store open: SQLite %s", path)
    return await _checked(store, vault)


async def _open_postgres(config: Config, url: str) -> SqlStore:
    """The shared PostgreSQL store.

    Every node of a multi-node deployment must load the same vault key file
    (``watch.vault_key_file``, default ``/var/lib/pushproxy/vault.key``), or it
    cannot decrypt credentials and subscriptions other nodes stored.
    """
    try:
        import asyncpg

        from pushproxy.store.postgres import PostgresStore, probe_server, redact_dsn
    except ImportError as exc:
        raise ConfigError(
            f"store.url is a PostgreSQL URL but asyncpg is not installed ({exc}): pip install 'pushproxy[postgres]'"
        ) from exc
    # unreachable, refused, bad credentials, missing database, malformed URL, ...
    unusable = (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError)
    try:
        # First, so that a node that cannot reach the database does not create a vault key on its way out.
        await probe_server(url)
    except unusable as exc:
        raise ConfigError(f"cannot open the PostgreSQL store {redact_dsn(url)}: {type(exc).__name__}: {exc}") from exc
    try:
        vault = await asyncio.to_thread(Vault.load_or_create, config.vault_key_path())
    except VaultError as exc:
        raise ConfigError(str(exc)) from exc
    store = PostgresStore(url, vault, parts=parts_of_extensions())
    try:
        await store.open()
    except StoreSchemaError as exc:
        raise ConfigError(str(exc)) from exc
    except unusable as exc:
        raise ConfigError(f"cannot open the PostgreSQL store {redact_dsn(url)}: {type(exc).__name__}: {exc}") from exc
    log.info("store open: PostgreSQL %s", redact_dsn(url))
    return await _checked(store, vault)
