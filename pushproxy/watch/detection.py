"""What to watch, and which fetched messages are news (sans-IO).

:class:`WatchSpec` says which mailboxes of an account are watched and for
which of them expunges and flag changes are wanted too; it merges what the
extensions ask for (:meth:`pushproxy.extensions.manager.ExtensionManager.spec`).

:func:`new_messages` is the correctness core of new-mail detection: given the
FETCH responses of ``UID FETCH <last uidnext>:*`` it keeps exactly the
messages whose UID is at least the last UIDNEXT (``n:*`` also returns the last
message when its UID is below ``n``), merges several FETCH responses for one
UID, drops messages already ``\\Seen`` and says what the new UIDNEXT is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pushproxy.accounts import canonical_mailbox, is_inbox
from pushproxy.events import MessageInfo
from pushproxy.imap.commands import mailbox_arg
from pushproxy.imap.fetch import FetchItems

__all__ = [
    "MAX_MESSAGES_PER_EVENT",
    "NewMessages",
    "WatchSpec",
    "new_messages",
    "normalise_mailboxes",
    "notify_set_command",
]

# A NewMail carries at most this many (the newest) messages: after a long
# outage thousands may have arrived.  Large enough that a Web Push burst at the
# cap never fits its bounded pushes even in the compact form (it becomes one
# SYNC: nothing is cut silently; see webpush/payload.py MAX_NEW_MAIL_PUSHES).
MAX_MESSAGES_PER_EVENT = 2000


def normalise_mailboxes(names: Iterable[str]) -> tuple[str, ...]:
    """Unique canonical names, INBOX (any case) first, the others sorted."""
    seen: set[str] = set()
    inbox = False
    for name in names:
        if not name:
            continue
        if is_inbox(name):
            inbox = True
            continue
        seen.add(canonical_mailbox(name))
    return (("INBOX",) if inbox else ()) + tuple(sorted(seen))


@dataclass(frozen=True, slots=True)
class WatchSpec:
    mailboxes: tuple[str, ...]  # normalised (see normalise_mailboxes), never empty
    changes: frozenset[str] = field(default_factory=frozenset)  # subset wanting Expunge / FlagChange
    # Not None: the watcher lists the account's subscribed mailboxes at connect and every this
    # many seconds, for the extensions to choose from (``ExtensionManager.listed``).
    list_subscribed: float | None = None
    bodies: bool = False  # fetch the whole message of a few small new messages into their NewMail

    @classmethod
    def of(
        cls,
        mailboxes: Iterable[str],
        changes: Iterable[str] = (),
        list_subscribed: float | None = None,
        bodies: bool = False,
    ) -> WatchSpec:
        boxes = normalise_mailboxes(mailboxes) or ("INBOX",)
        wanted = frozenset(normalise_mailboxes(changes)) & frozenset(boxes)
        return cls(boxes, wanted, list_subscribed, bodies)

    @property
    def primary(self) -> str:
        """The mailbox kept selected (IDLE): INBOX when watched, else the first."""
        return self.mailboxes[0]

    @property
    def others(self) -> tuple[str, ...]:
        return self.mailboxes[1:]

    def __contains__(self, mailbox: object) -> bool:
        return mailbox in self.mailboxes


@dataclass(frozen=True, slots=True)
class NewMessages:
    messages: tuple[MessageInfo, ...]  # unseen new messages, ascending UID, at most MAX_MESSAGES_PER_EVENT
    uidnext: int  # the UIDNEXT to remember after these
    seen_skipped: int = 0
    count: int = 0  # new messages in all (seen or not, before the cap)


def new_messages(fetched: Iterable[FetchItems], from_uid: int, uidnext_hint: int | None = None) -> NewMessages:
    """Which of the fetched messages are new since ``from_uid`` (the stored UIDNEXT)."""
    by_uid: dict[int, tuple[tuple[str, ...] | None, bytes | None]] = {}
    for item in fetched:
        if item.uid is None or item.uid < from_uid:
            continue
        flags, envelope = by_uid.get(item.uid, (None, None))
        by_uid[item.uid] = (
            item.flags if item.flags is not None else flags,
            item.envelope if item.envelope is not None else envelope,
        )
    uidnext = max(from_uid, uidnext_hint or 0, max(by_uid, default=0) + 1)
    fresh: list[MessageInfo] = []
    skipped = 0
    for uid in sorted(by_uid):
        flags, envelope = by_uid[uid]
        info = MessageInfo(uid=uid, flags=flags or (), envelope=envelope)
        if info.seen:
            skipped += 1
            continue
        fresh.append(info)
    return NewMessages(tuple(fresh[-MAX_MESSAGES_PER_EVENT:]), uidnext, skipped, len(by_uid))


def notify_set_command(spec: WatchSpec, qresync: bool) -> bytes:
    """``NOTIFY SET`` (RFC 5465) for the spec: the selected mailbox, and the others reported by STATUS.

    Flag changes only where they are wanted, and only with QRESYNC (which gives their UIDs).
    """
    events = b"MessageNew MessageExpunge"
    command = b"NOTIFY SET (selected (" + events + (b" FlagChange" if spec.changes and qresync else b"") + b"))"
    if spec.others:
        other_events = events + (b" FlagChange" if spec.changes & set(spec.others) and qresync else b"")
        if all(box.isascii() for box in spec.others):
            boxes = b" ".join(mailbox_arg(box) for box in spec.others)
            command += b" (mailboxes (" + boxes + b") (" + other_events + b"))"
        else:
            # Dovecot 2.3 never reports a non-ASCII name given in "mailboxes"; "personal"
            # reports every personal mailbox (in raw UTF-8): the tracker keeps the watched ones.
            command += b" (personal (" + other_events + b"))"
    return command
