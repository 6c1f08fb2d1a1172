"""IMAP METADATA (RFC 5464), sans-IO: SETMETADATA / GETMETADATA arguments, first lines, responses.

- :func:`parse_setmetadata` / :func:`parse_getmetadata`: a whole command's
  arguments (literals inline, as :func:`pushproxy.imap.parse.parse_command`
  gives them);
- :func:`first_line_entries`: the mailbox and the entry names a command's
  first line names before its first literal (whose body it never reads),
  for deciding whether to take a command over while it is still arriving
  (:func:`ends_in_literal`: whether one follows);
- :func:`metadata_response` / :func:`setmetadata_command`: building
  ``* METADATA`` payloads and SETMETADATA commands.

Entry names are case-insensitive (RFC 5464 3.2): they are returned lower case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pushproxy.imap.data import mailbox_from_token
from pushproxy.imap.parse import NIL, Atom, ParseError, Token, parse_arguments, read_value, split_tag_command
from pushproxy.imap.response import quote

__all__ = [
    "FirstLine",
    "GetMetadata",
    "SetMetadata",
    "ends_in_literal",
    "first_line_entries",
    "metadata_response",
    "parse_getmetadata",
    "parse_metadata_response",
    "parse_setmetadata",
    "setmetadata_command",
]

MAX_ENTRIES = 100  # entries in one command; more is refused rather than walked
_ENTRY_RE = re.compile(r"/(?:private|shared)(?:/[\x21-\x24\x26-\x29\x2b-\x2e\x30-\x7e]+)*")  # no "*", "%" (3.2)
_TRAILING_LITERAL = re.compile(rb"~?\{\d{1,20}[+-]?\}\r?\n?\Z")


@dataclass(frozen=True, slots=True)
class SetMetadata:
    mailbox: str  # decoded; "" is the server
    entries: tuple[tuple[str, bytes | None], ...]  # (entry, value); None: NIL, remove the entry


@dataclass(frozen=True, slots=True)
class GetMetadata:
    mailbox: str
    entries: tuple[str, ...]
    maxsize: int | None = None
    depth: str = "0"  # "0", "1" or "infinity"


@dataclass(frozen=True, slots=True)
class FirstLine:
    """What a SETMETADATA / GETMETADATA first line names before its first literal."""

    mailbox: str | None  # None: the mailbox itself is (in) a literal
    entries: tuple[str, ...]  # lower case
    complete: bool  # False: more of the command follows in literals


def entry_name(token: Token) -> str:
    """A valid entry name (lower case); ParseError otherwise."""
    if isinstance(token, list) or token is NIL:
        raise ParseError("an entry name must be a string")
    if isinstance(token, bytes):
        try:
            text = token.decode("ascii")
        except UnicodeDecodeError:
            raise ParseError("an entry name must be ASCII") from None
    else:
        text = str(token)
    text = text.lower()
    if len(text) > 1024 or not _ENTRY_RE.fullmatch(text) or "//" in text or text.endswith("/"):
        raise ParseError("invalid entry name")
    return text


def _mailbox(token: Token) -> str:
    if isinstance(token, list) or token is NIL:
        raise ParseError("the mailbox must be a string")
    try:
        return mailbox_from_token(token)
    except ValueError as exc:  # MalformedResponse is a ValueError
        raise ParseError(str(exc)) from None


def parse_setmetadata(args: list[Token]) -> SetMetadata:
    """``SETMETADATA mailbox (entry value ...)`` (RFC 5464 4.3); ParseError when malformed."""
    if len(args) != 2 or not isinstance(args[1], list):
        raise ParseError("expected a mailbox and a parenthesised list of entries and values")
    pairs = args[1]
    if not pairs or len(pairs) % 2:
        raise ParseError("entries and values must come in pairs")
    if len(pairs) > 2 * MAX_ENTRIES:
        raise ParseError("too many entries")
    entries: list[tuple[str, bytes | None]] = []
    for i in range(0, len(pairs), 2):
        name, value = entry_name(pairs[i]), pairs[i + 1]
        if value is NIL:
            entries.append((name, None))
        elif isinstance(value, bytes):
            entries.append((name, value))
        elif isinstance(value, Atom):  # lenient: an atom where a string belongs
            entries.append((name, str(value).encode("ascii", "replace")))
        else:
            raise ParseError("a value must be a string or NIL")
    return SetMetadata(_mailbox(args[0]), tuple(entries))


def parse_getmetadata(args: list[Token]) -> GetMetadata:
    """``GETMETADATA [(options)] mailbox entries`` (RFC 5464 4.2); ParseError when malformed."""
    maxsize: int | None = None
    depth = "0"
    if args and isinstance(args[0], list):
        options, args = args[0], args[1:]
        if len(options) % 2:
            raise ParseError("options must come in pairs")
        for i in range(0, len(options), 2):
            key, value = options[i], options[i + 1]
            if not isinstance(key, Atom) or not isinstance(value, Atom | bytes):
                raise ParseError("malformed option")
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            if key.upper() == "MAXSIZE" and text.isdigit() and len(text) <= 10:
                maxsize = int(text)
            elif key.upper() == "DEPTH" and text.lower() in ("0", "1", "infinity"):
                depth = text.lower()
            else:
                raise ParseError(f"unknown option {key}")
    if len(args) != 2:
        raise ParseError("expected a mailbox and entries")
    names = args[1] if isinstance(args[1], list) else [args[1]]
    if not names or len(names) > MAX_ENTRIES:
        raise ParseError(f"expected 1 to {MAX_ENTRIES} entries")
    return GetMetadata(_mailbox(args[0]), tuple(entry_name(n) for n in names), maxsize, depth)


def ends_in_literal(line: bytes) -> bool:
    """Whether a command's line ends in a literal's ``{n}`` marker (more of the command follows)."""
    return _TRAILING_LITERAL.search(line) is not None


def first_line_entries(line: bytes) -> FirstLine | None:
    """The mailbox and entry names on a SETMETADATA / GETMETADATA first line; None when unreadable.

    ``line`` is the command's first line as the framer delivered it: the
    whole command, or everything up to its first literal's ``{n}`` marker.
    Values on the line are skipped; a literal (value or name) ends the walk.
    """
    head = split_tag_command(line)
    if head is None:
        return None
    rest = line[len(head[0]) + 1 + len(head[1]) :]
    marker = _TRAILING_LITERAL.search(rest)
    complete = marker is None
    body = rest.rstrip(b"\r\n") if complete else rest[: marker.start()]  # type: ignore[union-attr]
    pos = 0

    def space() -> bool:
        nonlocal pos
        if body[pos : pos + 1] == b" ":
            pos += 1
            return True
        return False

    def value() -> Token | None:
        nonlocal pos
        if pos >= len(body) or body[pos : pos + 1] in (b"(", b")"):
            return None
        try:
            token, pos = read_value(body, pos)
        except ParseError:
            return None
        return token

    if not space():
        return None
    if body[pos : pos + 1] == b"(" and head[1].upper() == b"GETMETADATA":  # options: skip them
        end = body.find(b")", pos)
        if end < 0:
            return None
        pos = end + 1
        if not space():
            return None
    mailbox_token = value()
    if mailbox_token is None:
        return FirstLine(None, (), False) if not complete else None
    try:
        mailbox = _mailbox(mailbox_token)
    except ParseError:
        return None
    if not space():
        return FirstLine(mailbox, (), complete) if not complete else None
    setting = head[1].upper() == b"SETMETADATA"
    listed = body[pos : pos + 1] == b"("
    if listed:
        pos += 1
    names: list[str] = []
    while len(names) < MAX_ENTRIES:
        token = value()
        if token is None:
            break
        try:
            names.append(entry_name(token))
        except ParseError:
            return None
        if not listed:
            break
        if not space():
            break
        if setting:
            if value() is None:
                break
            if not space():
                break
    return FirstLine(mailbox, tuple(names), complete)


_METADATA_HEAD = re.compile(rb"\* METADATA(?= )", re.IGNORECASE)


def parse_metadata_response(raw: bytes) -> tuple[str, tuple[str, ...]] | None:
    """The mailbox and entry names of ``* METADATA mailbox (entry value ...)`` (or the unsolicited
    ``* METADATA mailbox entry ...``); None for any other or a malformed response."""
    m = _METADATA_HEAD.match(raw)
    if m is None:
        return None
    try:
        args = parse_arguments(raw, m.end())
        if len(args) < 2:
            return None
        mailbox = _mailbox(args[0])
        if len(args) == 2 and isinstance(args[1], list):
            return mailbox, tuple(entry_name(name) for name in args[1][0::2])
        return mailbox, tuple(entry_name(name) for name in args[1:])
    except ParseError:
        return None


def metadata_response(mailbox: str, entries: list[tuple[str, bytes | None]]) -> bytes:
    """The payload of ``* METADATA mailbox (entry value ...)`` (without ``* ``; values may become literals)."""
    values = b" ".join(quote(name) + b" " + (b"NIL" if value is None else quote(value)) for name, value in entries)
    return b"METADATA " + quote(mailbox) + b" (" + values + b")"


def setmetadata_command(mailbox: bytes, entries: list[tuple[str, bytes | None]]) -> bytes:
    """``SETMETADATA <mailbox> (entry value ...)`` without a tag; values that are not quotable go as ``{n+}``.

    ``mailbox`` is the argument as it goes on the wire.  Only for a server
    with LITERAL+ (or LITERAL- and values up to 4096 bytes) when a value is
    not printable ASCII.
    """
    parts = []
    for name, value in entries:
        if value is None:
            encoded = b"NIL"
        else:
            encoded = quote(value)
            if encoded.startswith(b"{"):
                encoded = b"{%d+}\r\n" % len(value) + value
        parts.append(quote(name) + b" " + encoded)
    return b"SETMETADATA " + mailbox + b" (" + b" ".join(parts) + b")"
