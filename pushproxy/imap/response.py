"""Building IMAP responses: quoting and the common response shapes (sans-IO)."""

from __future__ import annotations

_QUOTABLE = frozenset(range(0x20, 0x7F))


def quote(value: str | bytes) -> bytes:
    """An IMAP string: quoted when printable 7-bit, a literal otherwise.

    Quoted strings cannot hold CR, LF, NUL or 8-bit bytes (RFC 9051 section
    4.3); a literal ``{n}\\r\\n<bytes>`` can, and is what a server sends in a
    response (no continuation is needed in that direction).
    """
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if all(b in _QUOTABLE for b in raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else quote(value)


def tagged(tag: bytes, status: str, text: str, code: str | None = None) -> bytes:
    head = tag + b" " + status.encode("ascii") + b" "
    if code:
        head += b"[" + code.encode("ascii") + b"] "
    return head + _text(text) + b"\r\n"


def untagged(payload: bytes) -> bytes:
    return b"* " + payload + b"\r\n"


def continuation(text: str = "Ready for literal data") -> bytes:
    return b"+ " + _text(text) + b"\r\n"


def bye(text: str, code: str | None = None) -> bytes:
    return tagged(b"*", "BYE", text, code)


def _text(text: str) -> bytes:
    """resp-text: one line of 7-bit text, whatever the caller passed."""
    clean = text.replace("\r", " ").replace("\n", " ")
    return clean.encode("ascii", "replace") or b"."
