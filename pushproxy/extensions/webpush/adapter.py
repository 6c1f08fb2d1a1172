"""The one place where pushproxy works around what pywebpush lacks.

pywebpush (``WebPusher.send_async``) encrypts (RFC 8291 aes128gcm through
http_ece) and POSTs through the aiohttp session it is given; VAPID headers
come from py_vapid (:mod:`pushproxy.extensions.webpush.vapid`).  What upstream lacks, and
what this module adds without touching the encryption or the signing:

- ``send_async`` calls ``session.post(endpoint, timeout=..., data=...,
  headers=...)`` with no way to pass ``allow_redirects``: aiohttp would follow
  a push service's redirect (an SSRF hop past the endpoint check).
- Its key check (``len(raw) != 65 and raw[0] != "\\x04"``) lets almost
  anything through and never looks at the auth secret's length:
  :func:`check_subscription_keys` is the strict one (a P-256 point, 16 bytes).
- It then reads the whole answer with ``await resp.text()``: unbounded (a
  hostile push service could send gigabytes) and never released explicitly.

So pywebpush gets :class:`NoRedirectSession` as its ``aiohttp_session``: a
tiny stand-in with the one method it calls, which posts through the
project's real session (SSRF-pinned resolver, pool, timeouts) with redirects
off, reads at most :data:`MAX_ANSWER_BYTES` of the answer, releases the
connection and hands back an :class:`Answer` that has what pywebpush and the
sender look at.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDictProxy
from pywebpush import WebPusher, WebPushException

MAX_ANSWER_BYTES = 8192  # a push service's answer body is only ever logged, never parsed


class InvalidSubscriptionKeys(ValueError):
    """p256dh is not an uncompressed P-256 point, or auth is not 16 bytes."""


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=4096)  # every push checks its subscription's keys again
def check_subscription_keys(p256dh: str, auth: str) -> None:
    """Strict RFC 8291 checks of unpadded base64url keys; raises :class:`InvalidSubscriptionKeys`."""
    try:
        raw = _b64url_decode(p256dh)
        secret = _b64url_decode(auth)
    except (ValueError, binascii.Error) as exc:
        raise InvalidSubscriptionKeys("keys must be base64url") from exc
    if len(raw) != 65 or raw[0] != 4:
        raise InvalidSubscriptionKeys("p256dh must be a 65-byte uncompressed P-256 public key")
    if len(secret) != 16:
        raise InvalidSubscriptionKeys("auth must be a 16-byte secret")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError as exc:
        raise InvalidSubscriptionKeys("p256dh is not a point on P-256") from exc


@dataclass(frozen=True, slots=True)
class Answer:
    """A push service's answer, already read (bounded) and released."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes

    async def text(self) -> str:  # what pywebpush's send_async awaits
        return self.body.decode("utf-8", "replace")


class NoRedirectSession:
    """Passed to ``WebPusher(aiohttp_session=...)``: the one method pywebpush calls."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def post(
        self, url: str | yarl.URL, *, timeout: Any, data: bytes | None, headers: Mapping[str, str]
    ) -> Answer:
        async with self._session.post(
            url, data=data, headers=dict(headers), allow_redirects=False, timeout=timeout
        ) as resp:
            body = await resp.content.read(MAX_ANSWER_BYTES)
            return Answer(resp.status, resp.reason or "", resp.headers, body)


async def post_encrypted(
    session: NoRedirectSession,
    url: yarl.URL,
    p256dh: str,
    auth: str,
    plaintext: bytes,
    *,
    headers: dict[str, str],
    ttl: int,
    timeout: aiohttp.ClientTimeout,
) -> Answer:
    """Encrypt ``plaintext`` for the subscription and POST it: all done by pywebpush.

    ``url`` is the SSRF guard's parsed URL (the same object aiohttp connects
    to); ``headers`` is copied, so the caller's dict is never mutated.
    Raises :class:`InvalidSubscriptionKeys` for unusable keys (pywebpush's own
    key errors included, so that no other module needs pywebpush), and
    aiohttp/timeout errors for transport trouble.
    """
    check_subscription_keys(p256dh, auth)
    info = {"endpoint": url, "keys": {"p256dh": p256dh, "auth": auth}}
    try:
        pusher = WebPusher(info, aiohttp_session=session)  # type: ignore[arg-type]  # duck-typed session
        answer = await pusher.send_async(
            data=plaintext, headers=dict(headers), ttl=ttl, content_encoding="aes128gcm", timeout=timeout
        )
    except WebPushException as exc:  # raised only by its key checks and encryption, never for HTTP
        raise InvalidSubscriptionKeys("pywebpush refused the keys") from exc
    if not isinstance(answer, Answer):  # only with curl=True, which is never passed
        raise TypeError("pywebpush did not post")
    return answer
