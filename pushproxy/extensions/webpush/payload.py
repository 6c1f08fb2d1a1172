"""Plaintext of Web Push messages: IMAP responses (pure functions, no IO).

What goes inside the aes128gcm envelope (webpush-imap.md, "What is pushed"):
CRLF-terminated, UID-based IMAP responses grouped by mailbox, at most 3993
bytes (RFC 8291: one 4096-byte record).  New mail carries, in order of
preference while the pushes fit (draft -01, and webpush-imap.md "What is
pushed"): FLAGS, ENVELOPE and the message itself (``BINARY[]``, or ``BODY[]``
from an upstream without BINARY); else FLAGS and ENVELOPE; else FLAGS only
(the compact form: every message's UID); else ``* SYNC`` for the mailbox.  A
batch of new messages may take several pushes (:func:`new_mail_payloads`,
at most :data:`MAX_NEW_MAIL_PUSHES`), and so may changes (expunges, flag
changes: :func:`change_payloads`, at most :data:`MAX_CHANGE_PUSHES`); a
response is never split across pushes.

Pinned interpretation: mailbox names are sent in modified UTF-7 (RFC 3501
5.1.3), since a push cannot know whether the client enabled UTF8=ACCEPT; names
always end up as quoted strings.  ENVELOPEs built
from header values are :func:`pushproxy.imap.envelope.envelope_from_fields`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pushproxy.events import MessageInfo
from pushproxy.imap.response import quote
from pushproxy.imap.utf7 import encode_mailbox

MAX_PLAINTEXT = 3993  # RFC 8291 section 4: 4096 - 86 (header) - 16 (tag) - 1 (delimiter)

PayloadLevel = Literal["full", "envelope", "flags", "sync"]
# A burst of changes in one mailbox takes at most this many pushes; beyond, one SYNC push.
MAX_CHANGE_PUSHES = 8
# A batch of new messages in one mailbox (one event: catch-up after an outage, a failover, a restart, a big
# delivery) takes at most this many pushes; beyond, one SYNC push.  In the compact form (UID and FLAGS,
# ~30 bytes a message) 8 pushes hold about 1,000 messages.
MAX_NEW_MAIL_PUSHES = 8

# A flag is "\" atom or a keyword atom (RFC 9051): no atom-specials, no "]".
_FLAG_RE = re.compile(rb"^\\?[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-]{1,256}$")


class PayloadTooLarge(ValueError):
    """Not even the smallest form of the payload fits the limit (an absurdly long mailbox name)."""


@dataclass(frozen=True, slots=True)
class PayloadResult:
    data: bytes
    level: PayloadLevel


def mailbox_string(mailbox: str) -> bytes:
    """A mailbox name as an IMAP string: modified UTF-7, quoted (or a literal if it must)."""
    return quote(encode_mailbox(mailbox).encode("ascii"))


def select_line(mailbox: str) -> bytes:
    return b"* SELECT " + mailbox_string(mailbox) + b"\r\n"


def sync_payload(mailbox: str) -> bytes:
    """``* SELECT "<mailbox>"`` + ``* SYNC``: "resynchronise this mailbox"."""
    return select_line(mailbox) + b"* SYNC\r\n"


def ack_payload(token: str) -> bytes:
    """The verification push of a new or changed subscription."""
    if not _TOKEN_RE.match(token):
        raise ValueError("an ACKWEBPUSH token must be 1-256 characters of [A-Za-z0-9_-]")
    return b"* ACKWEBPUSH " + token.encode("ascii") + b"\r\n"


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Junk)``; anything that is not a valid flag atom is left out rather than break the syntax."""
    good: list[bytes] = []
    for flag in flags:
        raw = flag.encode("utf-8", "replace")
        # \Recent is session state (and gone in IMAP4rev2): meaningless in a push.
        if raw.lower() == b"\\recent":
            continue
        if _FLAG_RE.match(raw) and raw not in good:
            good.append(raw)
    return b"(" + b" ".join(good) + b")"


def _uidfetch(uid: int, items: bytes) -> bytes:
    if not 0 < uid < 2**32:
        raise ValueError(f"invalid UID {uid}")
    return b"* %d UIDFETCH (" % uid + items + b")\r\n"


def _fits(parts: Sequence[bytes], limit: int) -> bytes | None:
    data = b"".join(parts)
    return data if len(data) <= limit else None


def _sync_or_raise(mailbox: str, limit: int) -> PayloadResult:
    data = sync_payload(mailbox)
    if len(data) > limit:
        raise PayloadTooLarge(f"even a SYNC push for this mailbox needs {len(data)} bytes (limit {limit})")
    return PayloadResult(data, "sync")


def message_literal(data: bytes) -> bytes:
    """The message as a literal: ``~{n}`` (literal8, RFC 3516) when it holds NUL, else ``{n}``."""
    return (b"~{%d}\r\n" if b"\0" in data else b"{%d}\r\n") % len(data) + data


def _message_items(m: MessageInfo, with_envelope: bool, with_body: bool) -> bytes:
    items = b"FLAGS " + flag_list(m.flags)
    if with_envelope and m.envelope is not None:
        items += b" ENVELOPE " + m.envelope
    # BODY[] is a plain literal, which cannot hold NUL: such a body is left out.
    if with_body and m.body is not None and (m.body_item == "BINARY[]" or b"\0" not in m.body):
        items += b" " + m.body_item.encode("ascii") + b" " + message_literal(m.body)
    return _uidfetch(m.uid, items)


def _message_forms(m: MessageInfo) -> tuple[bytes, bytes, bytes]:
    """The message's response at each level: full (FLAGS, ENVELOPE, message), envelope, flags."""
    return _message_items(m, True, True), _message_items(m, True, False), _message_items(m, False, False)


def new_mail_payloads(
    mailbox: str,
    messages: Sequence[MessageInfo],
    limit: int = MAX_PLAINTEXT,
    max_pushes: int = MAX_NEW_MAIL_PUSHES,
) -> list[PayloadResult]:
    """A batch of new messages as few pushes as fit ``limit``, richest form first, at most ``max_pushes``.

    The whole batch is tried at each level in turn -- ``full`` (FLAGS,
    ENVELOPE and the message where known), ``envelope`` (FLAGS and
    ENVELOPE), ``flags`` (the compact form: UID and FLAGS) -- and packed in
    UID order into as few pushes as fit, each starting with ``* SELECT``; the
    first level that needs at most ``max_pushes`` pushes is sent.  At a level,
    a message whose response alone does not fit a push takes its next smaller
    form (one big message does not cost the others their envelopes).  When
    even the compact form needs more than ``max_pushes`` pushes (or there are
    no messages): one SYNC push.  A push's level is its smallest form.
    """
    if not messages:
        return [_sync_or_raise(mailbox, limit)]
    head = select_line(mailbox)
    room = limit - len(head)
    per_message = [_message_forms(m) for m in messages]
    levels: tuple[PayloadLevel, ...] = ("full", "envelope", "flags")
    for floor in range(len(levels)):
        chosen: list[tuple[PayloadLevel, bytes]] = []
        for forms in per_message:
            # The richest form at or below this level that fits a push on its own.
            level = next((i for i in range(floor, len(levels)) if len(forms[i]) <= room), None)
            if level is None:
                break
            chosen.append((levels[level], forms[level]))
        else:
            pushes = _pack(chosen, room)
            if len(pushes) <= max_pushes:
                return [PayloadResult(head + b"".join(r for _, r in p), _smallest(p, levels)) for p in pushes]
    return [_sync_or_raise(mailbox, limit)]


def _pack(responses: Sequence[tuple[PayloadLevel, bytes]], room: int) -> list[list[tuple[PayloadLevel, bytes]]]:
    """In order, each push filled while the next response fits (every response fits alone)."""
    pushes: list[list[tuple[PayloadLevel, bytes]]] = []
    size = 0
    for item in responses:
        if not pushes or size + len(item[1]) > room:
            pushes.append([])
            size = 0
        pushes[-1].append(item)
        size += len(item[1])
    return pushes


def _smallest(push: Sequence[tuple[PayloadLevel, bytes]], levels: Sequence[PayloadLevel]) -> PayloadLevel:
    return max((level for level, _ in push), key=levels.index)


def new_mail_payload(mailbox: str, messages: Sequence[MessageInfo], limit: int = MAX_PLAINTEXT) -> PayloadResult:
    """New messages in one push: :func:`new_mail_payloads` bounded to a single push."""
    return new_mail_payloads(mailbox, messages, limit, max_pushes=1)[0]


def uid_ranges(uids: Iterable[int]) -> list[bytes]:
    """Sorted, de-duplicated, ranges compressed: ``[1, 2, 3, 7]`` -> ``[b"1:3", b"7"]``."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("an empty UID set")
    if ordered[0] <= 0 or ordered[-1] >= 2**32:
        raise ValueError("UIDs are 1 .. 2^32-1")
    parts: list[bytes] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        start = prev = uid
    parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return parts


def uid_set(uids: Iterable[int]) -> bytes:
    """Sorted, de-duplicated, ranges compressed: ``[1, 2, 3, 7]`` -> ``1:3,7``."""
    return b",".join(uid_ranges(uids))


def vanished_payload(mailbox: str, uids: Iterable[int], limit: int = MAX_PLAINTEXT) -> PayloadResult:
    """Expunged messages: ``* VANISHED <uid-set>``, or SYNC if the set is too long."""
    data = _fits([select_line(mailbox), b"* VANISHED " + uid_set(uids) + b"\r\n"], limit)
    if data is not None:
        return PayloadResult(data, "full")
    return _sync_or_raise(mailbox, limit)


def flags_payload(
    mailbox: str, changes: Sequence[tuple[int, Sequence[str]]], limit: int = MAX_PLAINTEXT
) -> PayloadResult:
    """Flag changes: ``* <uid> UIDFETCH (FLAGS (...))`` per message, or SYNC if too long."""
    lines = [_uidfetch(uid, b"FLAGS " + flag_list(flags)) for uid, flags in changes]
    data = _fits([select_line(mailbox), *lines], limit) if lines else None
    if data is not None:
        return PayloadResult(data, "full")
    return _sync_or_raise(mailbox, limit)


def change_payloads(
    mailbox: str,
    vanished: Iterable[int],
    flags: Sequence[tuple[int, Sequence[str]]],
    limit: int = MAX_PLAINTEXT,
    max_pushes: int = MAX_CHANGE_PUSHES,
) -> list[PayloadResult]:
    """A burst of changes in one mailbox as few pushes as possible, each within ``limit``.

    ``* VANISHED`` lines first (UID ranges, split over several lines only
    when one does not fit), then one ``* <uid> UIDFETCH (FLAGS (...))`` per
    changed message; every push starts with ``* SELECT``.  More than
    ``max_pushes`` pushes: one SYNC push instead.  No changes: no push.
    """
    head = select_line(mailbox)
    room = limit - len(head)
    responses: list[bytes] = []
    uids = list(vanished)
    prefix, suffix = b"* VANISHED ", b"\r\n"
    line: list[bytes] = []
    length = 0
    for item in uid_ranges(uids) if uids else []:
        if line and len(prefix) + length + len(item) + len(suffix) > room:
            responses.append(prefix + b",".join(line) + suffix)
            line, length = [], 0
        length += len(item) + (1 if line else 0)
        line.append(item)
    if line:
        responses.append(prefix + b",".join(line) + suffix)
    responses.extend(_uidfetch(uid, b"FLAGS " + flag_list(f)) for uid, f in flags)
    if not responses:
        return []
    if any(len(r) > room for r in responses):
        return [_sync_or_raise(mailbox, limit)]
    pushes: list[list[bytes]] = []
    size = 0
    for response in responses:
        if not pushes or size + len(response) > room:
            pushes.append([])
            size = 0
        pushes[-1].append(response)
        size += len(response)
    if len(pushes) > max_pushes:
        return [_sync_or_raise(mailbox, limit)]
    return [PayloadResult(head + b"".join(p), "full") for p in pushes]
