"""The tracker's decisions that only the Dovecot tests covered: STATUS hints, UIDVALIDITY resets,
\\Seen at detection, VANISHED and flag changes, MODSEQ bookkeeping (no server, no I/O).

The Dovecot counterparts: tests/integration/test_watch_dovecot.py (test_seen_at_detection_is_skipped,
test_uidvalidity_change_on_dovecot, test_webpush_changes, test_proxy_restart_emits_missed_mail_once).
"""

from __future__ import annotations

from pushproxy.events import Expunge, FlagChange, NewMail
from pushproxy.imap.data import SelectInfo, StatusInfo, parse_select
from pushproxy.imap.fetch import parse_fetch
from pushproxy.watch.tracker import MailboxTracker
from tests.unit.test_watch_tracker import fetch, r, selected, state, tracker

# --- STATUS (polling, NOTIFY STATUS) -----------------------------------------------------------


def test_status_decides_whether_to_examine() -> None:
    t = tracker(("INBOX", "Work"))
    t.load("Work", state("Work", uidvalidity=7, uidnext=5))
    examine, out = t.on_status("Work", StatusInfo("Work", uidnext=5, uidvalidity=7))
    assert not examine and out.events == [] and out.save is None  # nothing new: no look, no write
    examine, out = t.on_status("Work", StatusInfo("Work", uidnext=6, uidvalidity=7))
    assert examine and out.save is None  # new mail: EXAMINE + FETCH decide what it is
    examine, _ = t.on_status("Work", StatusInfo("Work", messages=3))  # no UIDNEXT/UIDVALIDITY: look
    assert examine


def test_status_first_sight_records_and_emits_nothing() -> None:
    t = tracker(("INBOX", "Work"))
    t.load("Work", None)
    examine, out = t.on_status("Work", StatusInfo("Work", uidnext=40, uidvalidity=9, highestmodseq=77))
    assert not examine and out.events == []
    assert out.save is not None and (out.save.uidvalidity, out.save.uidnext, out.save.highestmodseq) == (9, 40, 77)
    assert t.fetch_from("Work") == 40


def test_status_modseq_increase_examines_only_when_changes_are_wanted() -> None:
    hint = StatusInfo("Work", uidnext=5, uidvalidity=7, highestmodseq=120)
    wanting = tracker(("INBOX", "Work"), changes=("Work",), qresync=True)
    wanting.load("Work", state("Work", uidnext=5, modseq=100))
    assert wanting.on_status("Work", hint)[0]
    assert not wanting.on_status("Work", StatusInfo("Work", uidnext=5, uidvalidity=7, highestmodseq=100))[0]
    for other in (
        tracker(("INBOX", "Work"), changes=(), qresync=True),  # nobody wants changes of Work
        tracker(("INBOX", "Work"), changes=("Work",), qresync=False),  # the server has no QRESYNC
    ):
        other.load("Work", state("Work", uidnext=5, modseq=100))
        assert not other.on_status("Work", hint)[0]
    unknown = tracker(("INBOX", "Work"), changes=("Work",), qresync=True)
    unknown.load("Work", state("Work", uidnext=5, modseq=None))  # no stored MODSEQ to compare with
    assert not unknown.on_status("Work", hint)[0]


# --- UIDVALIDITY --------------------------------------------------------------------------------


def test_uidvalidity_change_forgets_the_old_state_entirely() -> None:
    t = tracker(changes=("INBOX",), qresync=True)
    t.load("INBOX", state(uidvalidity=7, uidnext=50, modseq=900))
    info = SelectInfo(uidvalidity=8, uidnext=4, highestmodseq=12, vanished=[1, 2], changed=[])
    step, out = selected(t, "INBOX", info)
    assert step == "done" and out.events == []  # type: ignore[attr-defined]
    save = out.save  # type: ignore[attr-defined]
    assert save is not None and (save.uidvalidity, save.uidnext, save.highestmodseq) == (8, 4, 12)
    # the next new mail is counted from the new UIDNEXT, not the old one
    assert t.fetch_from("INBOX") == 4
    out = t.on_fetch("INBOX", [fetch(4)], None)
    assert [e.uids for e in out.events if isinstance(e, NewMail)] == [(4,)]


def test_uidvalidity_change_without_uidnext_asks_for_a_probe_and_keeps_the_old_state() -> None:
    t = tracker()
    t.load("INBOX", state(uidvalidity=7, uidnext=50))
    step, out = selected(t, "INBOX", SelectInfo(uidvalidity=8, uidnext=None))
    assert step == "probe" and out.save is None  # type: ignore[attr-defined]
    assert t.fetch_from("INBOX") == 50  # nothing recorded until the probe says where UIDs stand


def test_nomodseq_mailbox_stores_no_modseq() -> None:
    t = tracker(changes=("INBOX",), qresync=True)
    t.load("INBOX", None)
    _, out = selected(t, "INBOX", SelectInfo(uidvalidity=7, uidnext=3, highestmodseq=55, nomodseq=True))
    assert out.save is not None and out.save.highestmodseq is None  # type: ignore[attr-defined]


# --- new mail -----------------------------------------------------------------------------------


def test_seen_at_detection_advances_uidnext_without_an_event() -> None:
    t = tracker()
    t.load("INBOX", state(uidnext=5))
    selected(t, "INBOX", SelectInfo(uidvalidity=7, uidnext=7))
    out = t.on_fetch("INBOX", [fetch(5, "\\Seen", seq=1), fetch(6, "\\Seen \\Flagged", seq=2)], None)
    assert out.events == []
    assert out.save is not None and out.save.uidnext == 7  # passed over, never retried
    assert t.on_fetch("INBOX", [fetch(6, "\\Seen", seq=2)], None).save is None


def test_fetch_before_any_state_emits_nothing() -> None:
    t = tracker()
    out = t.on_fetch("INBOX", [fetch(1)], None)
    assert out.events == [] and out.save is None


def test_untagged_responses_inside_a_fetch_are_noted() -> None:
    t = tracker()
    t.load("INBOX", state(uidnext=5))
    selected(t, "INBOX", SelectInfo(uidvalidity=7, uidnext=6))
    t.dirty.clear()
    out = t.on_fetch("INBOX", [fetch(5, seq=1), r("* 2 EXISTS\r\n")], trigger=50.0)
    assert [e.uids for e in out.events if isinstance(e, NewMail)] == [(5,)]
    assert out.events[0].detected_at == 50.0
    assert "INBOX" in t.dirty  # the EXISTS that came meanwhile asks for another look


def test_first_notification_time_is_kept_and_unwatched_boxes_ignored() -> None:
    t = tracker(("INBOX", "Work"))
    t.mark("Work", 1.0)
    t.mark("Work", 2.0)
    t.mark("Spam", 3.0)
    t.mark(None, 4.0)
    assert t.dirty == {"Work": 1.0}  # the latency is measured from the first notification


def test_which_unsolicited_responses_call_for_detection() -> None:
    t = tracker(changes=("INBOX",), qresync=True)
    for raw in ("* 3 EXISTS\r\n", '* STATUS "INBOX" (UIDNEXT 4)\r\n', "* BYE shutting down\r\n"):
        assert t.interesting(r(raw)), raw
    assert t.interesting(r("* OK [NOTIFICATIONOVERFLOW] too many\r\n"))
    assert not t.interesting(r("* OK [ALERT] hello\r\n"))
    assert not t.interesting(r("* 2 EXPUNGE\r\n"))  # not selected: nothing to attribute it to
    # VANISHED / FETCH only while a mailbox whose changes are wanted is selected
    assert not t.interesting(r("* VANISHED 3\r\n"))
    t.selected_ok("INBOX")
    assert t.interesting(r("* VANISHED 3\r\n")) and t.interesting(r("* 1 FETCH (UID 1 FLAGS ())\r\n"))


# --- VANISHED and flag changes (QRESYNC) ------------------------------------------------------------


def live(
    boxes: tuple[str, ...] = ("INBOX",), changes: tuple[str, ...] = ("INBOX",), uidnext: int = 10
) -> MailboxTracker:
    """INBOX selected with a stored state (MODSEQ 100), after its catch-up."""
    t = tracker(boxes, changes=changes, qresync=True)
    t.load("INBOX", state(uidnext=uidnext, modseq=100))
    selected(t, "INBOX", SelectInfo(uidvalidity=7, uidnext=uidnext, highestmodseq=100))
    t.dirty.clear()
    return t


def test_vanished_earlier_while_idle_is_not_a_live_change() -> None:
    t = live()
    t.note(r("* VANISHED (EARLIER) 3:4\r\n"), now=1.0)
    assert t.dirty == {} and t.flush_live("INBOX").events == []


def test_a_message_flagged_then_expunged_is_only_an_expunge() -> None:
    t = live()
    for raw in ("* 2 FETCH (UID 4 FLAGS (\\Flagged) MODSEQ (101))\r\n", "* VANISHED 4,6\r\n"):
        t.note(r(raw), now=1.0)
    t.note(r("* 3 FETCH (UID 7 FLAGS (\\Seen) MODSEQ (102))\r\n"), now=1.1)
    out = t.flush_live("INBOX")
    expunges = [e for e in out.events if isinstance(e, Expunge)]
    flags = [e for e in out.events if isinstance(e, FlagChange)]
    assert [e.uids for e in expunges] == [(4, 6)]
    assert [e.changes for e in flags] == [((7, ("\\Seen",)),)]
    assert out.save is not None and out.save.highestmodseq == 102
    assert t.flush_live("INBOX").events == []  # reported once


def test_changes_dropped_on_reselect_and_caught_up_by_qresync() -> None:
    t = live(boxes=("INBOX", "Work"))
    t.note(r("* VANISHED 3\r\n"), now=1.0)
    t.selecting()  # EXAMINE of another mailbox: the live changes are not attributed to it
    t.selected_ok("Work")
    assert t.flush_live("Work").events == []
    # back on INBOX, QRESYNC's VANISHED (EARLIER) reports it, below the stored UIDNEXT only
    assert t.examine_args("INBOX") == b" (QRESYNC (7 100))"
    info = parse_select(
        [
            r("* OK [UIDVALIDITY 7] x\r\n"),
            r("* OK [UIDNEXT 12] x\r\n"),
            r("* OK [HIGHESTMODSEQ 130] x\r\n"),
            r("* VANISHED (EARLIER) 3,11\r\n"),
            r("* 5 FETCH (UID 11 FLAGS (\\Seen) MODSEQ (125))\r\n"),
            r("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (126))\r\n"),
        ]
    )
    step, out = selected(t, "INBOX", info)
    assert step == "fetch"  # UID 10 and 11 are new mail, fetched next (not changes)
    kinds = {type(e): e for e in out.events}  # type: ignore[attr-defined]
    assert kinds[Expunge].uids == (3,)  # type: ignore[attr-defined]  # 11: at or above the stored UIDNEXT
    assert kinds[FlagChange].changes == ((2, ("\\Flagged",)),)  # type: ignore[attr-defined]


def test_all_flags_cleared_while_away_is_a_flag_change() -> None:
    t = live()
    info = parse_select(
        [
            r("* OK [UIDVALIDITY 7] x\r\n"),
            r("* OK [UIDNEXT 10] x\r\n"),
            r("* OK [HIGHESTMODSEQ 130] x\r\n"),
            r("* 2 FETCH (UID 2 FLAGS () MODSEQ (126))\r\n"),
        ]
    )
    _, out = selected(t, "INBOX", info)
    assert [e.changes for e in out.events if isinstance(e, FlagChange)] == [((2, ()),)]  # type: ignore[attr-defined]


def test_all_flags_cleared_live_is_a_flag_change() -> None:
    t = live()
    t.note(r("* 2 FETCH (UID 2 FLAGS () MODSEQ (126))\r\n"), now=1.0)
    out = t.flush_live("INBOX")
    assert [e.changes for e in out.events if isinstance(e, FlagChange)] == [((2, ()),)]


def test_changes_in_a_mailbox_nobody_wants_them_for_are_not_events() -> None:
    t = live(boxes=("INBOX", "Work"), changes=("Work",))
    assert not t.wants_changes("INBOX") and t.wants_changes("Work")
    assert t.examine_args("INBOX") == b""  # no QRESYNC parameters either
    assert t.flush_live("INBOX").events == []


def test_examine_args_need_a_stored_modseq() -> None:
    t = tracker(changes=("INBOX",), qresync=True)
    t.load("INBOX", state(modseq=None))
    assert t.examine_args("INBOX") == b""
    t.load("INBOX", None)
    assert t.examine_args("INBOX") == b""


# --- MODSEQ bookkeeping ------------------------------------------------------------------------------


def test_modseq_only_change_is_stored_without_events() -> None:
    t = live()
    t.note(r("* OK [HIGHESTMODSEQ 150] x\r\n"))
    out = t.flush_live("INBOX")
    assert out.events == [] and out.save is not None and out.save.highestmodseq == 150
    assert t.flush_live("INBOX").save is None  # stored once: nothing more to write


def test_modseq_is_never_lowered_by_an_older_fetch() -> None:
    t = live()
    t.note(r("* 1 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (140))\r\n"))
    t.note(r("* 2 FETCH (UID 4 FLAGS (\\Seen) MODSEQ (120))\r\n"))
    out = t.flush_live("INBOX")
    assert out.save is not None and out.save.highestmodseq == 140


def test_new_mail_fetch_stores_the_modseq_of_the_selected_mailbox() -> None:
    t = live(uidnext=10)
    item = fetch(10, seq=9)
    assert parse_fetch(item.raw).uid == 10
    t.note(r("* OK [HIGHESTMODSEQ 170] x\r\n"))
    out = t.on_fetch("INBOX", [item], None, uidnext_hint=11)
    assert out.save is not None and (out.save.uidnext, out.save.highestmodseq) == (11, 170)


def test_modseq_not_stored_for_mailboxes_without_wanted_changes() -> None:
    t = live(changes=())
    t.note(r("* OK [HIGHESTMODSEQ 150] x\r\n"))
    assert t.flush_live("INBOX").save is None
