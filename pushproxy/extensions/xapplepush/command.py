"""The XAPPLEPUSHSERVICE command: grammar and answer (iOS Mail's push registration).

Apple never published the extension; this follows the form Cyrus IMAP and
macOS Server answered (the README's "iOS Mail" section has what clients need).  Parsing is deliberately lenient where
iOS versions differ (key order, quoting, unknown pairs, missing mailboxes) and
strict only where a wrong value would make the registration useless.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pushproxy.accounts import canonical_mailbox, is_inbox
from pushproxy.imap.data import parse_list, read_response
from pushproxy.imap.parse import NIL, Atom, ParseError, Token, as_text
from pushproxy.imap.response import quote
from pushproxy.imap.utf7 import decode_mailbox

MAX_VERSION = 2
_TOKEN_RE = re.compile(r"^[0-9A-Fa-f]{16,256}$")
_MAX_MAILBOXES = 1000


@dataclass(slots=True)
class Registration:
    version: int
    account_id: str
    device_token: str  # lower-case hex
    subtopic: str = "com.apple.mobilemail"
    # (as sent by the client, modified UTF-7; decoded UTF-8 name)
    mailboxes: list[tuple[str, str]] = field(default_factory=list)


def parse_registration(args: list[Token]) -> Registration:
    """The arguments of XAPPLEPUSHSERVICE; ParseError (-> BAD) when malformed."""
    if len(args) % 2:
        raise ParseError("arguments must be key/value pairs")
    values: dict[str, Token] = {}
    for i in range(0, len(args), 2):
        key = args[i]
        if not isinstance(key, bytes | Atom):
            raise ParseError("a key must be a string")
        values[as_text(key, "key").lower()] = args[i + 1]  # unknown keys are kept and ignored
    version_tok = values.get("aps-version")
    version = 1
    if version_tok is not None:
        text = _scalar(version_tok, "aps-version")
        if not text.isdigit():
            raise ParseError("aps-version must be a number")
        version = int(text)
    account_id = _scalar(_required(values, "aps-account-id"), "aps-account-id")
    if not account_id or len(account_id) > 256:
        raise ParseError("aps-account-id must be 1 to 256 characters")
    token = _scalar(_required(values, "aps-device-token"), "aps-device-token")
    if not _TOKEN_RE.match(token):
        raise ParseError("aps-device-token must be hexadecimal")
    subtopic = _scalar(values["aps-subtopic"], "aps-subtopic") if "aps-subtopic" in values else "com.apple.mobilemail"
    mailboxes = _mailboxes(values.get("mailboxes"))
    return Registration(version, account_id, token.lower(), subtopic, mailboxes)


def _required(values: dict[str, Token], key: str) -> Token:
    if key not in values:
        raise ParseError(f"missing {key}")
    return values[key]


def _scalar(token: Token, what: str) -> str:
    if isinstance(token, list) or token is NIL:
        raise ParseError(f"{what} must be a string")
    return as_text(token, what)


def _mailboxes(token: Token | None) -> list[tuple[str, str]]:
    if token is None or token is NIL:
        return [("INBOX", "INBOX")]
    if not isinstance(token, list):
        raise ParseError("mailboxes must be a parenthesised list")
    if len(token) > _MAX_MAILBOXES:
        raise ParseError("too many mailboxes")
    out: list[tuple[str, str]] = []
    for item in token:
        raw = _scalar(item, "mailbox name")
        name = canonical_mailbox(decode_mailbox(raw))
        if name not in (n for _, n in out):
            out.append(("INBOX" if is_inbox(name) else raw, name))
    return out or [("INBOX", "INBOX")]


def parse_list_response(line: bytes) -> str | None:
    """``* LIST (\\HasNoChildren) "/" "Sent Messages"`` -> decoded name; None if not selectable."""
    try:
        resp = read_response(line)
        if resp.kind != "LIST":
            return None
        item = parse_list(resp)
    except ParseError:
        return None
    if item.has("\\Noselect") or item.has("\\NonExistent"):
        return None
    return item.mailbox


def answer_lines(reg: Registration, existing: list[str], topic: str) -> list[bytes]:
    """The untagged payloads (without ``* ``) answering a registration."""
    version = min(reg.version, MAX_VERSION)
    lines = []
    if version >= 2:
        for raw, _name in reg.mailboxes:
            if _name in existing:
                lines.append(b"XAPPLEPUSHSERVICE " + quote("mailbox") + b" " + quote(raw))
    lines.append(
        b"XAPPLEPUSHSERVICE "
        + quote("aps-version")
        + b" "
        + quote(str(version))
        + b" "
        + quote("aps-topic")
        + b" "
        + quote(topic)
    )
    return lines
