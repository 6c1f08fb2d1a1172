"""A real proxy on a real SQLite file that fails: a full disk, a read-only file system, a lock held by
another process, a damaged file at start.  Real IMAP clients register through the proxy against the
test Dovecot; the relay must go on, registrations are answered ``NO [UNAVAILABLE] <reason>``, the log
has one line per episode and no traceback (the proxy fixture checks), and the store works again by
itself once the cause is gone.  Mounting needs root: those tests skip otherwise."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.filesystems import lock_holder, small_tmpfs
from tests.support.proxy import ProxyProcess
from tests.support.push_standin import PushStandin
from tests.support.webpush_proxy import (
    WATCH,
    ProxyFactory,
    RawImap,
    standin,
    subscribe_and_ack,
    wait_until,
    webpush_cmd,
)

__all__ = ["standin"]  # the fixture, imported for the tests below

WEBPUSH = {
    "enabled": True,
    "allow_private_endpoints": True,
    "subject": "mailto:ops@example.org",
    "timeout": 5.0,
    "retry_budget": 3,
}


def proxy_on(proxy_factory: ProxyFactory, dovecot: Dovecot, db: Path) -> ProxyProcess:
    return proxy_factory(dovecot, webpush=WEBPUSH, watch=WATCH, store={"url": f"sqlite://{db}"})


def relay_works(client: RawImap) -> None:
    """The relay path: SELECT and FETCH answered by Dovecot through the proxy."""
    client.ok("SELECT INBOX")
    client.ok("UID FETCH 1:* (FLAGS)")
    client.ok("NOOP")


def episode_lines(proxy: ProxyProcess, reason: str) -> list[str]:
    return [line for line in proxy.log_text().splitlines() if "WARNING" in line and f": {reason} (" in line]


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    with small_tmpfs(4096) as where:
        yield where


def test_locked_by_another_process_answers_store_busy_then_recovers(
    proxy_factory: ProxyFactory, dovecot: Dovecot, standin: PushStandin, tmp_path: Path
) -> None:
    db = tmp_path / "pushproxy.db"
    proxy = proxy_on(proxy_factory, dovecot, db)
    client = RawImap(proxy.port, timeout=30)
    client.login()
    subscribe_and_ack(client, standin, "phone")
    proxy.wait_watching()  # its first writes done: only the registration below meets the lock
    tablet = standin.new_subscription()
    with lock_holder(db):
        _, status = client.command(webpush_cmd("tablet", tablet))  # after the 5 s busy timeout
        assert status == b"NO [UNAVAILABLE] store busy", status
        relay_works(client)
        assert proxy.metric("pushproxy_store_errors_total", {"reason": "busy"}) >= 1
    client.ok(webpush_cmd("tablet", tablet))
    proxy.wait_log("working again after")
    assert len(episode_lines(proxy, "store busy")) == 1, proxy.log_tail()
    client.close()


def test_a_damaged_database_at_start_is_refused_with_a_clear_message_and_left_alone(
    proxy_factory: ProxyFactory, dovecot: Dovecot
) -> None:
    proxy = proxy_factory(dovecot, start=False, webpush=WEBPUSH)
    db = proxy.base_dir / "pushproxy.db"
    db.write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 64)  # the magic, then garbage
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(RuntimeError, match="exited with 2") as info:
        proxy.start()
    assert "is damaged" in str(info.value) and "left it untouched" in str(info.value)
    assert "Traceback" not in proxy.log_text()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert not (proxy.base_dir / "pushproxy.db-wal").exists()
    wait_until(lambda: proxy.proc is None or proxy.proc.poll() is not None, what="the proxy to have exited")
    proxy.proc = None  # it exited on its own; the fixture's stop has nothing to do
