"""What iOS Mail expects in a push: the body, the mailbox hashes; and token shortening for logs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from pushproxy.accounts import is_inbox

__all__ = ["build_payload", "mailbox_hash", "short_token"]


def short_token(token: str) -> str:
    """Device tokens are secrets of a sort: log only their first 8 characters."""
    return token[:8] + "…"


def mailbox_hash(mailbox: str) -> str:
    """What iOS Mail expects in "m": MD5 of the UTF-8 mailbox name, upper-case hex."""
    return hashlib.md5(mailbox.encode("utf-8"), usedforsecurity=False).hexdigest().upper()


def build_payload(account_id: str, mailboxes: Iterable[str]) -> dict[str, Any]:
    """The push body: ``{"aps": {"account-id": ...}}`` plus "m" when mail arrived outside INBOX.

    Without "m" iOS syncs INBOX.  When INBOX and other mailboxes changed in the same
    window, INBOX's own hash is listed too, so that naming the others does not make iOS
    skip INBOX.
    """
    names = set(mailboxes)
    payload: dict[str, Any] = {"aps": {"account-id": account_id}}
    others = {m for m in names if not is_inbox(m)}
    if others:
        if len(others) < len(names):
            others.add("INBOX")
        payload["m"] = sorted(mailbox_hash(m) for m in others)
    return payload
