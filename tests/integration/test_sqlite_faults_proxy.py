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

from tests.support import apns_env
from tests.support.apns_env import ACCOUNT_ID, TOKEN_A, RawClient, apns_config, devices_in_store, register
from tests.support.apns_standin import ApnsStandin
from tests.support.certs import ApnsTestCerts
from tests.support.dovecot import Dovecot, make_message
from tests.support.filesystems import ext4_remount_ro, fill, force_read_only, lock_holder, small_tmpfs
from tests.support.proxy import ProxyProcess
from tests.support.push_standin import PushStandin
from tests.support.webpush_proxy import (
    WATCH,
    ProxyFactory,
    RawImap,
    standin,
    subscribe_and_ack,
    wait_pushes,
    wait_until,
    webpush_cmd,
)

__all__ = ["standin"]  # the fixture, imported for the tests below (certs and apns below, by assignment)

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


def test_disk_full_registrations_answer_store_full_relay_and_pushes_go_on(
    proxy_factory: ProxyFactory, dovecot: Dovecot, standin: PushStandin, tmpfs: Path
) -> None:
    proxy = proxy_on(proxy_factory, dovecot, tmpfs / "pushproxy.db")
    client = RawImap(proxy.port)
    client.login()
    phone = subscribe_and_ack(client, standin, "phone")
    proxy.wait_watching()
    dovecot.deliver("alice", make_message("before the disk fills"))
    wait_pushes(standin, phone, 2)

    filler = fill(tmpfs)
    tablet = standin.new_subscription()
    for _ in range(3):
        _, status = client.command(webpush_cmd("tablet", tablet))
        assert status == b"NO [UNAVAILABLE] store full", status
    relay_works(client)
    # A login with a new password: the relay logs in; keeping the credential waits for room.
    dovecot.add_user("alice", "new-password-1")
    other = RawImap(proxy.port)
    other.login("alice", "new-password-1")
    relay_works(other)
    other.close()
    assert proxy.metric("pushproxy_store_errors_total", {"reason": "full"}) >= 3
    assert len(episode_lines(proxy, "store full")) == 1, proxy.log_tail()
    # The subscription already stored is still pushed.
    dovecot.deliver("alice", make_message("while the disk is full"))
    wait_pushes(standin, phone, 3)

    filler.unlink()
    untagged = client.ok(webpush_cmd("tablet", tablet))
    assert any(line.startswith(b"WEBPUSH tablet") for line in untagged), untagged
    proxy.wait_log("working again after")
    assert len(episode_lines(proxy, "store full")) == 1
    client.close()


def test_file_system_gone_read_only_answers_store_read_only_relay_goes_on(
    proxy_factory: ProxyFactory, dovecot: Dovecot, standin: PushStandin
) -> None:
    with ext4_remount_ro() as (where, sysfs):
        proxy = proxy_on(proxy_factory, dovecot, where / "pushproxy.db")
        client = RawImap(proxy.port)
        client.login()
        phone = subscribe_and_ack(client, standin, "phone")
        proxy.wait_watching()
        force_read_only(sysfs)
        tablet = standin.new_subscription()
        for _ in range(2):
            _, status = client.command(webpush_cmd("tablet", tablet))
            assert status == b"NO [UNAVAILABLE] store read-only", status
        relay_works(client)
        assert proxy.metric("pushproxy_store_errors_total", {"reason": "read_only"}) >= 2
        assert len(episode_lines(proxy, "store read-only")) == 1, proxy.log_tail()
        dovecot.deliver("alice", make_message("on a read-only disk"))
        wait_pushes(standin, phone, 2)
        client.close()
        proxy.stop()


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


certs, apns = apns_env.certs, apns_env.apns


def test_ios_registration_on_a_full_disk_is_answered_ok_and_stored_once_there_is_room(
    proxy_factory: ProxyFactory, dovecot: Dovecot, apns: ApnsStandin, certs: ApnsTestCerts, tmpfs: Path
) -> None:
    db = tmpfs / "pushproxy.db"
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns), watch=WATCH, store={"url": f"sqlite://{db}"})
    client = RawClient(proxy.port)
    assert b"a1 OK" in client.command(b"a1", b"LOGIN alice alicepw")
    filler = fill(tmpfs)
    # iOS takes NO as "no push on this server" for a day: OK, stored in the background.
    answer = register(client, b"a2")
    assert answer.endswith(b"a2 OK XAPPLEPUSHSERVICE completed.\r\n"), answer
    assert b"a3 OK" in client.command(b"a3", b"NOOP")
    wait_until(lambda: proxy.metric("pushproxy_store_errors_total", {"reason": "full"}) >= 1, what="a store error")
    # Mail after the OK, while the device is not stored yet: pushed once it is (the registration's
    # baseline is written with the device, so the watcher that starts then knows this mail is new).
    dovecot.deliver("alice", make_message("while the disk is full"))
    filler.unlink()
    wait_until(lambda: devices_in_store(db) == [("alice", ACCOUNT_ID, TOKEN_A)], timeout=20, what="the device stored")
    assert apns.wait_for(1, timeout=15)[0].path == f"/3/device/{TOKEN_A}"
    proxy.wait_watching()
    dovecot.deliver("alice", make_message("after the disk was freed"))
    assert apns.wait_for(2, timeout=15)[1].path == f"/3/device/{TOKEN_A}"
    assert "no registrations left" not in proxy.log_text()  # the pending device was never taken for none
    assert len(episode_lines(proxy, "store full")) == 1, proxy.log_tail()
