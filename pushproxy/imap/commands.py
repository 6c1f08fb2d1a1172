"""Building the arguments of client commands (sans-IO): strings, literals, mailbox names."""

from __future__ import annotations

from dataclasses import dataclass

from pushproxy.imap.response import quote
from pushproxy.imap.utf7 import encode_mailbox

__all__ = ["CommandPart", "Literal", "astring", "mailbox_arg"]


@dataclass(frozen=True, slots=True)
class Literal:
    """A command argument sent as an IMAP literal (``{n}`` + bytes)."""

    data: bytes

    def __repr__(self) -> str:  # literals carry passwords: never show them
        return f"Literal({len(self.data)} bytes)"


CommandPart = bytes | Literal


def astring(value: str) -> CommandPart:
    """An astring argument: a quoted string when 7-bit printable, else a literal (UTF-8)."""
    raw = quote(value)
    if raw.startswith(b"{"):
        return Literal(value.encode("utf-8"))
    return raw


def mailbox_arg(mailbox: str) -> bytes:
    """A mailbox name as a command argument: modified UTF-7 (RFC 3501 5.1.3), quoted."""
    if mailbox.upper() == "INBOX":
        return b"INBOX"
    return quote(encode_mailbox(mailbox).encode("ascii"))
