"""What to watch of an account (sans-IO).

:class:`WatchSpec` says which mailboxes of an account are watched and for
which of them expunges and flag changes are wanted too; it merges what the
extensions ask for (:meth:`pushproxy.extensions.manager.ExtensionManager.spec`).
:func:`notify_set_command` is the ``NOTIFY SET`` that asks upstream to report
exactly those.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pushproxy.accounts import canonical_mailbox, is_inbox
from pushproxy.imap.commands import mailbox_arg

__all__ = ["WatchSpec", "normalise_mailboxes", "notify_set_command"]


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
