"""Sans-IO parsing of the few IMAP commands and responses the proxy reads.

The proxy reads only what it must: the tag and name of each client command,
the arguments of the commands it answers itself or captures credentials from
(LOGIN, AUTHENTICATE, XAPPLEPUSHSERVICE, WEBPUSH...), and the status and
response codes of upstream responses.  Everything else passes untouched.

A command is given as the bytes of its lines with their literals inline
(``a LOGIN {5}\\r\\nalice pw\\r\\n``), exactly as they came off the wire.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "NIL",
    "Atom",
    "ParseError",
    "StatusResponse",
    "Token",
    "is_valid_tag",
    "parse_arguments",
    "parse_command",
    "parse_status_response",
    "read_value",
    "split_tag_command",
]


class ParseError(ValueError):
    """The bytes are not a well-formed command; the message is fit for a BAD."""


class Atom(str):
    """An unquoted atom (``NIL`` is :data:`NIL`)."""

    __slots__ = ()


class _Nil:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NIL"


NIL = _Nil()

# str for atoms, bytes for quoted strings and literals, list for parenthesised lists.
Token = Atom | bytes | _Nil | list["Token"]

# List wildcards (% *) are accepted inside atoms: LIST patterns, sequence sets, "LWEBPUSH *".
_ATOM_SPECIALS = frozenset(b'(){ "\\]\r\n') | frozenset(range(0, 32)) | {127}
_QUOTED_RE = re.compile(rb'"((?:[^"\\\r\n]++|\\["\\])*+)"')
_UNESCAPE_RE = re.compile(rb'\\(["\\])')
_TAG_RE = re.compile(rb"^([^\x00-\x20(){%*\"\\+\x7f]+) ([A-Za-z][A-Za-z0-9_.-]*)")


def split_tag_command(line: bytes) -> tuple[bytes, bytes] | None:
    """``b"a1 uid fetch ..."`` -> ``(b"a1", b"UID")``; None when it is not a command line."""
    m = _TAG_RE.match(line)
    if m is None:
        return None
    return m.group(1), m.group(2).upper()


_TAG_FORBIDDEN = frozenset(b'(){%*"\\+]')
# Every byte a tag may hold: deleting them with bytes.translate (one C pass) leaves
# nothing of a valid tag; no Python loop per byte on the per-command path.
_TAG_CHARS = bytes(c for c in range(0x21, 0x7F) if c not in _TAG_FORBIDDEN)


MAX_TAG = 64


def is_valid_tag(tag: bytes) -> bool:
    """RFC 9051 ``tag`` (printable ASCII, no atom-specials, no ``+``), minus ``]``, at most 64 bytes.

    The RFC allows ``]`` and any length, but Dovecot answers a ``]`` (and, before
    login, a tag over about 126 bytes) with an untagged BAD, which would leave the
    command unanswered: the proxy refuses those itself.
    """
    return 0 < len(tag) <= MAX_TAG and not tag.translate(None, _TAG_CHARS)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def at_end(self) -> bool:
        # No slice of the rest: a response with many arguments must not cost a copy per argument.
        left = len(self.data) - self.pos
        if left == 0:
            return True
        if left == 1:
            return self.data[self.pos] == 0x0A
        return left == 2 and self.data[self.pos : self.pos + 2] == b"\r\n"

    def skip_space(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def token(self, depth: int = 0) -> Token:
        c = self.peek()
        if c == -1:
            raise ParseError("missing argument")
        if c == 0x22:  # "
            return self._quoted()
        if c in (0x7B, 0x7E):  # { or ~{
            return self._literal()
        if c == 0x28:  # (
            if depth > 8:
                raise ParseError("lists nested too deeply")
            return self._list(depth + 1)
        return self._atom()

    def _quoted(self) -> bytes:
        # One regex pass (C speed, linear): a megabyte-long quoted string is one match, not a Python loop.
        m = _QUOTED_RE.match(self.data, self.pos)
        if m is None:
            raise ParseError("unterminated quoted string or invalid escape")
        self.pos = m.end()
        body = m.group(1)
        return _UNESCAPE_RE.sub(rb"\1", body) if b"\\" in body else body

    def _literal(self) -> bytes:
        m = re.compile(rb"~?\{(\d{1,10})[+-]?\}\r?\n").match(self.data, self.pos)
        if m is None:
            raise ParseError("malformed literal")
        size = int(m.group(1))
        start = m.end()
        if start + size > len(self.data):
            raise ParseError("literal shorter than announced")
        self.pos = start + size
        return self.data[start : self.pos]

    def _atom(self) -> Atom | _Nil:
        start = self.pos
        data = self.data
        i = start
        if i < len(data) and data[i] == 0x5C:  # a flag: "\" atom (\Seen, \HasNoChildren)
            i += 1
        while i < len(data) and data[i] not in _ATOM_SPECIALS:
            i += 1
        # Resp-specials "]" is allowed inside atoms such as BODY[...]; accept it too.
        while i < len(data) and data[i] == 0x5D:
            i += 1
            while i < len(data) and data[i] not in _ATOM_SPECIALS:
                i += 1
        if i == start:
            raise ParseError(f"unexpected character {chr(data[i])!r}")
        self.pos = i
        text = data[start:i].decode("ascii", "replace")
        if text.upper() == "NIL":
            return NIL
        return Atom(text)

    def _list(self, depth: int) -> list[Token]:
        self.pos += 1
        items: list[Token] = []
        if self.peek() == 0x29:
            self.pos += 1
            return items
        while True:
            items.append(self.token(depth))
            if self.peek() == 0x29:
                self.pos += 1
                return items
            if self.peek() == 0x28 and isinstance(items[-1], list):
                continue  # address lists: "(" 1*address ")", no spaces between (RFC 9051 env-from)
            if not self.skip_space():
                raise ParseError("expected space or ')' in list")


def read_value(data: bytes, pos: int) -> tuple[Token, int]:
    """The value (atom, string, literal, list, NIL) starting at ``pos``, and the index just past it."""
    reader = _Reader(data, pos)
    token = reader.token()
    return token, reader.pos


def parse_arguments(data: bytes, pos: int = 0) -> list[Token]:
    """Parse space-separated arguments from ``pos`` up to the final line end."""
    reader = _Reader(data, pos)
    args: list[Token] = []
    if reader.at_end():
        return args
    if not reader.skip_space():
        raise ParseError("expected a space before the arguments")
    while True:
        args.append(reader.token())
        if reader.at_end():
            return args
        if not reader.skip_space():
            raise ParseError("expected a space between arguments")
        if reader.at_end():
            raise ParseError("trailing space")


@dataclass(frozen=True, slots=True)
class Command:
    tag: bytes
    name: str  # upper case
    args: list[Token]


def parse_command(data: bytes) -> Command:
    """Parse a complete command (literals inline)."""
    head = split_tag_command(data)
    if head is None:
        raise ParseError("expected a tag and a command name")
    tag, name = head
    pos = len(tag) + 1 + len(name)
    return Command(tag, name.decode("ascii"), parse_arguments(data, pos))


def as_text(token: Token, what: str) -> str:
    """An astring argument as text (UTF-8); ParseError naming ``what`` otherwise."""
    if isinstance(token, bytes):
        try:
            return token.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(f"{what} is not valid UTF-8") from None
    if isinstance(token, Atom):
        return str(token)
    if token is NIL:
        return "NIL"
    raise ParseError(f"{what}: expected a string")


@dataclass(frozen=True, slots=True)
class StatusResponse:
    tag: bytes  # b"*" for untagged
    status: bytes  # OK NO BAD BYE PREAUTH (upper case)
    code: bytes | None  # the text inside [...], e.g. b"CAPABILITY IMAP4rev1 ..."
    code_start: int  # index of "[" in the line (or -1)
    code_end: int  # index just after "]" (or -1)


_STATUS_RE = re.compile(rb"^(\S+) (OK|NO|BAD|BYE|PREAUTH)(?: |\r?\n|$)", re.IGNORECASE)


def parse_status_response(line: bytes) -> StatusResponse | None:
    """``a1 OK [CAPABILITY ...] done`` -> its parts; None for other lines."""
    m = _STATUS_RE.match(line)
    if m is None:
        return None
    tag = m.group(1)
    status = m.group(2).upper()
    code = None
    start = end = -1
    after = m.end()
    if line[after : after + 1] == b"[":
        close = line.find(b"]", after)
        if close > 0:
            code = line[after + 1 : close]
            start, end = after, close + 1
    return StatusResponse(tag, status, code, start, end)
