"""Many watched accounts for the real proxy: registrations seeded into its store, and its config.

Shared by the herd / stop / file-descriptor tests and ``bench/scale.py``: N
accounts, each with one APNs registration of INBOX (as iOS Mail makes them),
written into the proxy's SQLite database before it starts, watched with
master credentials on a fake upstream (:mod:`tests.support.fake_upstream`).
APNs is enabled with the test PKI's client certificate and an endpoint
nothing listens on: no mail arrives, so nothing is pushed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pushproxy.extensions.xapplepush.store import ApnsDevice, ApnsQueries
from pushproxy.store import SqliteStore, Vault
from pushproxy.store.tables import parts_of_extensions
from tests.support.certs import ApnsTestCerts
from tests.support.fake_upstream import FakeUpstreamProcess

__all__ = ["accounts", "seed", "watched_config"]


def accounts(n: int) -> list[str]:
    return [f"user{i:06d}" for i in range(n)]


def seed(base_dir: Path, n: int) -> None:
    """Write ``n`` accounts' registrations into ``base_dir``/pushproxy.db (vault key ``base_dir``/vault.key)."""

    async def write() -> None:
        vault = Vault.load_or_create(base_dir / "vault.key")
        store = SqliteStore(base_dir / "pushproxy.db", vault, parts_of_extensions())
        await store.open()
        try:
            queries = store.queries(ApnsQueries)
            for i, account in enumerate(accounts(n)):
                await queries.upsert_device(ApnsDevice(account, "aps-account", f"{i:064x}"))
        finally:
            await store.close()

    base_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(write())


def watched_config(base_dir: Path, upstream: FakeUpstreamProcess, certs: ApnsTestCerts, **watch: Any) -> dict[str, Any]:
    """The proxy's config sections (``ProxyProcess`` adds listen, store and admin)."""
    return {
        "upstream": {
            "host": "127.0.0.1",
            "port": upstream.port,
            "security": upstream.security,
            "ca_file": str(certs.ca_cert),
            "server_name": "localhost",
        },
        "watch": {
            "credentials": "master",
            "master_user": "master",
            "master_password": "pw",
            "vault_key_file": str(base_dir / "vault.key"),
            **watch,
        },
        "apns": {
            "enabled": True,
            "cert_file": str(certs.client_cert),
            "key_file": str(certs.client_key),
            "endpoint": "https://127.0.0.1:9",
            "ca_file": str(certs.ca_cert),
        },
        "log": {"level": "info"},
    }
