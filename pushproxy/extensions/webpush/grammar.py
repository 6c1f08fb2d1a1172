"""The argument grammar of the WEBPUSH commands, and the form of their untagged responses (sans-IO).

Kept in one module so that it can follow the final text of
draft-gougeon-imap-webpush (https://datatracker.ietf.org/doc/draft-gougeon-imap-webpush/),
which this module is the project's reading of.  Everything here raises
:class:`WebPushSyntaxError`, whose message is fit for the client's ``BAD``.

What is *syntax* (BAD) and what is a *refusal* (NO):
malformed ids, keys, tokens and durations are BAD; an endpoint that is a
well-formed string but not an acceptable push URL (not https, private
address, malformed URL) is NO, decided by the SSRF guard, not here.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from pushproxy.extensions.webpush.adapter import InvalidSubscriptionKeys, check_subscription_keys
from pushproxy.extensions.webpush.vapid import b64url
from pushproxy.imap.parse import NIL, Atom, ParseError, Token, as_text
from pushproxy.imap.response import quote

# Pinned interpretation (lenient where the draft is silent): an id is any
# astring of 1-256 bytes of UTF-8 (the presentation's UUIDs are an example,
# not a rule), without control characters (they would let a client forge
# log lines).  Ids go back as atoms when they can, else as quoted strings.
MAX_SUB_ID_BYTES = 256
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_ATOM_RE = re.compile(r"^[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+$")  # ATOM-CHAR (RFC 9051), no "]"
# Tokens the proxy issues are 32 characters of base64url (192 bits); accept
# the alphabet of the verification push (pushproxy.extensions.webpush.payload.ack_payload).
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
# Keys (pinned): base64url or standard base64, padded or not; decoded strictly after that.
_B64_ANY_RE = re.compile(r"^[A-Za-z0-9_\-+/]+={0,2}$")
_NUMBER_RE = re.compile(r"^[0-9]{1,10}$")

MAX_NUMBER = 4294967295  # RFC 9051 number: 32-bit unsigned
MAX_ENDPOINT_LENGTH = 2048


class WebPushSyntaxError(ParseError):
    """Malformed arguments; the message is fit for a BAD."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``WEBPUSH <id> <endpoint> <p256dh> <auth>`` with keys normalised to unpadded base64url."""

    sub_id: str
    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``WEBPUSH <id> NIL``."""

    sub_id: str


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """``ACKWEBPUSH <token>`` or ``ACKWEBPUSH <id> <token>``."""

    token: str
    sub_id: str | None = None


@dataclass(frozen=True, slots=True)
class Silence:
    """``SILWEBPUSH <id> [<seconds>]``: seconds None = until this connection ends; 0 lifts."""

    sub_id: str
    seconds: int | None


def _astring(token: Token, what: str) -> str:
    if isinstance(token, list):
        raise WebPushSyntaxError(f"{what}: expected a string, not a list")
    if token is NIL:
        raise WebPushSyntaxError(f"{what}: NIL is not allowed here")
    try:
        return as_text(token, what)
    except ParseError as exc:
        raise WebPushSyntaxError(str(exc)) from None


def parse_sub_id(token: Token) -> str:
    """Any astring of 1-256 bytes of UTF-8 without control characters (the NIL atom is not one)."""
    text = _astring(token, "subscription id")
    if not text or len(text.encode("utf-8")) > MAX_SUB_ID_BYTES:
        raise WebPushSyntaxError(f"subscription id must be 1-{MAX_SUB_ID_BYTES} bytes")
    if _CONTROL_RE.search(text):
        raise WebPushSyntaxError("subscription id must not contain control characters")
    return text


def sub_id_string(sub_id: str) -> bytes:
    """An id as the responses send it: an atom when it can be one (and is not NIL), else a string."""
    if _ATOM_RE.match(sub_id) and sub_id.upper() != "NIL":
        return sub_id.encode("ascii")
    return quote(sub_id)


def parse_endpoint_string(token: Token) -> str:
    """The endpoint as text; whether it is an acceptable URL is the SSRF guard's decision (NO)."""
    text = _astring(token, "endpoint")
    if not text:
        raise WebPushSyntaxError("endpoint: empty string")
    return text


def _key_bytes(token: Token, what: str) -> bytes:
    """base64url or standard base64, with or without padding; then a strict decode."""
    text = _astring(token, what)
    if not _B64_ANY_RE.match(text):
        raise WebPushSyntaxError(f"{what} must be base64url or base64")
    body = text.rstrip("=")
    if (text != body and len(text) % 4) or len(body) % 4 == 1:
        raise WebPushSyntaxError(f"{what}: invalid base64 length or padding")
    try:
        return base64.b64decode(body.replace("-", "+").replace("_", "/") + "=" * (-len(body) % 4), validate=True)
    except (ValueError, binascii.Error):
        raise WebPushSyntaxError(f"{what} must be base64url or base64") from None


def parse_keys(p256dh_token: Token, auth_token: Token) -> tuple[str, str]:
    """(p256dh, auth) as unpadded base64url, after checking they can encrypt (RFC 8291)."""
    p256dh_raw = _key_bytes(p256dh_token, "p256dh")
    if len(p256dh_raw) != 65 or p256dh_raw[0] != 4:
        raise WebPushSyntaxError("p256dh must be a 65-byte uncompressed P-256 public key")
    auth_raw = _key_bytes(auth_token, "auth")
    if len(auth_raw) != 16:
        raise WebPushSyntaxError("auth must be a 16-byte secret")
    p256dh, auth = b64url(p256dh_raw), b64url(auth_raw)
    try:
        check_subscription_keys(p256dh, auth)  # the point must be on the curve
    except InvalidSubscriptionKeys:
        raise WebPushSyntaxError("p256dh is not a valid P-256 public key") from None
    return p256dh, auth


def parse_webpush(args: list[Token]) -> Subscribe | Unsubscribe:
    if not args:
        raise WebPushSyntaxError("WEBPUSH needs a subscription id")
    sub_id = parse_sub_id(args[0])
    if len(args) == 2 and args[1] is NIL:
        return Unsubscribe(sub_id)
    if len(args) == 1:
        raise WebPushSyntaxError("WEBPUSH needs an endpoint, a p256dh key and an auth secret (or NIL to delete)")
    if len(args) == 2:
        raise WebPushSyntaxError("WEBPUSH needs a p256dh key and an auth secret after the endpoint")
    if len(args) == 3:
        # Pinned interpretation: the 4-argument form of draft -02 (the slide
        # shows only p256dh); RFC 8291 cannot encrypt without the auth secret.
        raise WebPushSyntaxError("WEBPUSH needs the auth secret as 4th argument (RFC 8291 cannot encrypt without it)")
    if len(args) > 4:
        raise WebPushSyntaxError("WEBPUSH takes 4 arguments: id, endpoint, p256dh, auth")
    endpoint = parse_endpoint_string(args[1])
    p256dh, auth = parse_keys(args[2], args[3])
    return Subscribe(sub_id, endpoint, p256dh, auth)


def parse_token(token: Token) -> str:
    text = _astring(token, "token")
    if not _TOKEN_RE.match(text):
        raise WebPushSyntaxError("token must be 1-256 characters of A-Z a-z 0-9 _ -")
    return text


def parse_ackwebpush(args: list[Token]) -> Acknowledge:
    if len(args) == 1:
        return Acknowledge(parse_token(args[0]))
    if len(args) == 2:
        return Acknowledge(parse_token(args[1]), parse_sub_id(args[0]))
    raise WebPushSyntaxError("ACKWEBPUSH takes a token, or a subscription id and a token")


def parse_lwebpush(args: list[Token]) -> str | None:
    """The id to list, or None for every subscription (no argument, or ``*``)."""
    if not args:
        return None
    if len(args) > 1:
        raise WebPushSyntaxError("LWEBPUSH takes at most one argument: * or a subscription id")
    # Pinned interpretation: "*" quoted is the wildcard too (as in LIST's list-mailbox).
    if args[0] == Atom("*") or args[0] == b"*":
        return None
    return parse_sub_id(args[0])


def parse_seconds(token: Token) -> int:
    if not isinstance(token, Atom) or not _NUMBER_RE.match(token) or int(token) > MAX_NUMBER:
        raise WebPushSyntaxError(f"seconds must be a number from 0 to {MAX_NUMBER}")
    return int(token)


def parse_silwebpush(args: list[Token]) -> Silence:
    if len(args) == 1:
        return Silence(parse_sub_id(args[0]), None)
    if len(args) == 2:
        return Silence(parse_sub_id(args[0]), parse_seconds(args[1]))
    raise WebPushSyntaxError("SILWEBPUSH takes a subscription id and optionally a number of seconds")


def parse_no_arguments(name: str, args: list[Token]) -> None:
    if args:
        raise WebPushSyntaxError(f"{name} takes no arguments")


# --- responses --------------------------------------------------------------------


def vapid_response(public_key_b64: str) -> bytes:
    """``VAPID <key>`` (without ``* ``): the key is base64url, an atom."""
    return b"VAPID " + public_key_b64.encode("ascii")


def webpush_response(sub_id: str, endpoint: str, state: int | None) -> bytes:
    """``WEBPUSH <id> "<endpoint>" <state>`` (without ``* ``).

    Pinned interpretation of the state field: NIL while inactive, else the
    seconds of silence remaining (0 = active and not silenced).
    """
    state_text = b"NIL" if state is None else b"%d" % min(max(state, 0), MAX_NUMBER)
    return b"WEBPUSH " + sub_id_string(sub_id) + b" " + quote(endpoint) + b" " + state_text
