"""Sans-IO pieces of the watcher's IMAP client: building commands, reading responses.

A *response* here is one complete server response as bytes, literals inline
(``* 3 FETCH (... {5}\\r\\nhello ...)\\r\\n``), exactly as it came off the
wire; :class:`ResponseAssembler` cuts a byte stream into such responses.  The
parsers below read only what the watcher needs: FETCH items (UID, FLAGS, the
raw ENVELOPE, MODSEQ), STATUS attributes, response codes of SELECT/EXAMINE,
EXISTS, VANISHED.  Nothing here touches a socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pushproxy.accounts import canonical_mailbox
from pushproxy.imap.parse import Atom, ParseError, parse_arguments
from pushproxy.imap.response import quote
from pushproxy.imap.utf7 import decode_mailbox, encode_mailbox

__all__ = [
    "FetchItems",
    "Literal",
    "MalformedResponse",
    "SelectInfo",
    "StatusInfo",
    "astring",
    "classify",
    "mailbox_arg",
    "parse_capabilities",
    "parse_exists",
    "parse_fetch",
    "parse_select",
    "parse_status",
    "parse_uid_set",
    "parse_vanished",
    "response_code",
    "skip_value",
]


class MalformedResponse(ValueError):
    """A server response the watcher cannot read (treated as a protocol error)."""


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


def mailbox_from_token(token: object) -> str:
    """The decoded, canonical mailbox name of a parsed astring token."""
    if isinstance(token, bytes):
        text = token.decode("utf-8", "replace")
    elif isinstance(token, Atom):
        text = str(token)
    else:
        raise MalformedResponse("expected a mailbox name")
    return canonical_mailbox(decode_mailbox(text))


# --------------------------------------------------------------------------- response framing

# A literal announced at the end of a line: "{12}" or "~{12}" (binary, RFC 3516).
_LITERAL_TAIL = re.compile(rb"~?\{(\d{1,10})\}\r\n$")
# Lines whose tail is free text (resp-text), where "{5}" is not a literal.
_TEXT_LINE = re.compile(rb"^(?:\+|\S+ (?:OK|NO|BAD|BYE|PREAUTH)(?: |\r\n))", re.IGNORECASE)


class ResponseTooLarge(MalformedResponse):
    pass


class ResponseAssembler:
    """Cut a byte stream into complete responses (lines plus their literals).

    ``feed`` returns the responses completed by the new bytes.  Sizes are
    bounded: a server sending endless data cannot exhaust memory.
    """

    __slots__ = ("_buf", "_max_response", "_need", "_parts", "_size")

    def __init__(self, max_response: int = 4 * 1024 * 1024) -> None:
        self._buf = b""
        self._parts: list[bytes] = []
        self._size = 0
        self._need = 0  # bytes of literal still expected
        self._max_response = max_response

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf + data if self._buf else data
        pos = 0
        while pos < len(buf):
            if self._need:
                take = min(self._need, len(buf) - pos)
                self._parts.append(buf[pos : pos + take])
                self._need -= take
                pos += take
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            line = buf[pos : end + 2]
            pos = end + 2
            self._grow(len(line))
            self._parts.append(line)
            m = _LITERAL_TAIL.search(line)
            if m is not None and not _TEXT_LINE.match(self._parts[0]):
                self._need = int(m.group(1))
                self._grow(self._need)
                continue
            out.append(b"".join(self._parts))
            self._parts = []
            self._size = 0
        self._buf = buf[pos:]
        if len(self._buf) + self._size > self._max_response:
            raise ResponseTooLarge("response line too long")
        return out

    def _grow(self, n: int) -> None:
        self._size += n
        if self._size > self._max_response:
            raise ResponseTooLarge(f"response larger than {self._max_response} bytes")

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete response."""
        return len(self._buf) + self._size


# --------------------------------------------------------------------------- value scanning


def _skip_quoted(data: bytes, pos: int) -> int:
    i = pos + 1
    n = len(data)
    while i < n:
        c = data[i]
        if c == 0x5C:  # backslash escapes the next byte
            i += 2
            continue
        if c == 0x22:
            return i + 1
        i += 1
    raise MalformedResponse("unterminated quoted string")


_LITERAL_HEAD = re.compile(rb"~?\{(\d{1,10})\}\r\n")


def _skip_literal(data: bytes, pos: int) -> int:
    m = _LITERAL_HEAD.match(data, pos)
    if m is None:
        raise MalformedResponse("malformed literal")
    end = m.end() + int(m.group(1))
    if end > len(data):
        raise MalformedResponse("literal shorter than announced")
    return end


def skip_value(data: bytes, pos: int) -> int:
    """Index just past the value starting at ``pos``.

    A value is a parenthesised list (balanced, honouring quoted strings and
    literals inside it), a quoted string, a literal, or an atom / number /
    NIL (up to a space or a closing parenthesis).
    """
    if pos >= len(data):
        raise MalformedResponse("missing value")
    c = data[pos]
    if c == 0x28:  # (
        depth = 0
        i = pos
        n = len(data)
        while i < n:
            c = data[i]
            if c == 0x28:
                depth += 1
                i += 1
            elif c == 0x29:
                depth -= 1
                i += 1
                if depth == 0:
                    return i
            elif c == 0x22:
                i = _skip_quoted(data, i)
            elif c in (0x7B, 0x7E) and _LITERAL_HEAD.match(data, i):
                i = _skip_literal(data, i)
            else:
                i += 1
        raise MalformedResponse("unbalanced parentheses")
    if c == 0x22:
        return _skip_quoted(data, pos)
    if c in (0x7B, 0x7E) and _LITERAL_HEAD.match(data, pos):
        return _skip_literal(data, pos)
    i = pos
    n = len(data)
    while i < n and data[i] not in (0x20, 0x29, 0x0D):
        if data[i] == 0x5B:  # "[": section spec of BODY[...] may hold spaces and parens
            close = data.find(b"]", i)
            if close < 0:
                raise MalformedResponse("unterminated section")
            i = close + 1
            continue
        i += 1
    if i == pos:
        raise MalformedResponse("empty value")
    return i


# --------------------------------------------------------------------------- parsers


@dataclass(frozen=True, slots=True)
class FetchItems:
    seq: int
    uid: int | None = None
    flags: tuple[str, ...] | None = None
    envelope: bytes | None = None  # raw ENVELOPE expression, exactly as sent
    modseq: int | None = None


_FETCH_HEAD = re.compile(rb"^\* (\d+) FETCH \(", re.IGNORECASE)
_FLAG_TOKEN = re.compile(rb"[^\s()]+")


def parse_fetch(resp: bytes) -> FetchItems | None:
    """``* 3 FETCH (UID 7 FLAGS (\\Seen) ENVELOPE (...))`` -> its items; None if not a FETCH."""
    m = _FETCH_HEAD.match(resp)
    if m is None:
        return None
    seq = int(m.group(1))
    pos = m.end()
    uid = modseq = None
    flags: tuple[str, ...] | None = None
    envelope = None
    n = len(resp)
    while pos < n:
        c = resp[pos]
        if c == 0x29:  # ")"
            break
        if c == 0x20:
            pos += 1
            continue
        key_end = skip_value(resp, pos)
        key = resp[pos:key_end].upper()
        if key_end >= n or resp[key_end] != 0x20:
            raise MalformedResponse(f"FETCH item {key[:20]!r} without value")
        vstart = key_end + 1
        vend = skip_value(resp, vstart)
        value = resp[vstart:vend]
        if key == b"UID":
            uid = _number(value, "UID")
        elif key == b"FLAGS":
            if not value.startswith(b"(") or not value.endswith(b")"):
                raise MalformedResponse("FLAGS is not a list")
            flags = tuple(t.decode("utf-8", "replace") for t in _FLAG_TOKEN.findall(value[1:-1]))
        elif key == b"ENVELOPE":
            envelope = value
        elif key == b"MODSEQ":
            modseq = _number(value.strip(b"()"), "MODSEQ")
        pos = vend
    return FetchItems(seq, uid, flags, envelope, modseq)


def _number(raw: bytes, what: str) -> int:
    if not raw.isdigit():
        raise MalformedResponse(f"{what} is not a number")
    return int(raw)


@dataclass(frozen=True, slots=True)
class StatusInfo:
    mailbox: str
    messages: int | None = None
    uidnext: int | None = None
    uidvalidity: int | None = None
    highestmodseq: int | None = None


_STATUS_HEAD = re.compile(rb"^\* STATUS", re.IGNORECASE)


def parse_status(resp: bytes) -> StatusInfo | None:
    """``* STATUS "Sent Messages" (UIDNEXT 5 ...)`` -> StatusInfo; None if not a STATUS."""
    m = _STATUS_HEAD.match(resp)
    if m is None:
        return None
    try:
        args = parse_arguments(resp, m.end())
    except ParseError as exc:
        raise MalformedResponse(f"STATUS: {exc}") from None
    if len(args) != 2 or not isinstance(args[1], list):
        raise MalformedResponse("STATUS: expected a mailbox and a list")
    mailbox = mailbox_from_token(args[0])
    attrs: dict[str, int] = {}
    items = args[1]
    for i in range(0, len(items) - 1, 2):
        name, value = items[i], items[i + 1]
        if isinstance(name, Atom) and isinstance(value, Atom) and value.isdigit():
            attrs[name.upper()] = int(value)
    return StatusInfo(
        mailbox,
        messages=attrs.get("MESSAGES"),
        uidnext=attrs.get("UIDNEXT"),
        uidvalidity=attrs.get("UIDVALIDITY"),
        highestmodseq=attrs.get("HIGHESTMODSEQ"),
    )


_CODE = re.compile(rb"^\S+ (?:OK|NO|BAD|BYE|PREAUTH) \[([^\]]*)\]", re.IGNORECASE)


def response_code(resp: bytes) -> tuple[str, str] | None:
    """``* OK [UIDNEXT 5] ...`` -> ("UIDNEXT", "5"); None without a response code."""
    m = _CODE.match(resp)
    if m is None:
        return None
    name, _, arg = m.group(1).decode("ascii", "replace").partition(" ")
    return name.upper(), arg


@dataclass(slots=True)
class SelectInfo:
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    exists: int | None = None
    nomodseq: bool = False
    vanished: list[int] = field(default_factory=list)  # QRESYNC: VANISHED (EARLIER)
    changed: list[FetchItems] = field(default_factory=list)  # QRESYNC: changed since the modseq


def parse_select(untagged: list[bytes]) -> SelectInfo:
    """What SELECT / EXAMINE returned: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, EXISTS (+ QRESYNC data)."""
    info = SelectInfo()
    for resp in untagged:
        code = response_code(resp)
        if code is not None:
            name, arg = code
            if name == "UIDVALIDITY" and arg.isdigit():
                info.uidvalidity = int(arg)
            elif name == "UIDNEXT" and arg.isdigit():
                info.uidnext = int(arg)
            elif name == "HIGHESTMODSEQ" and arg.isdigit():
                info.highestmodseq = int(arg)
            elif name == "NOMODSEQ":
                info.nomodseq = True
            continue
        exists = parse_exists(resp)
        if exists is not None:
            info.exists = exists
            continue
        vanished = parse_vanished(resp)
        if vanished is not None:
            info.vanished.extend(vanished[1])
            continue
        fetch = parse_fetch(resp)
        if fetch is not None:
            info.changed.append(fetch)
    return info


_EXISTS = re.compile(rb"^\* (\d+) EXISTS\r?\n?$", re.IGNORECASE)


def parse_exists(resp: bytes) -> int | None:
    m = _EXISTS.match(resp)
    return int(m.group(1)) if m else None


_VANISHED = re.compile(rb"^\* VANISHED (\(EARLIER\) )?([0-9:,]+)\r?\n?$", re.IGNORECASE)
_MAX_UID_SET = 100_000  # a bigger range is reported as its bounds only


def parse_vanished(resp: bytes) -> tuple[bool, list[int]] | None:
    """``* VANISHED (EARLIER) 3:5,9`` -> (True, [3, 4, 5, 9]); None if not a VANISHED."""
    m = _VANISHED.match(resp)
    if m is None:
        return None
    return m.group(1) is not None, parse_uid_set(m.group(2))


def parse_uid_set(raw: bytes) -> list[int]:
    uids: list[int] = []
    for part in raw.split(b","):
        lo, sep, hi = part.partition(b":")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise MalformedResponse("invalid UID set")
        a = int(lo)
        b = int(hi) if sep else a
        if a > b:
            a, b = b, a
        if b - a + len(uids) > _MAX_UID_SET:
            raise MalformedResponse("UID set too large")
        uids.extend(range(a, b + 1))
    return uids


def parse_capabilities(resp: bytes) -> frozenset[str] | None:
    """Capabilities from ``* CAPABILITY ...`` or a ``[CAPABILITY ...]`` response code."""
    if resp[:13].upper() == b"* CAPABILITY ":
        return frozenset(resp[13:].decode("ascii", "replace").upper().split())
    code = response_code(resp)
    if code is not None and code[0] == "CAPABILITY":
        return frozenset(code[1].upper().split())
    return None


# What an untagged response means to a watcher.
_KIND = re.compile(rb"^\* (?:(\d+) )?([A-Za-z]+)")


def classify(resp: bytes) -> str:
    """A rough kind: EXISTS, EXPUNGE, FETCH, VANISHED, STATUS, BYE, OK, ... (upper case)."""
    m = _KIND.match(resp)
    if m is None:
        return "+" if resp.startswith(b"+") else "TAGGED"
    return m.group(2).decode("ascii").upper()
