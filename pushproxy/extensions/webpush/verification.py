"""The verification push of a new or changed Web Push subscription (``* ACKWEBPUSH <token>``).

The token is random (:func:`new_token`); only its sha256 is stored
(:func:`token_hash`).  :class:`VerificationPush` decides whether one may be
sent now -- the rate limit per endpoint and per account (:mod:`.ratelimit`,
counted on the normalised endpoint URL) -- and sends it off the command's way
(the command spawns :meth:`VerificationPush.send` after the store write): a
push not delivered is remembered, so that an identical WEBPUSH may send a new
one; a push service saying the endpoint is gone deletes the subscription
version it was about (not a newer one) and tells the watchers.  Tokens,
endpoints and auth secrets are never logged (an endpoint tag stands in).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable

import yarl

from pushproxy.extensions.webpush import metrics
from pushproxy.extensions.webpush.maintenance import UndeliveredVerifications
from pushproxy.extensions.webpush.process import WebPushProcess
from pushproxy.extensions.webpush.ratelimit import VerificationLimiter
from pushproxy.extensions.webpush.sender import WebPushSender, endpoint_tag
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription

__all__ = ["TOKEN_BYTES", "VerificationPush", "new_token", "token_hash"]

log = logging.getLogger("pushproxy.webpush")

TOKEN_BYTES = 24  # 192 bits of randomness; 32 base64url characters


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def endpoint_key(endpoint: str) -> str:
    """The endpoint as the rate limit counts it: the normalised URL (host case, default port)."""
    try:
        return str(yarl.URL(endpoint))
    except (ValueError, TypeError):
        return endpoint


class VerificationPush:
    """Whether a verification push may go now, and sending it (and what its outcome means)."""

    def __init__(
        self,
        sender: WebPushSender,
        subscriptions: WebPushQueries,
        process: WebPushProcess,
        limiter: VerificationLimiter,
        undelivered: UndeliveredVerifications,
        gone: Callable[[str], Awaitable[None]],
    ) -> None:
        self._sender = sender
        self._subscriptions = subscriptions
        self._process = process
        self._limiter = limiter
        self._undelivered = undelivered
        self._gone = gone  # a subscription was deleted because its endpoint is gone: tell the watchers

    async def refusal(self, account: str, endpoint: str) -> str | None:
        """None when a verification push to ``endpoint`` may be sent now (it is counted), else the NO's text."""
        refusal = await self._limiter.take(account, endpoint_key(endpoint))
        if refusal is not None:
            log.info("webpush %s: verification push refused by the rate limit", account)
            metrics.WEBPUSH_VERIFICATIONS.labels(result="rate_limited").inc()
        return refusal

    async def send(self, sub: WebPushSubscription, token: str) -> None:
        """The ``* ACKWEBPUSH <token>`` push; the only push an inactive subscription ever gets."""
        result = await self._sender.send_ack(sub, token)
        who = f"{sub.account}/{sub.sub_id} {endpoint_tag(sub.endpoint)}"
        if result.ok:
            metrics.WEBPUSH_VERIFICATIONS.labels(result="sent").inc()
            return
        if sub.ack_token_hash is not None:
            self._undelivered[(sub.account, sub.sub_id)] = sub.ack_token_hash
        log.info("webpush %s: verification push not delivered (%s: %s)", who, result.outcome, result.detail)
        if result.outcome != "delete":
            return  # the client can send WEBPUSH again; unacknowledged, it expires
        async with self._process.account_lock(sub.account):
            current = await self._subscriptions.get_subscription(sub.account, sub.sub_id)
            if current is None or current.ack_token_hash != sub.ack_token_hash:
                return  # replaced meanwhile: the push service's answer is about an older version
            await self._subscriptions.delete_subscription(sub.account, sub.sub_id)
        log.info("webpush %s: the push service does not know the endpoint; deleted", who)
        await self._gone(sub.account)
