"""Credential capture for the watchers: the user name and password of a successful login.

Only LOGIN and AUTHENTICATE PLAIN reveal a reusable password; anything else is
passed through and simply gets no push credentials.  The bytes are kept only
until the login's outcome (by its :class:`~pushproxy.proxy.ledger.Pending`).
"""

from __future__ import annotations

import base64
import binascii

from pushproxy.imap.parse import ParseError, as_text, parse_command

MAX_CAPTURE = 16384  # LOGIN / AUTHENTICATE bytes kept for credential capture


def capture_of(name: bytes, data: bytes) -> tuple[tuple[str, bytes] | None, bool]:
    """``(capture, sasl_waiting)`` for a complete LOGIN / AUTHENTICATE command (literals inline)."""
    if name == b"LOGIN":
        return ("login", data), False
    try:
        cmd = parse_command(data)
    except ParseError:
        return None, False
    if not cmd.args or as_text(cmd.args[0], "mechanism").upper() != "PLAIN":
        return None, False
    if len(cmd.args) > 1:
        return ("sasl", as_text(cmd.args[1], "response").encode()), False
    return ("sasl", b""), True  # the response follows the server's "+"


def credentials_of(capture: tuple[str, bytes]) -> tuple[str, str] | None:
    """``(login, password)`` from a capture, or None when it holds none."""
    kind, data = capture
    try:
        if kind == "login":
            cmd = parse_command(data)
            if len(cmd.args) == 2:
                return as_text(cmd.args[0], "user"), as_text(cmd.args[1], "password")
        elif data and data != b"=":
            authzid, authcid, password = base64.b64decode(data, validate=True).split(b"\0")
            if authzid in (b"", authcid):
                return authcid.decode("utf-8"), password.decode("utf-8")
    except (ParseError, ValueError, binascii.Error, UnicodeDecodeError):
        pass
    return None
