"""The pure mailbox tracker: responses in, events and state out (no server, no I/O)."""

from __future__ import annotations

from pushproxy.events import Expunge, FlagChange, NewMail
from pushproxy.imap.data import Response, SelectInfo, StatusInfo, parse_select, read_response
from pushproxy.store.base import MailboxState
from pushproxy.watch.spec import WatchSpec
from pushproxy.watch.tracker import MailboxTracker


def r(raw: str) -> Response:
    return read_response(raw.encode())


def fetch(uid: int, flags: str = "", seq: int = 1, subject: str = "s") -> Response:
    env = f'(NIL "{subject}" NIL NIL NIL NIL NIL NIL NIL NIL)'
    return r(f"* {seq} FETCH (UID {uid} FLAGS ({flags}) ENVELOPE {env})\r\n")


def tracker(
    boxes: tuple[str, ...] = ("INBOX",), changes: tuple[str, ...] = (), qresync: bool = False
) -> MailboxTracker:
    return MailboxTracker("alice", WatchSpec.of(boxes, changes), qresync=qresync)


def state(box: str = "INBOX", uidvalidity: int = 7, uidnext: int = 5, modseq: int | None = None) -> MailboxState:
    return MailboxState("alice", box, uidvalidity, uidnext, modseq)


def selected(t: MailboxTracker, box: str, info: SelectInfo) -> tuple[str, object]:
    t.selecting()
    t.selected_ok(box)
    return t.on_select(box, info, None)


def test_first_sight_records_state_and_emits_nothing() -> None:
    t = tracker()
    t.load("INBOX", None)
    step, out = selected(t, "INBOX", SelectInfo(uidvalidity=7, uidnext=12))
    assert step == "done" and out.events == []  # type: ignore[attr-defined]
    assert out.save is not None and (out.save.uidvalidity, out.save.uidnext) == (7, 12)  # type: ignore[attr-defined]
    assert t.fetch_from("INBOX") == 12


def test_exists_then_fetch_emits_new_unseen_mail_and_new_uidnext() -> None:
    t = tracker()
    t.load("INBOX", state(uidnext=5))
    step, _ = selected(t, "INBOX", SelectInfo(uidvalidity=7, uidnext=5))
    assert step == "done"
    t.dirty.clear()
    t.note(r("* 9 EXISTS\r\n"), now=100.0)
    assert t.interesting(r("* 9 EXISTS\r\n")) and t.dirty == {"INBOX": 100.0}
    # n:* also returns the last message when its UID is below n: it is not news
    out = t.on_fetch("INBOX", [fetch(4, seq=8), fetch(5, seq=9), fetch(6, "\\Seen", seq=10)], trigger=100.0)
    assert len(out.events) == 1
    ev = out.events[0]
    assert isinstance(ev, NewMail) and ev.uids == (5,) and ev.detected_at == 100.0  # \Seen at delivery: no push
    assert ev.uidvalidity == 7  # the push ledger's key includes it
    assert out.save is not None and out.save.uidnext == 7
    assert t.on_fetch("INBOX", [fetch(6, "\\Seen", seq=10)], None).events == []  # exactly once


def test_reconnect_catch_up_from_stored_state() -> None:
    t = tracker()
    t.load("INBOX", state(uidnext=5))  # stored before the proxy went down
    step, out = selected(t, "INBOX", SelectInfo(uidvalidity=7, uidnext=8))
    assert step == "fetch" and t.fetch_from("INBOX") == 5
    out = t.on_fetch("INBOX", [fetch(5), fetch(6), fetch(7)], None, uidnext_hint=8)
    assert [e.uids for e in out.events if isinstance(e, NewMail)] == [(5, 6, 7)]
    assert out.save is not None and out.save.uidnext == 8


def test_uidvalidity_change_resets_without_events() -> None:
    t = tracker(("INBOX", "Work"))
    t.load("Work", state("Work", uidvalidity=7, uidnext=50))
    examine, out = t.on_status("Work", StatusInfo("Work", uidnext=4, uidvalidity=8))
    assert not examine and out.events == []
    assert out.save is not None and (out.save.uidvalidity, out.save.uidnext) == (8, 4)
    # the same through EXAMINE
    t.load("INBOX", state(uidvalidity=1, uidnext=9))
    step, out2 = selected(t, "INBOX", SelectInfo(uidvalidity=2, uidnext=3))
    assert step == "done" and out2.events == [] and out2.save is not None and out2.save.uidvalidity == 2  # type: ignore[attr-defined]


def test_uidvalidity_change_of_an_empty_mailbox_pushes_what_is_new() -> None:
    # GNU imap4d (mbox): an empty folder gets a new UIDVALIDITY at its first message.
    t = tracker(("INBOX", "Archive"))
    t.load("Archive", state("Archive", uidvalidity=100, uidnext=1))  # never held a message
    examine, out = t.on_status("Archive", StatusInfo("Archive", messages=1, uidnext=2, uidvalidity=200))
    assert examine and out.events == []
    assert out.save is not None and (out.save.uidvalidity, out.save.uidnext) == (200, 1)
    step, _ = selected(t, "Archive", SelectInfo(uidvalidity=200, uidnext=2, exists=1))
    assert step == "fetch" and t.fetch_from("Archive") == 1
    got = t.on_fetch("Archive", [fetch(1, subject="first")], None, uidnext_hint=2)
    assert [(e.mailbox, e.uids, e.uidvalidity) for e in got.events if isinstance(e, NewMail)] == [
        ("Archive", (1,), 200)
    ]
    assert got.save is not None and (got.save.uidvalidity, got.save.uidnext) == (200, 2)
    # the same seen first through EXAMINE (no STATUS before)
    t.load("INBOX", state(uidvalidity=5, uidnext=1))
    step, out2 = selected(t, "INBOX", SelectInfo(uidvalidity=6, uidnext=3, exists=2))
    assert step == "fetch" and out2.events == [] and t.fetch_from("INBOX") == 1  # type: ignore[attr-defined]
    got = t.on_fetch("INBOX", [fetch(1, seq=1), fetch(2, "\\Seen", seq=2)], None, uidnext_hint=3)
    assert [e.uids for e in got.events if isinstance(e, NewMail)] == [(1,)]  # \Seen is passed over as always


def test_uidvalidity_change_after_the_watcher_saw_the_mailbox_empty_pushes_what_is_new() -> None:
    t = tracker(("INBOX", "Archive"))
    t.load("Archive", state("Archive", uidvalidity=100, uidnext=40))  # had messages once
    examine, _ = t.on_status("Archive", StatusInfo("Archive", messages=0, uidnext=40, uidvalidity=100))
    assert not examine  # seen empty (all expunged) under UIDVALIDITY 100
    examine, out = t.on_status("Archive", StatusInfo("Archive", messages=1, uidnext=2, uidvalidity=101))
    assert examine and out.save is not None and (out.save.uidvalidity, out.save.uidnext) == (101, 1)
    # seen with messages again: a later change of UIDVALIDITY is a plain reset
    t.load("INBOX", state(uidvalidity=5, uidnext=9))
    selected(t, "INBOX", SelectInfo(uidvalidity=5, uidnext=9, exists=0))
    t.on_status("INBOX", StatusInfo("INBOX", messages=3, uidnext=12, uidvalidity=5))
    examine, out = t.on_status("INBOX", StatusInfo("INBOX", messages=3, uidnext=4, uidvalidity=6))
    assert not examine and out.events == [] and out.save is not None and out.save.uidnext == 4


def test_status_notifications_mark_watched_mailboxes_only() -> None:
    t = tracker(("INBOX", "Entwürfe"))
    t.load("Entwürfe", state("Entwürfe", uidnext=2))
    t.dirty.clear()
    # Dovecot's NOTIFY with "personal" names mailboxes in raw UTF-8; STATUS answers use modified UTF-7
    t.note(r('* STATUS "Entwürfe" (MESSAGES 2 UIDNEXT 3)\r\n'), now=5.0)
    t.note(r('* STATUS "Spam" (MESSAGES 2 UIDNEXT 3)\r\n'), now=6.0)
    assert t.dirty == {"Entwürfe": 5.0}
    examine, _ = t.on_status("Entwürfe", StatusInfo("Entwürfe", uidnext=3, uidvalidity=7))
    assert examine
    examine, _ = t.on_status("Entwürfe", StatusInfo("Entwürfe", uidnext=2, uidvalidity=7))
    assert not examine
    t.note(r("* OK [NOTIFICATIONOVERFLOW] too many\r\n"), now=9.0)
    assert set(t.dirty) == {"INBOX", "Entwürfe"}


def test_qresync_changes_live_and_on_select() -> None:
    t = tracker(changes=("INBOX",), qresync=True)
    t.load("INBOX", state(uidnext=10, modseq=100))
    assert t.examine_args("INBOX") == b" (QRESYNC (7 100))"
    info = parse_select(
        [
            r("* OK [UIDVALIDITY 7] x\r\n"),
            r("* OK [UIDNEXT 10] x\r\n"),
            r("* OK [HIGHESTMODSEQ 120] x\r\n"),
            r("* VANISHED (EARLIER) 3:4\r\n"),
            r("* 2 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ (110))\r\n"),
        ]
    )
    step, out = selected(t, "INBOX", info)
    assert step == "done"
    kinds = {type(e): e for e in out.events}  # type: ignore[attr-defined]
    assert kinds[Expunge].uids == (3, 4)  # type: ignore[attr-defined]
    assert kinds[FlagChange].changes == ((5, ("\\Flagged",)),)  # type: ignore[attr-defined]
    assert out.save is not None and out.save.highestmodseq == 120  # type: ignore[attr-defined]
    # live, while IDLE (CONDSTORE MODSEQ in FETCH, VANISHED without EARLIER)
    t.dirty.clear()
    for raw in ("* VANISHED 6\r\n", "* 3 FETCH (UID 7 FLAGS (\\Seen) MODSEQ (130))\r\n"):
        assert t.interesting(r(raw))
        t.note(r(raw), now=1.0)
    assert t.dirty == {"INBOX": 1.0}
    out = t.flush_live("INBOX")
    assert [type(e) for e in out.events] == [Expunge, FlagChange]
    assert out.save is not None and out.save.highestmodseq == 130


def test_changes_ignored_without_qresync_or_subscription() -> None:
    t = tracker(qresync=False)
    t.load("INBOX", state())
    selected(t, "INBOX", SelectInfo(uidvalidity=7, uidnext=5))
    t.dirty.clear()
    assert not t.interesting(r("* VANISHED 3\r\n"))
    t.note(r("* VANISHED 3\r\n"))
    t.note(r("* 1 FETCH (FLAGS (\\Seen))\r\n"))  # no UID: nothing to report
    assert t.dirty == {} and t.flush_live("INBOX").events == []


def test_fetch_of_new_uid_marks_and_garbage_is_ignored() -> None:
    t = tracker()
    t.load("INBOX", state(uidnext=5))
    selected(t, "INBOX", SelectInfo(uidvalidity=7, uidnext=5))
    t.dirty.clear()
    t.note(r("* 9 FETCH (UID 5 FLAGS ())\r\n"), now=3.0)
    assert t.dirty == {"INBOX": 3.0}
    t.note(r("* STATUS (((\r\n"))  # unreadable: ignored, not raised
    t.note(r("* 1 FETCH (UID x)\r\n"))
    assert t.on_fetch("INBOX", [r("* 1 FETCH (UID x)\r\n")], None).events == []


def test_unknown_uidnext_asks_for_a_probe() -> None:
    t = tracker()
    t.load("INBOX", None)
    step, _ = selected(t, "INBOX", SelectInfo(uidvalidity=7, uidnext=None))
    assert step == "probe"
    assert t.fresh("INBOX", 7, 4, None).save is not None and t.fetch_from("INBOX") == 4
