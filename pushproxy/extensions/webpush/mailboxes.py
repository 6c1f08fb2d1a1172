"""Which mailboxes of an account WEBPUSH watches: the policy behind ``webpush.mailboxes`` (sans-IO).

The draft (-00/-01) pushes the changes of the account's *subscribed*
mailboxes.  Pinned interpretation: those the upstream lists as subscribed
(``LIST (SUBSCRIBED)`` / ``LSUB``, read by the account's watcher), minus the
ones flagged ``\\Junk`` or ``\\Trash`` (SPECIAL-USE: nobody wants a push for
spam or for what they just deleted), minus those that do not exist or cannot
be selected; INBOX always, subscribed or not.  A fixed ``webpush.mailboxes``
list replaces all of this.

:class:`WatchedMailboxes` keeps the last choice per account: the watchers ask
it what to watch, the delivery asks it which events to push.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from pushproxy.accounts import mailbox_matches
from pushproxy.imap.data import ListItem
from pushproxy.watch.spec import normalise_mailboxes

__all__ = ["EXCLUDED", "SKIPPED", "WatchedMailboxes", "candidates", "pick_subscribed"]

log = logging.getLogger("pushproxy.webpush")

EXCLUDED = frozenset({"\\junk", "\\trash"})  # SPECIAL-USE (RFC 6154), lower case
SKIPPED = frozenset({"\\nonexistent", "\\noselect"})  # RFC 5258: listed, but nothing to watch there
INBOX_ONLY = ("INBOX",)


def candidates(listed: Iterable[ListItem]) -> tuple[str, ...]:
    """Every mailbox of a LIST (SUBSCRIBED) / LSUB answer the policy keeps, INBOX first (names as listed)."""
    names = ["INBOX"]
    for item in listed:
        if not any(a.lower() in EXCLUDED or a.lower() in SKIPPED for a in item.attributes):
            names.append(item.mailbox)
    return normalise_mailboxes(names)


def pick_subscribed(listed: Iterable[ListItem], limit: int) -> tuple[str, ...]:
    """The mailboxes to watch from a LIST (SUBSCRIBED) / LSUB answer: INBOX first, at most ``limit``."""
    return candidates(listed)[: max(1, limit)]


class WatchedMailboxes:
    """``webpush.mailboxes``: a fixed list, or per account what its subscribed mailboxes were last time."""

    def __init__(self, setting: str | list[str], limit: int) -> None:
        self.pinned: tuple[str, ...] | None = normalise_mailboxes(setting) if isinstance(setting, list) else None
        self.limit = limit
        self._listed: dict[str, tuple[str, ...]] = {}

    @property
    def subscribed(self) -> bool:
        return self.pinned is None

    def of(self, account: str) -> tuple[str, ...]:
        """What is watched for the account now (INBOX alone until its subscriptions were listed)."""
        if self.pinned is not None:
            return self.pinned
        return self._listed.get(account, INBOX_ONLY)

    def listed(self, account: str, items: Sequence[ListItem]) -> tuple[str, ...]:
        """Its subscribed mailboxes as the upstream just listed them; returns the new choice."""
        if self.pinned is not None:
            return self.pinned
        kept = candidates(items)
        picked = kept[: max(1, self.limit)]
        if len(kept) > len(picked) and self._listed.get(account) != picked:
            log.info(
                "webpush %s: %d subscribed mailboxes, watching %d (webpush.max_mailboxes)",
                account,
                len(kept),
                len(picked),
            )
        self._listed[account] = picked
        return picked

    def forget(self, account: str) -> None:
        """The account has no subscriptions left."""
        self._listed.pop(account, None)

    def pushed(self, account: str, mailbox: str) -> bool:
        """Whether an event in ``mailbox`` goes to the account's subscriptions."""
        return mailbox_matches(self.of(account), mailbox)
