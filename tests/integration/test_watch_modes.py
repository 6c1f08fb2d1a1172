"""Watcher modes against a real Dovecot: non-ASCII mailboxes with NOTIFY, several IDLE connections without it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from pushproxy.store import SqliteStore
from tests.support import watching
from tests.support.dovecot import Dovecot
from tests.support.dovecot_fixtures import DovecotFactory
from tests.support.watching import Events, deliver, make_config, new_supervisor, register, wait_state, wait_until

pytestmark = pytest.mark.timeout(90)

# the shared pytest fixtures (tests/support/watching.py)
vault, store, supervisors = watching.vault, watching.store, watching.supervisors


async def test_non_ascii_mailbox_via_notify(
    dovecot: Dovecot, tmp_path: Path, store: SqliteStore, supervisors, caplog: pytest.LogCaptureFixture
) -> None:
    """Dovecot 2.3 never fires NOTIFY for ("Entw&APw-rfe") in "mailboxes": the watcher uses "personal"."""
    caplog.set_level(logging.DEBUG, logger="pushproxy.watch")
    await asyncio.to_thread(dovecot.create_mailbox, "alice", "Entwürfe")
    await asyncio.to_thread(dovecot.create_mailbox, "alice", "Sent Messages")
    # Polling far away: only a notification can explain a prompt event.
    config = make_config(dovecot, tmp_path, poll_interval=300.0, poll_interval_active=300.0)
    events = Events()
    sup = new_supervisor(supervisors, config, store, events)
    await register(store, mailboxes=["INBOX", "Entwürfe", "Sent Messages"])
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup, "idle")
    watcher = sup.watcher("alice")
    assert watcher is not None

    sent = await deliver(dovecot, "Entwurf", mailbox="Entwürfe")
    await events.wait(lambda: events.uids("Entwürfe") == [1], timeout=10)
    print(f"\ndelivery to 'Entwürfe' -> NewMail: {events.items[-1][0] - sent:.3f} s")
    # mail to an unwatched mailbox is reported by "personal" too, and ignored
    await deliver(dovecot, "spam", mailbox="Junk")
    await deliver(dovecot, "again", mailbox="Entwürfe")
    await deliver(dovecot, "sent copy", mailbox="Sent Messages")
    await events.wait(lambda: events.uids("Entwürfe") == [1, 2] and events.uids("Sent Messages") == [1], timeout=10)
    await deliver(dovecot, "inbox")
    await events.wait(lambda: events.uids("INBOX") == [1], timeout=10)
    assert {e.mailbox for e in events.new_mail()} == {"INBOX", "Entwürfe", "Sent Messages"}
    assert watcher.connections == 1  # no reconnect was needed

    # item 6: one INFO line on connect, DEBUG per detection, never credentials
    connects = [r for r in caplog.records if "connected (" in r.getMessage()]
    assert len(connects) == 1 and connects[0].levelno == logging.INFO
    assert "NOTIFY" in connects[0].getMessage() and "Entwürfe" in connects[0].getMessage()
    assert any(r.levelno == logging.DEBUG and "1 new" in r.getMessage() for r in caplog.records)
    assert "alicepw" not in caplog.text


async def test_several_idle_connections_without_notify(
    dovecot_factory: DovecotFactory, tmp_path: Path, store: SqliteStore, supervisors, caplog: pytest.LogCaptureFixture
) -> None:
    """watch.idle_connections: 3 IDLEs on three mailboxes; the fourth is polled (adaptively)."""
    caplog.set_level(logging.INFO, logger="pushproxy.watch")
    dc = dovecot_factory(notify=False)
    for name in ("Notes", "Sent Messages", "Work"):
        await asyncio.to_thread(dc.create_mailbox, "alice", name)
        # Open it once: without a mailbox list index, Dovecot gives a fresh maildir its UIDVALIDITY
        # at first open, and two connections opening it at once can each pick one (a real reset).
        await asyncio.to_thread(dc.doveadm, "mailbox", "status", "-u", "alice", "uidvalidity", name)
    config = make_config(dc, tmp_path, idle_connections=3, poll_interval=2.0, poll_interval_active=0.5)
    events = Events()
    sup = new_supervisor(supervisors, config, store, events)
    await register(store, mailboxes=["INBOX", "Notes", "Sent Messages", "Work"])
    await sup.logged_in("alice", "alice", "alicepw", "s1")
    await wait_state(sup, "polling")  # "Work" is polled
    watcher = sup.watcher("alice")
    assert watcher is not None

    # wait until the extra connections IDLE (Dovecot shows three IMAP sessions of alice)
    await wait_until(lambda: dc.doveadm("who", "-1", check=False).stdout.count("alice") >= 3, 10, "3 sessions")
    for box in ("Notes", "Sent Messages"):  # IDLEd by the extra connections: prompt, not the 2 s poll
        sent = await deliver(dc, f"to {box}", mailbox=box)
        await events.wait(lambda box=box: events.uids(box) == [1], timeout=5)
        print(f"\nIDLE on an extra connection, {box}: delivery -> NewMail {events.items[-1][0] - sent:.3f} s")
    sent = await deliver(dc, "polled", mailbox="Work")
    await events.wait(lambda: events.uids("Work") == [1], timeout=8)
    print(f"polled mailbox: delivery -> NewMail {events.items[-1][0] - sent:.3f} s")
    await deliver(dc, "inbox")
    await events.wait(lambda: events.uids("INBOX") == [1], timeout=5)
    # A second message everywhere: each connection (and a poll round) reports it after anything
    # still due for the first ones, so this is "exactly once" without a fixed sleep.
    boxes = ("INBOX", "Notes", "Sent Messages", "Work")
    for box in boxes:
        await deliver(dc, f"again to {box}", mailbox=box)
    await events.wait(lambda: all(len(events.uids(b)) >= 2 for b in boxes), timeout=8)
    assert [events.uids(b) for b in boxes] == [[1, 2], [1, 2], [1, 2], [1, 2]]
    assert watcher.connections == 1
    connects = [r.getMessage() for r in caplog.records if "connected (" in r.getMessage()]
    assert len(connects) == 1 and "IDLE+poll" in connects[0] and "IDLE connections: 3" in connects[0]
    assert "alicepw" not in caplog.text
