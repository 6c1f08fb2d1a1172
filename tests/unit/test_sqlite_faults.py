"""The SQLite store under a full disk, a read-only file system, a lock held elsewhere, a damaged file.

Each fault is real (a tmpfs filled to the last byte, ext4 forced read-only
the way the kernel does on an I/O error, a second process holding the lock,
a file that is not a database); mounting needs root, the tests skip
otherwise.  What must hold: a store operation raises
:class:`StoreUnavailable` with the reason a client is told, one WARNING per
episode and one INFO when it passes, a counter per failure, no traceback,
and the store works again by itself once the cause is gone.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushproxy import metrics
from pushproxy.config import Config, ConfigError, StoreConfig, WatchConfig
from pushproxy.store import MailboxState, SqliteStore, StoredCredential, StoreUnavailable, Vault, open_store
from pushproxy.store import sqlite as sqlite_module
from pushproxy.store.errors import (
    REASON_LABELS,
    STORE_BUSY,
    STORE_DAMAGED,
    STORE_FULL,
    STORE_READ_ONLY,
    STORE_UNAVAILABLE,
    FaultEpisodes,
)
from pushproxy.store.sqlite_faults import sqlite_fault
from tests.support.filesystems import ext4_remount_ro, fill, force_read_only, lock_holder, small_tmpfs


def errors_counted(label: str) -> float:
    return metrics.REGISTRY.get_sample_value("pushproxy_store_errors_total", {"reason": label}) or 0.0


def store_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pushproxy.store.sqlite"]


def credential(n: int, size: int = 100) -> StoredCredential:
    return StoredCredential(f"user{n}@example.org", f"user{n}", "s" * size)


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    with small_tmpfs(512) as where:
        yield where


# --- the taxonomy --------------------------------------------------------------------------------
def test_every_reason_has_a_metric_series() -> None:
    for label in REASON_LABELS.values():
        assert metrics.REGISTRY.get_sample_value("pushproxy_store_errors_total", {"reason": label}) is not None


def test_an_unknown_reason_is_unavailable() -> None:
    assert StoreUnavailable("x", "something odd").reason == STORE_UNAVAILABLE
    assert StoreUnavailable("the store is not open").reason == STORE_UNAVAILABLE


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (13, STORE_FULL),  # SQLITE_FULL
        (8, STORE_READ_ONLY),  # SQLITE_READONLY
        (8 | (4 << 8), STORE_READ_ONLY),  # SQLITE_READONLY_DBMOVED
        (5, STORE_BUSY),  # SQLITE_BUSY
        (6, STORE_BUSY),  # SQLITE_LOCKED
        (11, STORE_DAMAGED),  # SQLITE_CORRUPT
        (26, STORE_DAMAGED),  # SQLITE_NOTADB
    ],
)
def test_sqlite_codes_are_classified(code: int, reason: str, tmp_path: Path) -> None:
    exc = sqlite3.OperationalError("x")
    exc.sqlite_errorcode = code
    fault = sqlite_fault(exc, tmp_path)
    assert fault is not None and fault.reason == reason


def test_bugs_are_not_store_faults(tmp_path: Path) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError) as integrity:
        conn.execute("INSERT INTO t VALUES (1)")
    assert sqlite_fault(integrity.value, tmp_path) is None
    with pytest.raises(sqlite3.OperationalError) as bad_sql:
        conn.execute("SELECT nothing FROM nowhere")
    assert sqlite_fault(bad_sql.value, tmp_path) is None


def test_one_log_line_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("pushproxy.test.episodes")
    episodes = FaultEpisodes("test store", logger)
    before = errors_counted("full"), errors_counted("busy")
    with caplog.at_level(logging.INFO, logger="pushproxy.test.episodes"):
        for _ in range(5):
            episodes.failed(StoreUnavailable("disk full", STORE_FULL))
        episodes.failed(StoreUnavailable("locked", STORE_BUSY))  # another reason: a new episode
        episodes.succeeded()
        episodes.succeeded()  # nothing to end
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "pushproxy.test.episodes"]
    assert [level for level, _ in lines] == ["WARNING", "WARNING", "INFO"], lines
    assert "store full" in lines[0][1] and "store busy" in lines[1][1] and "6 failed" in lines[2][1]
    assert (errors_counted("full"), errors_counted("busy")) == (before[0] + 5, before[1] + 1)
    assert episodes.reason is None


# --- disk full ----------------------------------------------------------------------------------------
async def test_disk_full_then_freed(tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(tmpfs / "pushproxy.db", Vault.generate())
    await store.open()
    try:
        await store.put_credential(credential(0))
        before = errors_counted("full")
        filler = fill(tmpfs)
        with caplog.at_level(logging.INFO):
            for n in range(1, 4):
                with pytest.raises(StoreUnavailable) as info:
                    await store.put_credential(credential(n, size=20000))
                assert info.value.reason == STORE_FULL
            # Reads go on: what is stored is still there.
            assert (await store.get_credential("user0@example.org")) is not None
            filler.unlink()
            await store.put_credential(credential(9, size=20000))
        assert (await store.get_credential("user9@example.org")) is not None
        assert errors_counted("full") == before + 3
        lines = [(r.levelname, r.getMessage()) for r in store_log(caplog)]
        assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
        assert not any(r.exc_info for r in caplog.records)
    finally:
        await store.close()


async def test_open_on_a_full_disk_is_refused_clearly(tmpfs: Path) -> None:
    fill(tmpfs)
    config = Config(
        store=StoreConfig(url=f"sqlite://{tmpfs}/state/pushproxy.db"), watch=WatchConfig(vault_key_file=None)
    )
    with pytest.raises(ConfigError):
        await open_store(config)


# --- read-only file system -------------------------------------------------------------------------------
async def test_file_system_gone_read_only(caplog: pytest.LogCaptureFixture) -> None:
    with ext4_remount_ro() as (where, sysfs):
        store = SqliteStore(where / "pushproxy.db", Vault.generate())
        await store.open()
        try:
            await store.put_mailbox_state(MailboxState("a@example.org", "INBOX", 1, 10))
            before = errors_counted("read_only")
            force_read_only(sysfs)
            with caplog.at_level(logging.INFO):
                for _ in range(3):
                    with pytest.raises(StoreUnavailable) as info:
                        await store.put_mailbox_state(MailboxState("a@example.org", "INBOX", 1, 11))
                    assert info.value.reason == STORE_READ_ONLY
            state = await store.get_mailbox_state("a@example.org", "INBOX")
            assert state is not None and state.uidnext == 10  # reads go on
            assert errors_counted("read_only") == before + 3
            lines = [r for r in store_log(caplog) if r.levelno >= logging.WARNING]
            assert len(lines) == 1, [r.getMessage() for r in lines]
            assert not any(r.exc_info for r in caplog.records)
        finally:
            await store.close()


async def test_open_on_a_read_only_file_system_is_refused_clearly_and_works_once_writable() -> None:
    with ext4_remount_ro() as (where, _):
        db = where / "state" / "pushproxy.db"
        config = Config(store=StoreConfig(url=f"sqlite://{db}"), watch=WatchConfig(vault_key_file=None))
        store = await open_store(config)
        await store.put_mailbox_state(MailboxState("a@example.org", "INBOX", 1, 10))
        await store.close()
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)
        with pytest.raises(ConfigError, match="store read-only"):
            await open_store(config)
        subprocess.run(["mount", "-o", "remount,rw", str(where)], check=True, capture_output=True)
        store = await open_store(config)
        state = await store.get_mailbox_state("a@example.org", "INBOX")
        assert state is not None and state.uidnext == 10
        await store.close()


# --- locked by another process ---------------------------------------------------------------------------------
async def test_locked_by_another_process_past_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_MS", 300)
    db = tmp_path / "pushproxy.db"
    store = SqliteStore(db, Vault.generate())
    await store.open()
    try:
        await store.put_credential(credential(0))
        before = errors_counted("busy")
        with caplog.at_level(logging.INFO), lock_holder(db):
            for n in (1, 2):
                with pytest.raises(StoreUnavailable) as info:
                    await store.put_credential(credential(n))
                assert info.value.reason == STORE_BUSY
            assert (await store.get_credential("user0@example.org")) is not None  # WAL: reads go on
        with caplog.at_level(logging.INFO):
            await store.put_credential(credential(3))  # the lock is gone: works again by itself
        assert errors_counted("busy") == before + 2
        assert [r.levelname for r in store_log(caplog)] == ["WARNING", "INFO"]
    finally:
        await store.close()


# --- a damaged file at start -----------------------------------------------------------------------------------
def _config(db: Path) -> Config:
    return Config(store=StoreConfig(url=f"sqlite://{db}"), watch=WatchConfig(vault_key_file=db.parent / "vault.key"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "pushproxy.db"
    db.write_bytes(b"this is not an SQLite database\n" * 200)
    digest = _digest(db)
    with pytest.raises(ConfigError, match="is damaged"):
        await open_store(_config(db))
    assert _digest(db) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pushproxy.db", "vault.key"]


async def test_a_database_with_damaged_pages_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "pushproxy.db"
    store = await open_store(_config(db))
    for n in range(200):
        await store.put_credential(credential(n, size=500))
    await store.close()
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    for offset in range(3 * page, len(data) - page, 2 * page):  # scribble over every other page's header
        data[offset : offset + 16] = b"\xff" * 16
    db.write_bytes(bytes(data))
    digest = _digest(db)
    with pytest.raises(ConfigError, match="is damaged"):
        await open_store(_config(db))
    assert _digest(db) == digest
