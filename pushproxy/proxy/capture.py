"""Credential capture for the watchers: the user name and password of a successful login.

Only LOGIN and AUTHENTICATE PLAIN reveal a reusable password; anything else is
passed through and simply gets no push credentials.  The bytes are kept only
until the login's outcome (:meth:`CredentialCapture.settle`); one login is in
flight at a time, so one capture is enough.  The identity of the session (the
login name and the account it is for) is set here, once, from a successful
login's capture.
"""

from __future__ import annotations

import base64
import binascii

from pushproxy.accounts import normalise_account
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


class CredentialCapture:
    """The login in flight's credentials, and the identity of the session once one succeeds."""

    __slots__ = ("_capture", "account", "login", "sasl_waiting")

    def __init__(self) -> None:
        self._capture: tuple[str, bytes] | None = None  # ("login" | "sasl", bytes)
        self.sasl_waiting = False  # AUTHENTICATE PLAIN without initial response: it follows the "+"
        self.login: str | None = None
        self.account: str | None = None

    def begin(self) -> None:
        """A LOGIN / AUTHENTICATE goes upstream: nothing kept from an earlier one counts."""
        self._capture, self.sasl_waiting = None, False

    def command(self, name: bytes, data: bytes) -> None:
        """The whole login command (literals inline) was read."""
        self._capture, self.sasl_waiting = capture_of(name, data)

    def sasl_response(self, line: bytes) -> None:
        """The client's answer to upstream's "+" for AUTHENTICATE PLAIN."""
        self._capture, self.sasl_waiting = ("sasl", line.strip()), False

    def settle(self, logged_in: bool) -> tuple[str, str] | None:
        """The login's outcome is known: ``(login, secret)`` when it logged the session in with a password."""
        capture, self._capture, self.sasl_waiting = self._capture, None, False
        if not logged_in or capture is None:
            return None
        creds = credentials_of(capture)
        if creds is not None:
            self.login = creds[0]
            self.account = normalise_account(creds[0])
        return creds
