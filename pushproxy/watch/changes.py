"""Expunges and flag changes (QRESYNC): what upstream reported, as Expunge / FlagChange events (sans-IO).

Only for mailboxes whose subscribers want changes, and only with QRESYNC
(which gives the UIDs).  The tracker
(:class:`~pushproxy.watch.tracker.MailboxTracker`) collects what the selected
mailbox reports while the watcher waits (:class:`LiveChanges`) and turns it,
or what EXAMINE's QRESYNC catch-up reported (:func:`caught_up`), into events
(:func:`change_events`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from pushproxy.events import Expunge, FlagChange, MailEvent
from pushproxy.imap.data import SelectInfo

__all__ = ["Flags", "LiveChanges", "caught_up", "change_events"]

log = logging.getLogger("pushproxy.watch.watcher")

Flags = Mapping[int, tuple[str, ...] | None]  # UID -> its flags now


class LiveChanges:
    """Expunges and flag changes the selected mailbox reported since the last look."""

    __slots__ = ("flags", "vanished")

    def __init__(self) -> None:
        self.vanished: list[int] = []
        self.flags: dict[int, tuple[str, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.vanished or self.flags)

    def clear(self) -> None:
        self.vanished.clear()
        self.flags.clear()

    def take(self) -> tuple[list[int], dict[int, tuple[str, ...]]]:
        """What was reported, and nothing is left."""
        taken = list(self.vanished), dict(self.flags)
        self.clear()
        return taken


def caught_up(info: SelectInfo, uidnext: int) -> tuple[list[int], Flags]:
    """What EXAMINE's QRESYNC reported of the messages below ``uidnext`` (the new ones are fetched)."""
    vanished = [u for u in info.vanished if u < uidnext]
    flags = {
        f.uid: f.flags
        for f in info.changed
        if f.uid is not None and f.uid < uidnext and f.flags is not None  # FLAGS () counts
    }
    return vanished, flags


def change_events(account: str, box: str, vanished: list[int], flags: Flags, trigger: float | None) -> list[MailEvent]:
    """An Expunge and a FlagChange (each when there is one); a flag change of an expunged message is none."""
    detected = trigger if trigger is not None else time.monotonic()
    events: list[MailEvent] = []
    if vanished:
        events.append(Expunge(account, box, tuple(sorted(set(vanished))), detected_at=detected))
    changes = tuple((uid, f) for uid, f in sorted(flags.items()) if f is not None and uid not in vanished)
    if changes:
        events.append(FlagChange(account, box, changes, detected_at=detected))
    if events:
        log.debug("watcher %s: %s: %d expunged, %d flag changes", account, box, len(vanished), len(changes))
    return events
