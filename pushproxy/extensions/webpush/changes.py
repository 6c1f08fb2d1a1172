"""Coalescing of expunges and flag changes before they are pushed (sans-IO).

A client that moves 500 messages makes the watcher report up to 500
expunges (and the target mailbox 500 new messages); a bulk "mark all read"
makes as many flag changes.  Each WebPush subscription should get a few
pushes for that, not hundreds (webpush-imap.md: "coalesce bursts").

:class:`PendingChanges` collects the changes of one mailbox of one account
while a burst lasts: the set of expunged UIDs and the latest flags of every
changed message still present.  The delivery flushes it once the burst is
over (``quiet`` seconds without a change, at most ``max_delay`` after its
first change) into :func:`pushproxy.extensions.webpush.payload.change_payloads`, which
bounds the pushes per burst (``MAX_CHANGE_PUSHES``, else one SYNC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pushproxy.events import Expunge, FlagChange

# A burst ends after this long without a change in the mailbox ...
QUIET = 0.5
# ... or this long after its first change, whichever comes first.
MAX_DELAY = 2.0
# Changed messages remembered per burst: beyond, the burst is pushed as SYNC.
MAX_PENDING = 50_000


@dataclass(slots=True)
class PendingChanges:
    first_at: float
    last_at: float
    vanished: set[int] = field(default_factory=set)
    flags: dict[int, tuple[str, ...]] = field(default_factory=dict)
    overflow: bool = False  # too many to remember: the flush says SYNC

    def add(self, event: Expunge | FlagChange, now: float) -> None:
        self.last_at = now
        if isinstance(event, Expunge):
            for uid in event.uids:
                self.vanished.add(uid)
                self.flags.pop(uid, None)  # a message gone needs no flag update
        else:
            for uid, flags in event.changes:
                if uid not in self.vanished:
                    self.flags[uid] = tuple(flags)  # the latest state wins
        if len(self.vanished) + len(self.flags) > MAX_PENDING:
            self.overflow = True
            self.vanished.clear()
            self.flags.clear()

    def due(self, now: float, quiet: float = QUIET, max_delay: float = MAX_DELAY) -> float:
        """Seconds until this burst should be flushed (0 or less: now)."""
        return min(self.last_at + quiet, self.first_at + max_delay) - now

    def flag_changes(self) -> list[tuple[int, tuple[str, ...]]]:
        return sorted(self.flags.items())
