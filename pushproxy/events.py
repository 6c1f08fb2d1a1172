"""Mailbox events: what the watchers (or Dovecot's ox driver) report and the dispatcher pushes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One new message as seen upstream.

    ``envelope`` is the raw IMAP ENVELOPE s-expression exactly as upstream sent
    it (``(date subject from sender reply-to to cc bcc in-reply-to message-id)``),
    or None when unknown.  It is forwarded into WebPush payloads without being
    re-encoded.  ``body`` is the whole message as upstream returned it for
    ``body_item`` (``BINARY[]``, or ``BODY[]`` where upstream lacks BINARY),
    when it was small enough to fetch; WebPush sends it when the push fits.
    """

    uid: int
    flags: tuple[str, ...] = ()
    envelope: bytes | None = None
    body: bytes | None = None
    body_item: Literal["BINARY[]", "BODY[]"] = "BINARY[]"

    @property
    def seen(self) -> bool:
        return any(f.lower() == "\\seen" for f in self.flags)


@dataclass(frozen=True, slots=True)
class NewMail:
    account: str  # normalised login (see pushproxy.accounts.normalise_account)
    mailbox: str  # decoded (UTF-8) mailbox name, "INBOX" canonical
    messages: tuple[MessageInfo, ...] = ()
    detected_at: float = field(default_factory=time.monotonic)
    source: str = "watcher"  # watcher | dovecot-ox | debug
    uidvalidity: int = 0  # the mailbox's UIDVALIDITY when the source knows it (0: unknown)

    @property
    def uids(self) -> tuple[int, ...]:
        return tuple(m.uid for m in self.messages)


@dataclass(frozen=True, slots=True)
class Expunge:
    account: str
    mailbox: str
    uids: tuple[int, ...]
    detected_at: float = field(default_factory=time.monotonic)
    source: str = "watcher"


@dataclass(frozen=True, slots=True)
class FlagChange:
    account: str
    mailbox: str
    changes: tuple[tuple[int, tuple[str, ...]], ...]  # (uid, flags)
    detected_at: float = field(default_factory=time.monotonic)
    source: str = "watcher"


MailEvent = NewMail | Expunge | FlagChange
