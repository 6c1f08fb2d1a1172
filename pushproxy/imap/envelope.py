"""An IMAP ENVELOPE built from plain header values (sans-IO).

Header values that are not printable ASCII become UTF-8 literals (pinned
interpretation: the values arrive decoded, e.g. from Dovecot's ox driver, and
are not re-encoded as RFC 2047 words).
"""

from __future__ import annotations

from email.utils import getaddresses

from pushproxy.imap.response import nstring

__all__ = ["envelope_from_fields"]


def _address_list(header: str | None) -> bytes:
    """An ENVELOPE address list ``((name adl mailbox host) ...)``, or NIL."""
    if not header:
        return b"NIL"
    addresses: list[bytes] = []
    for name, addr in getaddresses([header]):
        if not addr and not name:
            continue
        local, at, domain = addr.rpartition("@")
        if not at:
            local, domain = addr, ""
        addresses.append(b"(" + nstring(name or None) + b" NIL " + nstring(local) + b" " + nstring(domain) + b")")
    if not addresses:
        return b"NIL"
    return b"(" + b"".join(addresses) + b")"


def envelope_from_fields(date: str | None, subject: str | None, from_: str | None, message_id: str | None) -> bytes:
    """An IMAP ENVELOPE built from plain header values (e.g. Dovecot's ox driver events).

    Strings: NIL for None, a quoted string when printable ASCII, else a UTF-8
    literal.  Sender and Reply-To repeat From (RFC 3501 7.4.2: the server fills
    them from From when absent); To, Cc, Bcc and In-Reply-To are NIL.
    """
    from_list = _address_list(from_)
    fields = [
        nstring(date),
        nstring(subject),
        from_list,  # from
        from_list,  # sender
        from_list,  # reply-to
        b"NIL",  # to
        b"NIL",  # cc
        b"NIL",  # bcc
        b"NIL",  # in-reply-to
        nstring(message_id),
    ]
    return b"(" + b" ".join(fields) + b")"
