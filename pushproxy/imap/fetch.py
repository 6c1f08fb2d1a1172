"""FETCH response data (sans-IO): UID, FLAGS, ENVELOPE, MODSEQ, sizes, BINARY / BODY sections.

:func:`parse_fetch` reads ``* 3 FETCH (UID 7 FLAGS (\\Seen) ENVELOPE (...))``
into :class:`FetchItems`.  The ENVELOPE is kept as the exact bytes the server
sent (events carry it on, and a WEBPUSH payload repeats it verbatim);
:func:`parse_envelope` reads it when its fields are wanted.  Section data
(``BINARY[]``, ``BODY[HEADER]``, ...) is kept as bytes, keyed by the section
name in upper case without the partial ``<origin>``; nothing reads inside it.
Items the proxy does not use are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pushproxy.imap.assemble import MalformedResponse
from pushproxy.imap.parse import NIL, Atom, ParseError, Token, read_value

__all__ = ["Address", "Envelope", "FetchItems", "parse_envelope", "parse_fetch"]


@dataclass(frozen=True, slots=True)
class FetchItems:
    seq: int
    uid: int | None = None
    flags: tuple[str, ...] | None = None
    envelope: bytes | None = None  # raw ENVELOPE expression, exactly as sent
    modseq: int | None = None
    size: int | None = None  # RFC822.SIZE
    sections: dict[str, bytes | None] = field(default_factory=dict)  # "BINARY[]" -> bytes (NIL -> None)


_FETCH_HEAD = re.compile(rb"^\* (\d{1,20}) FETCH \(", re.IGNORECASE)
_KEY_END = re.compile(rb"[ ()\[]")


def _number(token: Token, what: str) -> int:
    if not isinstance(token, Atom) or not token.isdigit() or len(token) > 20:
        raise MalformedResponse(f"FETCH {what} is not a number")
    return int(token)


def _key(resp: bytes, pos: int) -> tuple[str, int]:
    """An item name such as ``UID``, ``BODY[HEADER.FIELDS (SUBJECT)]<0>``; its end."""
    m = _KEY_END.search(resp, pos)
    end = m.start() if m is not None else len(resp)
    if end < len(resp) and resp[end] == 0x5B:  # "[": the section runs to "]"
        close = resp.find(b"]", end)
        if close < 0:
            raise MalformedResponse("FETCH: unterminated section")
        end = close + 1
        if resp[end : end + 1] == b"<":
            angle = resp.find(b">", end)
            if angle < 0:
                raise MalformedResponse("FETCH: unterminated partial")
            end = angle + 1
    if end == pos:
        raise MalformedResponse("FETCH: empty item name")
    return resp[pos:end].decode("ascii", "replace").upper(), end


def parse_fetch(resp: bytes) -> FetchItems:
    """The items of one FETCH response; MalformedResponse if it is not one."""
    m = _FETCH_HEAD.match(resp)
    if m is None:
        raise MalformedResponse("not a FETCH response")
    seq = int(m.group(1))
    pos = m.end()
    n = len(resp)
    uid = modseq = size = None
    flags: tuple[str, ...] | None = None
    envelope: bytes | None = None
    sections: dict[str, bytes | None] = {}
    while True:
        if pos >= n:
            raise MalformedResponse("FETCH: unterminated item list")
        c = resp[pos]
        if c == 0x29:  # ")"
            break
        if c == 0x20:
            pos += 1
            continue
        key, key_end = _key(resp, pos)
        if resp[key_end : key_end + 1] != b" ":
            raise MalformedResponse(f"FETCH item {key[:20]} without a value")
        start = key_end + 1
        try:
            value, pos = read_value(resp, start)
        except ParseError as exc:
            raise MalformedResponse(f"FETCH {key[:20]}: {exc}") from None
        if key == "UID":
            uid = _number(value, "UID")
        elif key == "FLAGS":
            if not isinstance(value, list):
                raise MalformedResponse("FETCH FLAGS is not a list")
            flags = tuple(str(f) for f in value if isinstance(f, Atom))
        elif key == "ENVELOPE":
            if not isinstance(value, list):
                raise MalformedResponse("FETCH ENVELOPE is not a list")
            envelope = resp[start:pos]
        elif key == "MODSEQ":
            if not isinstance(value, list) or len(value) != 1:
                raise MalformedResponse("FETCH MODSEQ is not a one-number list")
            modseq = _number(value[0], "MODSEQ")
        elif key == "RFC822.SIZE":
            size = _number(value, "RFC822.SIZE")
        elif "[" in key:
            name = key.split("<", 1)[0]
            if isinstance(value, bytes):
                sections[name] = value
            elif value is NIL:
                sections[name] = None
            else:
                raise MalformedResponse(f"FETCH {name[:20]} is not a string")
    if resp[pos + 1 :].strip():
        raise MalformedResponse("FETCH: data after the item list")
    return FetchItems(seq, uid, flags, envelope, modseq, size, sections)


# --------------------------------------------------------------------------- ENVELOPE


@dataclass(frozen=True, slots=True)
class Address:
    name: str | None
    mailbox: str | None
    host: str | None

    @property
    def email(self) -> str | None:
        if self.mailbox is None:
            return None
        return f"{self.mailbox}@{self.host}" if self.host else self.mailbox


@dataclass(frozen=True, slots=True)
class Envelope:
    date: str | None
    subject: str | None
    sender: tuple[Address, ...]  # the From addresses
    to: tuple[Address, ...]
    message_id: str | None


def _nstring(token: Token) -> str | None:
    if token is NIL:
        return None
    if isinstance(token, bytes):
        return token.decode("utf-8", "replace")
    if isinstance(token, Atom):
        return str(token)
    raise MalformedResponse("ENVELOPE: expected a string")


def _addresses(token: Token) -> tuple[Address, ...]:
    if token is NIL:
        return ()
    if not isinstance(token, list):
        raise MalformedResponse("ENVELOPE: expected an address list")
    out: list[Address] = []
    for item in token:
        if not isinstance(item, list) or len(item) != 4:
            raise MalformedResponse("ENVELOPE: malformed address")
        out.append(Address(_nstring(item[0]), _nstring(item[2]), _nstring(item[3])))
    return tuple(out)


def parse_envelope(raw: bytes) -> Envelope:
    """The fields of a raw ENVELOPE expression (RFC 9051 7.5.2); headers stay undecoded (RFC 2047)."""
    try:
        value, end = read_value(raw, 0)
    except ParseError as exc:
        raise MalformedResponse(f"ENVELOPE: {exc}") from None
    if not isinstance(value, list) or len(value) != 10 or end != len(raw):
        raise MalformedResponse("ENVELOPE: expected a list of ten fields")
    return Envelope(
        date=_nstring(value[0]),
        subject=_nstring(value[1]),
        sender=_addresses(value[2]),
        to=_addresses(value[5]),
        message_id=_nstring(value[9]),
    )
