"""New-mail detection (sans-IO), watch specs, pacing and credential providers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushproxy.config import Config, ConfigError, WatchConfig
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription
from pushproxy.extensions.xapplepush.store import ApnsDevice, ApnsQueries
from pushproxy.imap.fetch import FetchItems
from pushproxy.store import SqliteStore, StoredCredential, Vault
from pushproxy.watch.credentials import MasterCredentials, MemoryCredentials, VaultCredentials, make_provider
from pushproxy.watch.pacing import ConnectLimiter
from pushproxy.watch.spec import WatchSpec, normalise_mailboxes, notify_set_command
from pushproxy.watch.tracker import MAX_MESSAGES_PER_EVENT, new_messages
from pushproxy.watch.upstream_types import LoginCredentials

# --------------------------------------------------------------------------- new_messages


def fi(uid: int | None, flags: tuple[str, ...] | None = (), envelope: bytes | None = b"(env)") -> FetchItems:
    return FetchItems(seq=1, uid=uid, flags=flags, envelope=envelope)


def test_n_star_returns_last_message_below_n() -> None:
    # "UID FETCH 8:*" on a mailbox whose highest UID is 7 returns UID 7: not new
    found = new_messages([fi(7)], from_uid=8)
    assert found.messages == () and found.uidnext == 8 and found.count == 0


def test_new_unseen_messages_in_order() -> None:
    found = new_messages([fi(9), fi(8), fi(7)], from_uid=8)
    assert [m.uid for m in found.messages] == [8, 9]
    assert found.uidnext == 10
    assert found.messages[0].envelope == b"(env)"


def test_seen_at_detection_is_skipped_but_passed() -> None:
    found = new_messages([fi(5, ("\\Seen",)), fi(6, ("\\Flagged",)), fi(7, ("\\SEEN", "$x"))], from_uid=5)
    assert [m.uid for m in found.messages] == [6]
    assert found.seen_skipped == 2
    assert found.uidnext == 8  # seen ones are not fetched again


def test_uidnext_hint_and_merging() -> None:
    # the server's UIDNEXT can be ahead of the highest UID (expunged meanwhile)
    assert new_messages([fi(3)], from_uid=3, uidnext_hint=10).uidnext == 10
    assert new_messages([], from_uid=3, uidnext_hint=None).uidnext == 3
    # two FETCH responses for one UID (flags first, envelope later) merge
    found = new_messages([fi(4, ("\\Recent",), None), fi(4, None, b"(e)"), fi(None)], from_uid=4)
    assert len(found.messages) == 1
    assert found.messages[0].flags == ("\\Recent",) and found.messages[0].envelope == b"(e)"


def test_cap_keeps_newest() -> None:
    total = MAX_MESSAGES_PER_EVENT + 500  # the cap went from 100 to 2000 with issue 20 (per-message bursts)
    many = [fi(uid) for uid in range(1, total + 1)]
    found = new_messages(many, from_uid=1)
    assert len(found.messages) == MAX_MESSAGES_PER_EVENT
    assert found.messages[-1].uid == total and found.uidnext == total + 1 and found.count == total


@settings(max_examples=200, deadline=None)
@given(
    uids=st.lists(st.integers(min_value=1, max_value=500), max_size=40),
    seen=st.sets(st.integers(min_value=1, max_value=500)),
    from_uid=st.integers(min_value=1, max_value=500),
)
def test_new_messages_properties(uids: list[int], seen: set[int], from_uid: int) -> None:
    items = [fi(u, ("\\Seen",) if u in seen else ()) for u in uids]
    found = new_messages(items, from_uid)
    got = [m.uid for m in found.messages]
    expected = sorted({u for u in uids if u >= from_uid and u not in seen})[-MAX_MESSAGES_PER_EVENT:]
    assert got == expected
    assert found.uidnext >= from_uid
    assert all(u < found.uidnext for u in uids if u >= from_uid)


# --------------------------------------------------------------------------- specs


def test_normalise_mailboxes() -> None:
    assert normalise_mailboxes(["Sent", "inbox", "INBOX", "Archive", "Sent", ""]) == ("INBOX", "Archive", "Sent")
    assert normalise_mailboxes(["b", "a"]) == ("a", "b")
    spec = WatchSpec.of(["Notes", "Inbox"], changes=["INBOX", "Elsewhere"])
    assert spec.primary == "INBOX" and spec.others == ("Notes",) and spec.changes == {"INBOX"}
    assert WatchSpec.of([]).mailboxes == ("INBOX",)
    assert WatchSpec.of(["Notes"]).primary == "Notes"
    assert WatchSpec.of(["INBOX", "x"]) == WatchSpec.of(["x", "inbox"])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "pp.db", Vault.generate())
    await s.open()
    yield s
    await s.close()


def subscription(sub_id: str, *, active: bool = True, want_changes: bool = False) -> WebPushSubscription:
    return WebPushSubscription(
        account="alice",
        sub_id=sub_id,
        endpoint="https://push.example.net/x",
        p256dh="BP" + "A" * 85,
        auth="c2VjcmV0LWF1dGgtMTZi",
        vapid_key_id="k1",
        active=active,
        want_changes=want_changes,
    )


def push_extensions(store: SqliteStore, webpush_mailboxes: list[str]) -> ExtensionManager:
    """Both push extensions, attached to the store (what the supervisor asks what to watch)."""
    config = Config(apns={"enabled": True}, webpush={"enabled": True, "mailboxes": webpush_mailboxes})
    extensions = ExtensionManager.for_config(config)
    extensions.attach(config, store)
    return extensions


async def test_spec_for_account(store: SqliteStore) -> None:
    # Was spec_for_account(store, account, webpush_mailboxes) in watch/detection.py; the
    # extensions now say what they want watched and the host merges it (same assertions).
    assert await push_extensions(store, ["INBOX"]).spec("alice") is None
    await store.queries(ApnsQueries).upsert_device(
        ApnsDevice("alice", "a1", "aa" * 32, mailboxes=["Inbox", "Sent Messages"])
    )
    await store.queries(ApnsQueries).upsert_device(ApnsDevice("alice", "a2", "bb" * 32, mailboxes=["Notes"]))
    spec = await push_extensions(store, ["INBOX", "Junk"]).spec("alice")
    assert spec == WatchSpec(("INBOX", "Notes", "Sent Messages"), frozenset())
    await store.queries(WebPushQueries).put_subscription(
        subscription("s1", active=False)
    )  # still being verified: watched too
    spec = await push_extensions(store, ["INBOX", "Junk"]).spec("alice")
    # Changed with issue 13: every WebPush subscription gets expunges and flag changes
    # in the WebPush mailboxes (was: only with want_changes, which nothing could set).
    assert spec is not None and spec.mailboxes == ("INBOX", "Junk", "Notes", "Sent Messages")
    assert spec.changes == {"INBOX", "Junk"}


# --------------------------------------------------------------------------- pacing


async def test_connect_limiter_spaces_acquisitions() -> None:
    limiter = ConnectLimiter(rate=100.0, burst=1.0)
    start = time.monotonic()
    await asyncio.gather(*(limiter.acquire() for _ in range(6)))
    # 1 from the burst, then 5 more at 100/s: at least ~50 ms (a lower bound, never a speed claim)
    assert time.monotonic() - start >= 0.045
    with pytest.raises(ValueError):
        ConnectLimiter(0)


# --------------------------------------------------------------------------- credentials


async def test_memory_credentials() -> None:
    p = MemoryCredentials()
    assert await p.get("alice") is None and await p.status("alice") == "missing"
    assert await p.remember("alice", "Alice", "pw") is True
    assert await p.remember("alice", "Alice", "pw") is False
    creds = await p.get("alice")
    assert creds == LoginCredentials("Alice", "pw") and "pw" not in repr(creds)
    await p.mark_failed("alice")
    assert await p.get("alice") is None and await p.status("alice") == "failed"
    assert await p.remember("alice", "Alice", "pw") is True  # a new good login un-fails it
    await p.forget("alice")
    assert await p.status("alice") == "missing"


async def test_vault_credentials(store: SqliteStore) -> None:
    p = VaultCredentials(store)
    assert await p.remember("alice", "Alice", "pw1") is True
    assert await p.remember("alice", "Alice", "pw1") is False
    assert (await store.get_credential("alice")).secret == "pw1"  # type: ignore[union-attr]
    assert await p.remember("alice", "Alice", "pw2") is True  # password changed
    assert (await p.get("alice")) == LoginCredentials("Alice", "pw2")
    await p.mark_failed("alice")
    assert (await store.get_credential("alice")).stale  # type: ignore[union-attr]
    assert await p.get("alice") is None and await p.status("alice") == "failed"
    assert await p.remember("alice", "Alice", "pw2") is True  # same password, but stale: store again
    assert not (await store.get_credential("alice")).stale  # type: ignore[union-attr]
    # a record written by someone else (another process) is honoured
    await store.put_credential(StoredCredential("alice", "Alice", "pw3"))
    fresh = VaultCredentials(store)
    assert await fresh.remember("alice", "Alice", "pw3") is False
    await p.forget("alice")
    assert await store.get_credential("alice") is None


async def test_master_credentials() -> None:
    sep = MasterCredentials("admin", "adminpw")
    assert not sep.needs_user_login
    assert await sep.get("alice") == LoginCredentials("alice*admin", "adminpw")
    await sep.remember("alice", "Alice", "userpw")  # the user's own password is not used
    assert await sep.get("alice") == LoginCredentials("Alice*admin", "adminpw")
    await sep.mark_failed("alice")
    assert await sep.get("alice") is None and await sep.status("alice") == "failed"
    assert await sep.remember("alice", "Alice", "x") is True
    sasl = MasterCredentials("admin", "adminpw", style="sasl")
    assert await sasl.get("bob") == LoginCredentials("admin", "adminpw", mechanism="plain", authzid="bob")
    with pytest.raises(ConfigError):
        MasterCredentials("admin", "")


async def test_make_provider(store: SqliteStore, tmp_path: Path) -> None:
    assert make_provider(Config(watch=WatchConfig(credentials="vault")), store).mode == "vault"
    assert make_provider(Config(watch=WatchConfig(credentials="memory")), store).mode == "memory"
    with pytest.raises(ConfigError):
        make_provider(Config(watch=WatchConfig(credentials="master")), store)
    pw = tmp_path / "master.pw"
    pw.write_text("s3cret\n")
    cfg = Config(watch=WatchConfig(credentials="master", master_user="admin", master_password_file=pw))
    provider = make_provider(cfg, store)
    assert await provider.get("alice") == LoginCredentials("alice*admin", "s3cret")


def test_poll_schedule_fast_after_activity_slow_when_quiet() -> None:
    from pushproxy.watch.pacing import PollSchedule

    s = PollSchedule(fastest=10, slowest=60)
    s.set_mailboxes(["Sent", "Work"], now=0)
    assert s.next_due() == 10 and s.due(5) == []
    assert s.due(10) == ["Sent", "Work"]  # then 20 s, 40 s, 60 s, 60 s ...
    assert s.next_due() == 30
    assert s.due(30) == ["Sent", "Work"] and s.next_due() == 70
    assert s.due(70) == ["Sent", "Work"] and s.next_due() == 130
    assert s.due(130) and s.next_due() == 190  # capped at slowest
    s.activity(150)
    assert s.next_due() == 160  # soon again after activity
    s.set_mailboxes(["Work"], now=150)
    assert s.mailboxes == ["Work"]
    # the load bound: never more than one poll per mailbox per `fastest` seconds
    s2 = PollSchedule(fastest=10, slowest=60)
    s2.set_mailboxes(["A"], now=0)
    polls, t = 0, 0.0
    while t < 1000:
        polls += len(s2.due(t))
        s2.activity(t)
        t += 1
    assert polls <= 1000 / 10 + 1


def test_notify_set_names_the_selected_and_the_other_mailboxes() -> None:
    spec = WatchSpec.of(["INBOX", "Work"], ["Work"])
    assert notify_set_command(spec, qresync=True) == (
        b"NOTIFY SET (selected (MessageNew MessageExpunge FlagChange))"
        b' (mailboxes ("Work") (MessageNew MessageExpunge FlagChange))'
    )
    # Without QRESYNC no flag changes (no UIDs in them); a non-ASCII name: "personal" (Dovecot 2.3).
    assert notify_set_command(WatchSpec.of(["INBOX", "Büro"]), qresync=False) == (
        b"NOTIFY SET (selected (MessageNew MessageExpunge)) (personal (MessageNew MessageExpunge))"
    )
    only_inbox = WatchSpec.of(["INBOX"])
    assert notify_set_command(only_inbox, qresync=True) == b"NOTIFY SET (selected (MessageNew MessageExpunge))"
