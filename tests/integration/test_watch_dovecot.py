"""Upstream watchers against a real Dovecot: NOTIFY, IDLE + polling, reconnects, restarts, credentials."""

from __future__ import annotations

import asyncio
import imaplib
import sqlite3
from pathlib import Path

import pytest

from pushproxy.events import Expunge, FlagChange, NewMail
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription
from pushproxy.extensions.xapplepush.store import ApnsQueries
from pushproxy.store import SqliteStore, StoredCredential, Vault, VaultError
from tests.support import watching
from tests.support.dovecot import Dovecot
from tests.support.dovecot_fixtures import DovecotFactory
from tests.support.waiting import async_assert_quiet
from tests.support.watching import (
    TOKEN,
    Events,
    deliver,
    make_config,
    new_supervisor,
    register,
    wait_state,
    wait_stored_uidnext,
    wait_until,
    watcher_reconnects,
)

pytestmark = pytest.mark.timeout(90)

# the shared pytest fixtures (tests/support/watching.py)
vault, store, supervisors = watching.vault, watching.store, watching.supervisors

# ---------------------------------------------------------------------------------------------


async def test_new_mail_in_inbox_via_notify(dovecot: Dovecot, tmp_path: Path, store: SqliteStore, supervisors) -> None:
    events = Events()
    sup = new_supervisor(supervisors, make_config(dovecot, tmp_path), store, events)
    await sup.start()
    await register(store)
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup, "idle")
    assert events.items == []  # first sight: state recorded, nothing emitted

    sent = await deliver(dovecot, "hello watcher")
    await events.wait(lambda: len(events.new_mail()) == 1)
    arrived = events.items[0][0]
    print(f"\ndelivery -> NewMail: {arrived - sent:.3f} s")
    ev = events.new_mail()[0]
    assert ev.account == "alice" and ev.mailbox == "INBOX" and ev.uids == (1,)
    assert ev.source == "watcher"
    assert ev.messages[0].envelope is not None and b'"hello watcher"' in ev.messages[0].envelope
    assert ev.messages[0].envelope.startswith(b"(") and ev.messages[0].envelope.endswith(b")")
    assert not ev.messages[0].seen

    await deliver(dovecot, "second")
    await events.wait(lambda: len(events.new_mail()) == 2)
    # Ordering, not a sleep: a third message is reported after anything still due for the first two.
    await deliver(dovecot, "third")
    await events.wait(lambda: len(events.uids()) >= 3)
    assert events.uids() == [1, 2, 3]  # exactly once each
    await wait_stored_uidnext(store, "INBOX", 4)
    state = await store.get_mailbox_state("alice", "INBOX")
    assert state is not None and state.uidnext == 4
    assert sup.status()["idle"] == 1


async def test_other_mailbox_via_notify(dovecot: Dovecot, tmp_path: Path, store: SqliteStore, supervisors) -> None:
    events = Events()
    sup = new_supervisor(supervisors, make_config(dovecot, tmp_path), store, events)
    await register(store, mailboxes=["inbox", "Sent Messages"])
    await sup.logged_in("Alice", "Alice", "alicepw", "s1")
    await wait_state(sup, "idle")  # NOTIFY covers both mailboxes

    sent = await deliver(dovecot, "sent copy", mailbox="Sent Messages")
    await events.wait(lambda: len(events.new_mail("Sent Messages")) == 1)
    print(f"\ndelivery to 'Sent Messages' -> NewMail: {events.items[0][0] - sent:.3f} s")
    ev = events.new_mail("Sent Messages")[0]
    assert ev.uids == (1,) and ev.account == "alice"
    assert b'"sent copy"' in (ev.messages[0].envelope or b"")

    # back on INBOX after fetching from the other mailbox: INBOX still works
    await deliver(dovecot, "inbox mail")
    await events.wait(lambda: len(events.new_mail("INBOX")) == 1)
    await deliver(dovecot, "sent again", mailbox="Sent Messages")
    await events.wait(lambda: len(events.new_mail("Sent Messages")) == 2)
    await deliver(dovecot, "inbox again")  # reported after anything still due for the others
    await events.wait(lambda: len(events.uids("INBOX")) >= 2)
    assert events.uids("Sent Messages") == [1, 2]
    assert events.uids("INBOX") == [1, 2]
    # the stored credential is bound to the normalised account, with the login as typed
    cred = await store.get_credential("alice")
    assert cred is not None and cred.login == "Alice" and not cred.stale


async def test_poll_path_without_notify(dovecot_factory: DovecotFactory, tmp_path: Path, store, supervisors) -> None:
    dc = dovecot_factory(notify=False)
    events = Events()
    sup = new_supervisor(supervisors, make_config(dc, tmp_path, poll_interval=0.5), store, events)
    await register(store, mailboxes=["INBOX", "Sent Messages"])
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup, "polling")

    sent = await deliver(dc, "idle path")
    await events.wait(lambda: len(events.new_mail("INBOX")) == 1)
    print(f"\nIDLE (no NOTIFY): delivery -> NewMail: {events.items[-1][0] - sent:.3f} s")
    sent = await deliver(dc, "polled", mailbox="Sent Messages")
    await events.wait(lambda: len(events.new_mail("Sent Messages")) == 1, timeout=5)
    print(f"polled mailbox: delivery -> NewMail: {events.items[-1][0] - sent:.3f} s")
    # Another poll round must run to see a second message: it reports only that one.
    await deliver(dc, "polled again", mailbox="Sent Messages")
    await events.wait(lambda: len(events.uids("Sent Messages")) >= 2, timeout=5)
    assert events.uids("INBOX") == [1]
    assert events.uids("Sent Messages") == [1, 2]
    assert b'"polled"' in (events.new_mail("Sent Messages")[0].messages[0].envelope or b"")


@pytest.mark.parametrize("security", ["tls", "none"])
async def test_other_transports(dovecot: Dovecot, tmp_path: Path, store, supervisors, security: str) -> None:
    events = Events()
    sup = new_supervisor(supervisors, make_config(dovecot, tmp_path, security=security), store, events)
    await register(store)
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup, "idle")
    await deliver(dovecot, f"over {security}")
    await events.wait(lambda: len(events.new_mail()) == 1)


async def test_tls_verification_failure_backs_off(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    config = make_config(dovecot, tmp_path, security="tls")
    config.upstream.ca_file = None  # the test CA is not in the system store
    events = Events()
    sup = new_supervisor(supervisors, config, store, events)
    await register(store)
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    await wait_until(lambda: sup.status()["backoff"] == 1 or sup.status()["connecting"] == 1)
    # Two failed handshakes later (each one counts a reconnect), it still has not logged in.
    reconnects = watcher_reconnects()
    await wait_until(lambda: watcher_reconnects() >= reconnects + 2, 10, "two more attempts")
    assert sup.status()["idle"] == 0
    assert dovecot.login_attempts("alice") == 0  # never sent the password over an unverified channel


async def test_reconnect_after_kill_and_restart(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    events = Events()
    sup = new_supervisor(supervisors, make_config(dovecot, tmp_path), store, events)
    await register(store)
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup, "idle")
    await deliver(dovecot, "before")
    await events.wait(lambda: events.uids() == [1])
    watcher = sup.watcher("alice")
    assert watcher is not None and watcher.connections == 1

    # crash: SIGKILL, then start again and deliver before the watcher is back
    await asyncio.to_thread(dovecot.kill)
    await wait_until(lambda: sup.status()["idle"] == 0, 10, "watcher noticing the crash")
    await asyncio.to_thread(dovecot.start)
    await deliver(dovecot, "while away 1")
    await deliver(dovecot, "while away 2")
    await events.wait(lambda: events.uids() == [1, 2, 3], timeout=10)
    await wait_state(sup, "idle")

    # clean restart: Dovecot says BYE to the idling watcher
    await asyncio.to_thread(dovecot.restart)
    await deliver(dovecot, "after restart")
    await events.wait(lambda: events.uids() == [1, 2, 3, 4], timeout=10)
    await wait_state(sup, "idle")
    await deliver(dovecot, "live again")
    await events.wait(lambda: events.uids() == [1, 2, 3, 4, 5], timeout=10)
    await deliver(dovecot, "and once more")  # reported after anything still due for the others
    await events.wait(lambda: len(events.uids()) >= 6, timeout=10)
    assert events.uids() == [1, 2, 3, 4, 5, 6]  # each message exactly once
    assert watcher.connections >= 3


async def test_proxy_restart_emits_missed_mail_once(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    config = make_config(dovecot, tmp_path)
    events1 = Events()
    sup1 = new_supervisor(supervisors, config, store, events1)
    await register(store, mailboxes=["INBOX", "Sent Messages"])
    await sup1.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup1, "idle")
    await deliver(dovecot, "seen by the first proxy")
    await events1.wait(lambda: events1.uids() == [1])
    await sup1.close()
    assert sup1.status()["stopped"] == 1

    await deliver(dovecot, "missed 1")
    await deliver(dovecot, "missed 2")
    await deliver(dovecot, "missed sent", mailbox="Sent Messages")

    events2 = Events()
    sup2 = new_supervisor(supervisors, config, store, events2)
    await sup2.start()  # vault: the stored credential is enough, no login needed
    await events2.wait(lambda: events2.uids() == [2, 3] and events2.uids("Sent Messages") == [1], timeout=10)
    await wait_state(sup2, "idle")
    assert len(events2.new_mail("INBOX")) == 1  # one event per detection, both messages in it
    subjects = b"".join(m.envelope or b"" for m in events2.new_mail("INBOX")[0].messages)
    assert b"missed 1" in subjects and b"missed 2" in subjects
    await sup2.close()

    # a third start: nothing new, nothing emitted (the next message is the first thing it reports)
    events3 = Events()
    sup3 = new_supervisor(supervisors, config, store, events3)
    await sup3.start()
    await wait_state(sup3, "idle")
    await deliver(dovecot, "after the third start")
    await events3.wait(lambda: len(events3.items) >= 1)
    assert [(type(e), e.mailbox, e.uids) for _, e in events3.items] == [(NewMail, "INBOX", (4,))]


async def test_seen_at_detection_is_skipped(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    """A message already \\Seen when the watcher looks (read elsewhere while the proxy was down)."""
    config = make_config(dovecot, tmp_path)
    sup1 = new_supervisor(supervisors, config, store, Events())
    await register(store)
    await sup1.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup1, "idle")
    await sup1.close()

    await deliver(dovecot, "read elsewhere")
    await deliver(dovecot, "still unread")

    def mark_first_seen() -> None:
        imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
        imap.login("alice", "alicepw")
        imap.select("INBOX")
        imap.uid("STORE", "1", "+FLAGS", "(\\Seen)")
        imap.logout()

    await asyncio.to_thread(mark_first_seen)
    events = Events()
    sup2 = new_supervisor(supervisors, config, store, events)
    await sup2.start()
    await events.wait(lambda: events.uids() == [2])
    await wait_stored_uidnext(store, "INBOX", 3)
    state = await store.get_mailbox_state("alice", "INBOX")
    assert state is not None and state.uidnext == 3  # the seen one is passed over
    await deliver(dovecot, "next")  # the next detection does not retry it either
    await events.wait(lambda: len(events.uids()) >= 2)
    assert events.uids() == [2, 3]


async def test_wrong_password_stops_without_retry_loop(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    await register(store)
    await store.put_credential(StoredCredential(account="alice", login="alice", secret="wrong-password"))
    events = Events()
    fast_retries = make_config(dovecot, tmp_path, backoff_min=0.05, backoff_max=0.2)
    sup = new_supervisor(supervisors, fast_retries, store, events)
    await sup.start()
    await wait_state(sup, "auth_failed")
    cred = await store.get_credential("alice")
    assert cred is not None and cred.stale
    # A retry loop would leave auth_failed for a backoff (at most 0.2 s) at least twice in this period.
    only_failed = {**dict.fromkeys(sup.status(), 0), "auth_failed": 1}
    await async_assert_quiet(lambda: sup.status() == only_failed, period=0.5, what="auth_failed, nothing else")
    attempts = await asyncio.to_thread(dovecot.login_attempts, "alice")
    assert 1 <= attempts <= 2, attempts
    assert sup.status()["auth_failed"] == 1

    # a proxy restart does not retry the stale credential either
    sup2 = new_supervisor(supervisors, fast_retries, store, events)
    await sup.close()
    await sup2.start()
    await wait_state(sup2, "auth_failed")
    await async_assert_quiet(lambda: sup2.status() == only_failed, what="auth_failed, nothing else")
    assert await asyncio.to_thread(dovecot.login_attempts, "alice") == attempts

    # the user's next successful login (new password) replaces the record and restarts the watcher
    await sup2.logged_in("alice", "alice", "alicepw", "s2")
    await wait_state(sup2, "idle")
    # ordering: the one login since the restart is that successful one (no retry of the stale record)
    assert await asyncio.to_thread(dovecot.login_attempts, "alice") == attempts + 1
    cred = await store.get_credential("alice")
    assert cred is not None and not cred.stale and cred.secret == "alicepw"
    await deliver(dovecot, "works again")
    await events.wait(lambda: events.uids() == [1])


async def test_password_change_replaces_stored_credential(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    events = Events()
    sup = new_supervisor(supervisors, make_config(dovecot, tmp_path), store, events)
    await register(store)
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup, "idle")
    await asyncio.to_thread(dovecot.add_user, "alice", "newpw")
    await sup.logged_in("alice", "alice", "newpw", "s2")
    cred = await store.get_credential("alice")
    assert cred is not None and cred.secret == "newpw" and not cred.stale
    # the running connection stays; the next reconnect uses the new password
    await asyncio.to_thread(dovecot.restart)
    await wait_state(sup, "idle", timeout=15)
    await deliver(dovecot, "after password change")
    await events.wait(lambda: events.uids() == [1])


@pytest.mark.parametrize("style", ["separator", "sasl"])
async def test_master_user_mode(dovecot_factory: DovecotFactory, tmp_path: Path, store, supervisors, style) -> None:
    dc = dovecot_factory(master_user=("admin", "adminpw"))
    config = make_config(dc, tmp_path, credentials="master", master_user="admin", master_password="adminpw")
    events = Events()
    sup = new_supervisor(supervisors, config, store, events, master_style=style)
    await register(store)
    await sup.start()  # no user login needed
    await wait_state(sup, "idle")
    await deliver(dc, "via master user")
    await events.wait(lambda: events.uids() == [1])
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    assert await store.get_credential("alice") is None  # no user password is stored


async def test_master_user_wrong_password(dovecot_factory: DovecotFactory, tmp_path: Path, store, supervisors) -> None:
    dc = dovecot_factory(master_user=("admin", "adminpw"))
    master = {"credentials": "master", "master_user": "admin", "master_password": "nope"}
    config = make_config(dc, tmp_path, backoff_min=0.05, backoff_max=0.2, **master)
    sup = new_supervisor(supervisors, config, store, Events())
    await register(store)
    await sup.start()
    await wait_state(sup, "auth_failed")
    # A retry loop would leave auth_failed for a backoff (at most 0.2 s) at least twice in this period.
    only_failed = {**dict.fromkeys(sup.status(), 0), "auth_failed": 1}
    await async_assert_quiet(lambda: sup.status() == only_failed, period=0.5, what="auth_failed, nothing else")
    assert sup.status()["auth_failed"] == 1


async def test_memory_mode_resumes_after_next_login(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    config = make_config(dovecot, tmp_path, credentials="memory")
    events1 = Events()
    sup1 = new_supervisor(supervisors, config, store, events1)
    await register(store)
    await sup1.start()
    assert sum(sup1.status().values()) == 0  # nothing known yet
    await sup1.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup1, "idle")
    assert await store.get_credential("alice") is None
    await sup1.close()

    await deliver(dovecot, "while the proxy restarted")
    events2 = Events()
    sup2 = new_supervisor(supervisors, config, store, events2)
    await sup2.start()
    await async_assert_quiet(
        lambda: sum(sup2.status().values()) == 0 and events2.items == [], what="no watcher before a login"
    )
    await sup2.logged_in("alice", "alice", "alicepw", "s2")
    await events2.wait(lambda: events2.uids() == [1])


async def test_registration_changes(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    events = Events()
    sup = new_supervisor(supervisors, make_config(dovecot, tmp_path), store, events)
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    assert await store.get_credential("alice") is None  # no registration: nothing stored
    assert sum(sup.status().values()) == 0

    await register(store)  # the XAPPLEPUSHSERVICE handler stored a device in session s1
    await sup.registration_changed("alice", "s1")
    await wait_state(sup, "idle")
    assert await store.get_credential("alice") is not None
    first = sup.watcher("alice")
    assert first is not None and first.spec.mailboxes == ("INBOX",)

    await register(store, mailboxes=["INBOX", "Notes"])
    await sup.registration_changed("alice", "s1")
    await wait_state(sup, "idle")
    second = sup.watcher("alice")
    assert second is not None and second is not first and second.spec.mailboxes == ("INBOX", "Notes")
    await deliver(dovecot, "a note", mailbox="Notes")
    await events.wait(lambda: events.uids("Notes") == [1])

    await sup.registration_changed("alice", "s1")  # nothing changed: the same watcher stays
    assert sup.watcher("alice") is second

    await sup.session_closed("s1")
    await store.queries(ApnsQueries).remove_device("alice", None, TOKEN)
    await sup.registration_changed("alice", None)
    assert sup.watcher("alice") is None
    assert sum(sup.status().values()) == 0
    assert await store.get_credential("alice") is None
    assert await store.get_mailbox_state("alice", "INBOX") is None


async def test_webpush_changes(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    """want_changes subscriptions get Expunge / FlagChange events (QRESYNC)."""
    events = Events()
    sup = new_supervisor(supervisors, make_config(dovecot, tmp_path), store, events)
    await store.queries(WebPushQueries).put_subscription(
        WebPushSubscription(
            account="alice",
            sub_id="sub1",
            endpoint="https://push.example.net/x",
            p256dh="BP" + "A" * 85,
            auth="c2VjcmV0LWF1dGgtMTZi",
            vapid_key_id="k1",
            active=True,
            want_changes=True,
        )
    )
    await deliver(dovecot, "one")
    await deliver(dovecot, "two")
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup, "idle")

    def change_flags_and_expunge() -> None:
        imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
        imap.login("alice", "alicepw")
        imap.select("INBOX")
        imap.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
        imap.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
        imap.expunge()
        imap.logout()

    await asyncio.to_thread(change_flags_and_expunge)
    await events.wait(lambda: any(isinstance(e, Expunge) for _, e in events.items))
    await events.wait(lambda: any(isinstance(e, FlagChange) and 1 in dict(e.changes) for _, e in events.items))
    expunged = [uid for _, e in events.items if isinstance(e, Expunge) for uid in e.uids]
    assert expunged == [2]
    flagged = {uid: f for _, e in events.items if isinstance(e, FlagChange) for uid, f in e.changes}
    assert "\\Flagged" in flagged[1]


async def test_vault_record_is_encrypted_and_bound(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    sup = new_supervisor(supervisors, make_config(dovecot, tmp_path), store, Events())
    await register(store)
    await register(store, account="bob")
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    raw = sqlite3.connect(tmp_path / "pushproxy.db")
    try:
        (blob,) = raw.execute("SELECT secret FROM credentials WHERE account = 'alice'").fetchone()
        assert b"alicepw" not in bytes(blob)
        # moving alice's record to bob does not give bob a password: the ciphertext is bound to alice
        raw.execute(
            "INSERT INTO credentials (account, login, secret, stale, updated) VALUES ('bob', 'bob', ?, 0, 0)", (blob,)
        )
        raw.commit()
    finally:
        raw.close()
    with pytest.raises(VaultError):
        await store.get_credential("bob")
    # without the key (another vault) the record cannot be read
    other = SqliteStore(tmp_path / "pushproxy.db", Vault.generate())
    await other.open()
    try:
        with pytest.raises(VaultError):
            await other.get_credential("alice")
        # a watcher on such a store waits for a login instead of failing in a loop
        sup2 = new_supervisor(supervisors, make_config(dovecot, tmp_path), other, Events())
        await sup2.start()
        assert sup2.status()["idle"] == 0 and sup2.status()["connecting"] == 0
    finally:
        await other.close()


@pytest.mark.parametrize("notify", [True, False])
async def test_mailbox_created_later(
    dovecot_factory: DovecotFactory, tmp_path: Path, store, supervisors, notify: bool
) -> None:
    """A registered mailbox that does not exist yet is picked up once it does (no reconnect loop)."""
    dc = dovecot_factory(notify=notify)
    events = Events()
    sup = new_supervisor(supervisors, make_config(dc, tmp_path, poll_interval=0.3), store, events)
    await register(store, mailboxes=["INBOX", "Projects"])
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup, "idle" if notify else "polling")
    await deliver(dc, "inbox works")
    await events.wait(lambda: events.uids() == [1])

    await asyncio.to_thread(dc.create_mailbox, "alice", "Projects")
    # a poll round notices it (first sight: state recorded, nothing emitted)
    await wait_stored_uidnext(store, "Projects", 1)
    await deliver(dc, "project mail", mailbox="Projects")
    await events.wait(lambda: events.uids("Projects") == [1], timeout=5)
    watcher = sup.watcher("alice")
    # with NOTIFY the watcher reconnects once to include the new mailbox; no loop either way
    assert watcher is not None and watcher.connections == (2 if notify else 1)


async def test_uidvalidity_change_on_dovecot(dovecot: Dovecot, tmp_path: Path, store, supervisors) -> None:
    await asyncio.to_thread(dovecot.create_mailbox, "alice", "Projects")
    config = make_config(dovecot, tmp_path)
    events1 = Events()
    sup1 = new_supervisor(supervisors, config, store, events1)
    await register(store, mailboxes=["INBOX", "Projects"])
    await sup1.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup1, "idle")
    await deliver(dovecot, "before", mailbox="Projects")
    await events1.wait(lambda: events1.uids("Projects") == [1])
    await sup1.close()
    old = await store.get_mailbox_state("alice", "Projects")

    await asyncio.to_thread(dovecot.doveadm, "mailbox", "delete", "-u", "alice", "Projects")
    await asyncio.to_thread(dovecot.create_mailbox, "alice", "Projects")
    for i in range(3):
        await deliver(dovecot, f"rebuilt {i}", mailbox="Projects")

    events2 = Events()
    sup2 = new_supervisor(supervisors, config, store, events2)
    await sup2.start()
    await wait_state(sup2, "idle")
    assert events2.items == []  # no flood for the rebuilt mailbox (checked again below, after the next mail)
    new = await store.get_mailbox_state("alice", "Projects")
    assert old is not None and new is not None and new.uidvalidity != old.uidvalidity and new.uidnext == 4
    await deliver(dovecot, "after", mailbox="Projects")
    await events2.wait(lambda: len(events2.items) >= 1)
    assert [(type(e), e.mailbox, e.uids) for _, e in events2.items] == [(NewMail, "Projects", (4,))]
