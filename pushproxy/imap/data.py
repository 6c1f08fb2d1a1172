"""Typed readers of server responses (sans-IO): what the proxy and the watchers read.

Every function takes one complete response as produced by
:class:`~pushproxy.imap.assemble.ResponseAssembler` (literals inline) and
either returns what it means or raises :class:`MalformedResponse` (a
:class:`~pushproxy.imap.parse.ParseError`, the core's one error type).

- :func:`read_response`: the head of any response (tag, kind, number,
  status and response code) without reading the rest.
- :func:`parse_capabilities`: ``* CAPABILITY`` or a ``[CAPABILITY ...]`` code.
- :func:`parse_status`: ``* STATUS`` (a STATUS command's answer, and the
  notifications RFC 5465 NOTIFY sends for mailboxes other than the selected).
- :func:`parse_list`: ``* LIST`` / ``* LSUB``.
- :func:`parse_vanished`, :func:`parse_uid_set`: QRESYNC expunges.
- :func:`parse_esearch`: ``* ESEARCH`` (RFC 4731).
- :func:`parse_enabled`: ``* ENABLED``.
- :func:`parse_select`: the untagged data of SELECT / EXAMINE.

FETCH lives in :mod:`pushproxy.imap.fetch`.  Mailbox names come back decoded
from modified UTF-7 and canonical (INBOX in upper case).  Dovecot 2.3's
NOTIFY names mailboxes in raw UTF-8; decoding both forms to the same name is
what lets a watcher match either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pushproxy.accounts import canonical_mailbox
from pushproxy.imap.assemble import MalformedResponse
from pushproxy.imap.fetch import FetchItems, parse_fetch
from pushproxy.imap.parse import NIL, Atom, ParseError, StatusResponse, Token, parse_arguments, parse_status_response
from pushproxy.imap.utf7 import decode_mailbox

__all__ = [
    "ESearch",
    "ListItem",
    "MalformedResponse",
    "Response",
    "SelectInfo",
    "StatusInfo",
    "mailbox_from_token",
    "parse_capabilities",
    "parse_enabled",
    "parse_esearch",
    "parse_list",
    "parse_select",
    "parse_status",
    "parse_uid_set",
    "parse_vanished",
    "read_response",
]

MAX_UID_SET = 100_000  # a bigger UID set is refused rather than expanded


@dataclass(frozen=True, slots=True)
class Response:
    """The head of one response: enough to route it without reading it all."""

    raw: bytes
    tag: bytes  # b"*" untagged, b"+" continuation, else the command's tag
    kind: str  # upper case: OK NO BAD BYE PREAUTH EXISTS FETCH STATUS ... ("+" for continuations)
    number: int | None = None  # "* 3 EXISTS" -> 3
    status: StatusResponse | None = None  # for OK/NO/BAD/BYE/PREAUTH

    @property
    def tagged(self) -> bool:
        return self.tag not in (b"*", b"+")

    @property
    def code(self) -> str | None:
        """The response code's name, upper case (``[UIDNEXT 5]`` -> ``UIDNEXT``)."""
        if self.status is None or self.status.code is None:
            return None
        return self.status.code.split(b" ", 1)[0].decode("ascii", "replace").upper()

    @property
    def code_arg(self) -> str:
        if self.status is None or self.status.code is None:
            return ""
        parts = self.status.code.split(b" ", 1)
        return parts[1].decode("ascii", "replace") if len(parts) > 1 else ""

    @property
    def text(self) -> str:
        """The response as one printable line (for logs), at most 160 characters."""
        return self.raw[:160].decode("utf-8", "replace").strip()


_HEAD = re.compile(rb"^(\S+) (?:(\d{1,20}) )?([A-Za-z][A-Za-z0-9.-]*)")


def read_response(raw: bytes) -> Response:
    """The head of a response; garbage raises MalformedResponse."""
    if raw[:1] == b"+":
        return Response(raw, b"+", "+")
    m = _HEAD.match(raw)
    if m is None:
        raise MalformedResponse(f"unreadable response {raw[:40]!r}")
    tag, number, word = m.group(1), m.group(2), m.group(3).decode("ascii").upper()
    if tag != b"*" and number is not None:
        raise MalformedResponse("a tagged response has no number")
    status = parse_status_response(raw) if number is None else None
    if status is not None:
        return Response(raw, tag, status.status.decode("ascii"), None, status)
    if tag != b"*":
        raise MalformedResponse(f"tagged response without a status {raw[:40]!r}")
    return Response(raw, tag, word, int(number) if number is not None else None)


def _args(raw: bytes, pos: int, what: str) -> list[Token]:
    try:
        return parse_arguments(raw, pos)
    except ParseError as exc:
        raise MalformedResponse(f"{what}: {exc}") from None


def mailbox_from_token(token: Token) -> str:
    """A mailbox name (astring) decoded from modified UTF-7 or raw UTF-8, canonical."""
    if isinstance(token, bytes):
        text = token.decode("utf-8", "replace")
    elif isinstance(token, Atom):
        text = str(token)
    else:
        raise MalformedResponse("expected a mailbox name")
    return canonical_mailbox(decode_mailbox(text))


def _number(token: Token, what: str) -> int:
    if not isinstance(token, Atom) or not token.isdigit() or len(token) > 20:
        raise MalformedResponse(f"{what} is not a number")
    return int(token)


# --------------------------------------------------------------------------- CAPABILITY / ENABLED


def parse_capabilities(resp: Response) -> frozenset[str] | None:
    """Upper-case capability names from ``* CAPABILITY ...`` or a ``[CAPABILITY ...]`` code."""
    if resp.kind == "CAPABILITY" and resp.tag == b"*":
        return frozenset(resp.raw[13:].decode("ascii", "replace").upper().split())
    if resp.code == "CAPABILITY":
        return frozenset(resp.code_arg.upper().split())
    return None


def parse_enabled(resp: Response) -> frozenset[str]:
    """``* ENABLED QRESYNC CONDSTORE`` -> {"QRESYNC", "CONDSTORE"}."""
    if resp.kind != "ENABLED":
        return frozenset()
    return frozenset(resp.raw[10:].decode("ascii", "replace").upper().split())


# --------------------------------------------------------------------------- STATUS


@dataclass(frozen=True, slots=True)
class StatusInfo:
    mailbox: str
    messages: int | None = None
    uidnext: int | None = None
    uidvalidity: int | None = None
    unseen: int | None = None
    highestmodseq: int | None = None


def parse_status(resp: Response) -> StatusInfo:
    """``* STATUS "Sent Messages" (UIDNEXT 5 ...)``; also the STATUS that NOTIFY sends."""
    if resp.kind != "STATUS":
        raise MalformedResponse("not a STATUS response")
    args = _args(resp.raw, 8, "STATUS")
    if len(args) != 2 or not isinstance(args[1], list):
        raise MalformedResponse("STATUS: expected a mailbox and a list")
    mailbox = mailbox_from_token(args[0])
    items = args[1]
    if len(items) % 2:
        raise MalformedResponse("STATUS: odd number of items")
    attrs: dict[str, int] = {}
    for i in range(0, len(items), 2):
        name = items[i]
        if not isinstance(name, Atom):
            raise MalformedResponse("STATUS: item name is not an atom")
        attrs[name.upper()] = _number(items[i + 1], f"STATUS {name}")
    return StatusInfo(
        mailbox,
        messages=attrs.get("MESSAGES"),
        uidnext=attrs.get("UIDNEXT"),
        uidvalidity=attrs.get("UIDVALIDITY"),
        unseen=attrs.get("UNSEEN"),
        highestmodseq=attrs.get("HIGHESTMODSEQ"),
    )


# --------------------------------------------------------------------------- LIST / LSUB


@dataclass(frozen=True, slots=True)
class ListItem:
    mailbox: str  # decoded, canonical
    attributes: frozenset[str]  # as sent, e.g. "\\HasNoChildren", "\\Junk"
    delimiter: str | None

    def has(self, attribute: str) -> bool:
        wanted = attribute.lower()
        return any(a.lower() == wanted for a in self.attributes)


def parse_list(resp: Response) -> ListItem:
    """``* LIST (\\HasNoChildren) "/" "Sent"`` (or LSUB) -> its parts."""
    if resp.kind not in ("LIST", "LSUB"):
        raise MalformedResponse("not a LIST or LSUB response")
    args = _args(resp.raw, 2 + len(resp.kind), resp.kind)
    if len(args) < 3 or not isinstance(args[0], list):
        raise MalformedResponse(f"{resp.kind}: expected attributes, delimiter and name")
    attrs = frozenset(str(a) for a in args[0] if isinstance(a, Atom))
    delim_token = args[1]
    if delim_token is NIL:
        delimiter = None
    elif isinstance(delim_token, bytes) and len(delim_token) == 1:
        delimiter = delim_token.decode("ascii", "replace")
    else:
        raise MalformedResponse(f"{resp.kind}: bad hierarchy delimiter")
    return ListItem(mailbox_from_token(args[2]), attrs, delimiter)


# --------------------------------------------------------------------------- VANISHED / ESEARCH


def parse_uid_set(raw: bytes | str) -> list[int]:
    """``3:5,9`` -> [3, 4, 5, 9] (at most MAX_UID_SET UIDs; ``*`` is not accepted)."""
    text = raw.encode("ascii", "replace") if isinstance(raw, str) else raw
    uids: list[int] = []
    for part in text.split(b","):
        lo, sep, hi = part.partition(b":")
        if not lo.isdigit() or (sep and not hi.isdigit()) or len(lo) > 10 or len(hi) > 10:
            raise MalformedResponse("invalid UID set")
        a = int(lo)
        b = int(hi) if sep else a
        if a > b:
            a, b = b, a
        if b - a + 1 + len(uids) > MAX_UID_SET:
            raise MalformedResponse("UID set too large")
        uids.extend(range(a, b + 1))
    return uids


def parse_vanished(resp: Response) -> tuple[bool, list[int]]:
    """``* VANISHED (EARLIER) 3:5,9`` -> (True, [3, 4, 5, 9])."""
    if resp.kind != "VANISHED":
        raise MalformedResponse("not a VANISHED response")
    args = _args(resp.raw, 10, "VANISHED")
    earlier = False
    if args and isinstance(args[0], list):
        earlier = [str(a).upper() for a in args[0]] == ["EARLIER"]
        args = args[1:]
    if len(args) != 1 or not isinstance(args[0], Atom):
        raise MalformedResponse("VANISHED: expected a UID set")
    return earlier, parse_uid_set(str(args[0]))


@dataclass(frozen=True, slots=True)
class ESearch:
    tag: bytes | None  # the (TAG "...") correlator
    uid: bool
    results: dict[str, str] = field(default_factory=dict)  # MIN / MAX / COUNT / ALL / MODSEQ -> value

    def all_uids(self) -> list[int]:
        value = self.results.get("ALL")
        return parse_uid_set(value) if value else []


def parse_esearch(resp: Response) -> ESearch:
    """``* ESEARCH (TAG "a1") UID COUNT 2 ALL 4:5`` -> ESearch."""
    if resp.kind != "ESEARCH":
        raise MalformedResponse("not an ESEARCH response")
    args = _args(resp.raw, 9, "ESEARCH")
    tag: bytes | None = None
    if args and isinstance(args[0], list):
        corr = args[0]
        if len(corr) == 2 and isinstance(corr[0], Atom) and corr[0].upper() == "TAG" and isinstance(corr[1], bytes):
            tag = corr[1]
        args = args[1:]
    uid = bool(args) and isinstance(args[0], Atom) and args[0].upper() == "UID"
    if uid:
        args = args[1:]
    if len(args) % 2:
        raise MalformedResponse("ESEARCH: odd number of result items")
    results: dict[str, str] = {}
    for i in range(0, len(args), 2):
        name, value = args[i], args[i + 1]
        if not isinstance(name, Atom) or not isinstance(value, Atom):
            raise MalformedResponse("ESEARCH: bad result item")
        results[name.upper()] = str(value)
    return ESearch(tag, uid, results)


# --------------------------------------------------------------------------- SELECT / EXAMINE


@dataclass(slots=True)
class SelectInfo:
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    exists: int | None = None
    nomodseq: bool = False
    vanished: list[int] = field(default_factory=list)  # QRESYNC: VANISHED (EARLIER)
    changed: list[FetchItems] = field(default_factory=list)  # QRESYNC: changed since the modseq


_CODE_NUMBERS = ("UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ")


def parse_select(untagged: list[Response]) -> SelectInfo:
    """What SELECT / EXAMINE returned: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, EXISTS (+ QRESYNC data)."""
    info = SelectInfo()
    for resp in untagged:
        code = resp.code
        if code is not None:
            arg = resp.code_arg
            if code in _CODE_NUMBERS and arg.isdigit() and len(arg) <= 20:
                setattr(info, code.lower(), int(arg))
            elif code == "NOMODSEQ":
                info.nomodseq = True
        elif resp.kind == "EXISTS" and resp.number is not None:
            info.exists = resp.number
        elif resp.kind == "VANISHED":
            info.vanished.extend(parse_vanished(resp)[1])
        elif resp.kind == "FETCH":
            info.changed.append(parse_fetch(resp.raw))
    return info
