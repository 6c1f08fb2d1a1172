"""Events from Dovecot's push_notification ``ox`` driver: ``PUT /events/dovecot-ox``.

An alternative (or complement) to the watchers for Dovecot back ends: Dovecot
itself sends a JSON document per delivered message (MessageNew, i.e. LMTP/LDA
deliveries, not IMAP APPENDs), with PUT (Dovecot 2.3's driver; POST is accepted too)::

    {"user": "alice", "event": "MessageNew", "folder": "INBOX",
     "imap-uidvalidity": 1795330498, "imap-uid": 7,
     "from": "=?utf-8?q?=C3=84?= <a@example.org>", "subject": "Hi",
     "snippet": "...", "unseen": 1}

Dovecot side (2.3; tested by tests/integration/test_dovecot_push_notification.py)::

    mail_attribute_dict = file:%h/dovecot-attributes
    protocol imap {
      imap_metadata = yes
    }
    protocol lmtp {
      mail_plugins = $mail_plugins notify push_notification
    }
    plugin {
      push_notification_driver = ox:url=http://pushproxy:<secret>@127.0.0.1:9143/events/dovecot-ox
    }

and, per user, the METADATA entry the ox driver requires (``doveadm mailbox
metadata set -u alice -s "" /private/vendor/vendor.dovecot/http-notify
user=alice``).  The shared secret (``admin.ox_secret_file``) is the HTTP Basic
password (any user name), or sent as ``Authorization: Bearer <secret>``.

Each document becomes a :class:`~pushproxy.events.NewMail` with one message
(``source="dovecot-ox"``); its ENVELOPE is built from the From and Subject
values (header values, still MIME-encoded as IMAP would send them), and enters
the push pipeline where the watchers' events do
(:meth:`~pushproxy.push.pipeline.PushPipeline.submit`): its dedupe stage
drops the one of the two that comes second (a document without
``imap-uidvalidity`` is keyed on the one the watchers saw for the mailbox).
``unseen`` is the mailbox's count of unseen messages: 0 means this message,
too, is already seen (e.g. filed as read by Sieve).

Answers: 204 accepted (or an event type that is ignored), 401 wrong or
missing secret, 400 malformed JSON or fields, 413 body over 64 KiB.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from pushproxy.accounts import canonical_mailbox, normalise_account
from pushproxy.admin import AdminServer
from pushproxy.events import MessageInfo, NewMail
from pushproxy.imap.envelope import envelope_from_fields
from pushproxy.push.pipeline import PushPipeline

__all__ = ["MAX_BODY", "OX_PATH", "OxEndpoint", "OxEventError", "install_ox_endpoint", "parse_ox_event"]

log = logging.getLogger(__name__)

OX_PATH = "/events/dovecot-ox"
MAX_BODY = 64 * 1024
_MAX_UID = 2**32 - 1
_MAX_FIELD = 16 * 1024  # characters of from / subject kept


class OxEventError(ValueError):
    """The document is not a valid ox driver event (the message is safe to show the sender)."""


T = TypeVar("T")
Convert = Callable[[str, object], T]  # (field name, JSON value) -> the value, or OxEventError


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isdigit():  # tolerate numbers sent as strings
            return int(value)
        raise OxEventError(f"field {name!r} must be an integer")
    return value


def _str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise OxEventError(f"field {name!r} must be a string")
    return value[:_MAX_FIELD]


def _nonempty_str(name: str, value: object) -> str:
    if isinstance(value, str) and not value.strip():
        raise OxEventError(f"field {name!r} is empty")
    return _str(name, value)


def _required(doc: dict[str, Any], name: str, convert: Convert[T]) -> T:
    value = doc.get(name)
    if value is None:  # absent or null
        raise OxEventError(f"missing field {name!r}")
    return convert(name, value)


def _optional(doc: dict[str, Any], name: str, convert: Convert[T]) -> T | None:
    value = doc.get(name)
    return None if value is None else convert(name, value)


def parse_ox_event(doc: object) -> NewMail | None:
    """An ox driver document as an event; None for event types that are not pushed."""
    if not isinstance(doc, dict):
        raise OxEventError("expected a JSON object")
    user = _required(doc, "user", _nonempty_str)
    event = _required(doc, "event", _nonempty_str)
    if event.lower() != "messagenew":
        return None
    folder = _required(doc, "folder", _nonempty_str)
    uid = _required(doc, "imap-uid", _int)
    if not 0 < uid <= _MAX_UID:
        raise OxEventError("field 'imap-uid' is out of range")
    uidvalidity = _optional(doc, "imap-uidvalidity", _int)
    unseen = _optional(doc, "unseen", _int)
    subject = _optional(doc, "subject", _str)
    sender = _optional(doc, "from", _str)
    flags: tuple[str, ...] = ("\\Seen",) if unseen == 0 else ()
    envelope = envelope_from_fields(None, subject, sender, None)
    return NewMail(
        account=normalise_account(user),
        mailbox=canonical_mailbox(folder),
        messages=(MessageInfo(uid=uid, flags=flags, envelope=envelope),),
        source="dovecot-ox",
        uidvalidity=uidvalidity if uidvalidity is not None and 0 < uidvalidity <= _MAX_UID else 0,
    )


class OxEndpoint:
    """The aiohttp handler; each accepted event goes into the push pipeline."""

    def __init__(self, secret: str, pipeline: PushPipeline) -> None:
        if not secret:
            raise ValueError("the ox endpoint needs a non-empty shared secret")
        self._secret = secret.encode("utf-8")
        self._pipeline = pipeline

    def authorised(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        offered: bytes | None = None
        if scheme.lower() == "bearer":
            offered = value.encode("utf-8", "replace")
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            _, sep, password = decoded.partition(b":")
            offered = password if sep else None
        if offered is None:
            return False
        return hmac.compare_digest(offered, self._secret)

    async def handle(self, request: web.Request) -> web.Response:
        if not self.authorised(request.headers.get("Authorization")):
            return web.Response(
                status=401,
                text="wrong or missing secret\n",
                headers={"WWW-Authenticate": 'Basic realm="pushproxy", charset="UTF-8"'},
            )
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413, text="body too large\n")
        body = await _read_limited(request, MAX_BODY)
        if body is None:
            return web.Response(status=413, text="body too large\n")
        try:
            doc = json.loads(body)
            event = parse_ox_event(doc)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and OxEventError are ValueErrors
            message = str(exc) if isinstance(exc, OxEventError) else "malformed JSON"
            return web.Response(status=400, text=message + "\n")
        if event is None:
            return web.Response(status=204)
        log.debug("ox event: %s %s uid %s", event.account, event.mailbox, event.uids)
        self._pipeline.submit(event)
        return web.Response(status=204)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it grows past ``limit`` (chunked bodies have no Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(16384)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def install_ox_endpoint(
    admin: AdminServer,
    secret: str,
    pipeline: PushPipeline,
    *,
    path: str = OX_PATH,
) -> OxEndpoint:
    """Add ``PUT`` and ``POST /events/dovecot-ox`` to the admin listener (before it starts).

    Dovecot's ox driver sends PUT (seen with Dovecot 2.3.19); POST stays for other senders.
    """
    endpoint = OxEndpoint(secret, pipeline)
    admin.add_route("PUT", path, endpoint.handle)
    admin.add_route("POST", path, endpoint.handle)
    log.info("Dovecot ox push_notification endpoint enabled at %s", path)
    return endpoint
