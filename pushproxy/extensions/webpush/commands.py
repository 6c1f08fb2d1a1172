"""The WEBPUSH commands, answered by the proxy: GETVAPID, WEBPUSH, ACKWEBPUSH, LWEBPUSH, SILWEBPUSH.

Wire form: draft-gougeon-imap-webpush (the grammar is :mod:`.grammar`).
Every change is durable in the store before the tagged OK.  The verification
push (``* ACKWEBPUSH <token>``) of a new or changed subscription is sent by a
background task started after that write, so a slow push service never holds
the client's OK.  Only sha256 of a token is stored; tokens, endpoints and
auth secrets are never logged (an endpoint tag stands in).

Verification pushes are bounded per endpoint and per account
(:mod:`.ratelimit`), and an identical WEBPUSH for a subscription still waiting
for its ACK does not send another one (unless the first was not delivered):
:mod:`.verification`.  Background work (the verification pushes, the watcher
updates that outlive a command's bounded wait) is kept in one
:class:`~pushproxy.background.TaskSet` and cancelled at close.

The maintenance loop that deletes unacknowledged subscriptions once
``webpush.ack_expiry`` has passed is :mod:`.maintenance`; commands also
delete the account's expired ones before counting against the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pushproxy.background import TaskSet
from pushproxy.config import Config
from pushproxy.extensions.base import RegistrationChanged, Reply, SessionContext, login_and_parse
from pushproxy.extensions.baseline import record_baseline
from pushproxy.extensions.webpush import metrics
from pushproxy.extensions.webpush.grammar import (
    Acknowledge,
    Silence,
    Subscribe,
    Unsubscribe,
    WebPushSyntaxError,
    parse_ackwebpush,
    parse_lwebpush,
    parse_no_arguments,
    parse_silwebpush,
    parse_webpush,
    vapid_response,
    webpush_response,
)
from pushproxy.extensions.webpush.mailboxes import WatchedMailboxes
from pushproxy.extensions.webpush.maintenance import SubscriptionMaintenance, UndeliveredVerifications, is_expired
from pushproxy.extensions.webpush.process import WebPushProcess
from pushproxy.extensions.webpush.ratelimit import VerificationLimiter, VerificationQueries
from pushproxy.extensions.webpush.sender import WebPushSender, endpoint_tag
from pushproxy.extensions.webpush.settings import webpush_settings
from pushproxy.extensions.webpush.ssrf import EndpointRefused
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription
from pushproxy.extensions.webpush.vapid import VapidKeyring
from pushproxy.extensions.webpush.verification import VerificationPush, new_token, token_hash
from pushproxy.imap.parse import Command
from pushproxy.store.base import Store, StoreUnavailable

log = logging.getLogger("pushproxy.webpush")

T = TypeVar("T")

_REGISTRATION_WAIT = 10.0  # the OK waits this long at most for the watcher update (it goes on after)
_ENDPOINT_CHECK_SLACK = 5.0  # on top of webpush.timeout (the resolver's own limit)
_MAX_SWEEP_INTERVAL = 60.0
_MIN_SWEEP_INTERVAL = 0.5


_Method = Callable[["WebPushCommands", Command, SessionContext], Awaitable[Reply]]


def _after_login(
    name: str, parse: Callable[[list[Any]], T]
) -> Callable[[Callable[[WebPushCommands, str, T, SessionContext], Awaitable[Reply]]], _Method]:
    """A WEBPUSH command handler that runs with the account and the parsed arguments (else BAD)."""

    def wrap(method: Callable[[WebPushCommands, str, T, SessionContext], Awaitable[Reply]]) -> _Method:
        @functools.wraps(method)
        async def handler(self: WebPushCommands, cmd: Command, ctx: SessionContext) -> Reply:
            self.start()
            parsed = login_and_parse(ctx, name, parse, cmd.args, WebPushSyntaxError)
            if isinstance(parsed, Reply):
                return parsed
            return await method(self, parsed[0], parsed[1], ctx)

        return handler

    return wrap


class WebPushCommands(SubscriptionMaintenance):
    """The five command handlers, plus the subscription maintenance of this proxy process."""

    def __init__(
        self,
        config: Config,
        store: Store,
        keyring: VapidKeyring,
        sender: WebPushSender,
        registration_changed: RegistrationChanged,
        process: WebPushProcess,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval: float | None = None,
        watched: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        self.config = config
        # The account's WebPush mailboxes (webpush.mailboxes), for the baseline at WEBPUSH time.
        self.watched = watched or (lambda account: WatchedMailboxes(webpush_settings(config).mailboxes, 1).of(account))
        self.store = store
        self.subscriptions = store.queries(WebPushQueries)
        self.keyring = keyring
        self.sender = sender
        self.registration_changed = registration_changed
        self.process = process
        self.clock = clock
        settings = webpush_settings(config)
        expiry = settings.ack_expiry
        self._sweep_interval = sweep_interval or min(_MAX_SWEEP_INTERVAL, max(_MIN_SWEEP_INTERVAL, expiry / 4))
        self.limiter = VerificationLimiter(
            store.queries(VerificationQueries),
            settings.verification_per_endpoint_per_hour,
            settings.verification_per_account_per_hour,
        )
        self._sweep_batch = config.store.housekeeping_batch
        # Verification pushes not delivered: an identical WEBPUSH may then send a new one.
        self._undelivered = UndeliveredVerifications(expiry, lambda: self.clock())
        self.verification = VerificationPush(
            sender, self.subscriptions, process, self.limiter, self._undelivered, self._endpoint_gone
        )
        self._silencing_sessions: set[str] = set()  # sessions that hold a silence "until this connection ends"
        self._background = TaskSet(log, "webpush background task failed")
        self._maintenance: asyncio.Task[None] | None = None
        self._closed = False
        with contextlib.suppress(RuntimeError):  # no running loop: started by the first command
            asyncio.get_running_loop()
            self.start()

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the maintenance loop (idempotent; needs a running loop)."""
        if self._maintenance is None and not self._closed:
            self._maintenance = asyncio.ensure_future(self._maintain())

    async def close(self) -> None:
        self._closed = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        await self._background.close()
        self._maintenance = None

    # --- GETVAPID -----------------------------------------------------------------------
    async def getvapid(self, cmd: Command, ctx: SessionContext) -> Reply:
        self.start()
        try:
            parse_no_arguments("GETVAPID", cmd.args)
        except WebPushSyntaxError as exc:
            return Reply("BAD", str(exc))
        ctx.reply_untagged(vapid_response(self.keyring.current.public_key_b64))
        return Reply("OK", "GETVAPID completed")

    # --- WEBPUSH ------------------------------------------------------------------------
    @_after_login("WEBPUSH", parse_webpush)
    async def webpush(self, account: str, request: Subscribe | Unsubscribe, ctx: SessionContext) -> Reply:
        if isinstance(request, Unsubscribe):
            return await self._unsubscribe(account, request.sub_id, ctx)
        return await self._subscribe(account, request, ctx)

    async def _subscribe(self, account: str, request: Subscribe, ctx: SessionContext) -> Reply:
        cfg = webpush_settings(self.config)
        refusal = await self._check_endpoint(request.endpoint)
        if refusal is not None:
            log.info("webpush %s/%s: endpoint refused (%s)", account, request.sub_id, refusal)
            return Reply("NO", f"Endpoint refused: {refusal}")
        current_key = self.keyring.current
        async with self.process.account_lock(account):
            now = self.clock()
            existing = await self._expire_account(account, now)
            old = existing.get(request.sub_id)
            if old is None and len(existing) >= cfg.max_subscriptions_per_account:
                return Reply(
                    "NO",
                    f"Too many WEBPUSH subscriptions for this account (at most {cfg.max_subscriptions_per_account})",
                    "LIMIT",
                )
            unchanged = (
                old is not None
                and (old.endpoint, old.p256dh, old.auth) == (request.endpoint, request.p256dh, request.auth)
                and old.vapid_key_id == current_key.key_id
            )
            if (
                old is not None
                and unchanged
                and (old.active or self._undelivered.get((account, old.sub_id)) != old.ack_token_hash)
            ):
                # Pinned interpretation: a subscription sent again unchanged keeps its state
                # and gets no new verification push (active: it stays active; waiting for its
                # ACK: the push already sent still holds the valid token).  The answer still
                # shows the key and the state.
                ctx.reply_untagged(vapid_response(current_key.public_key_b64))
                ctx.reply_untagged(webpush_response(old.sub_id, old.endpoint, self.process.state_of(old, now)))
                return Reply("OK", "WEBPUSH completed")
            refusal = await self.verification.refusal(account, request.endpoint)
            if refusal is not None:
                return Reply("NO", refusal, "LIMIT")
            self._undelivered.pop((account, request.sub_id), None)
            # New, changed, still waiting for its ACK (a new token replaces the old one), or
            # acknowledged under an older VAPID key: a new version that must be acknowledged.
            token = new_token()
            version: dict[str, Any] = {
                "endpoint": request.endpoint,
                "p256dh": request.p256dh,
                "auth": request.auth,
                "vapid_key_id": current_key.key_id,  # the key that signs the verification push
                "active": False,
                "ack_token_hash": token_hash(token),
                "ack_expires": now + cfg.ack_expiry,
                "updated": now,
                "failures": 0,
            }
            # A changed one keeps its silences, its changes option, creation and last success.
            sub = (
                dataclasses.replace(old, **version)
                if old is not None
                else WebPushSubscription(account=account, sub_id=request.sub_id, created=now, **version)
            )
            await self.subscriptions.put_subscription(sub)  # durable before the OK and before the push
        # Mail from now on must reach the subscription once acknowledged (see extensions/baseline.py).
        await record_baseline(ctx, self.store, account, self.watched(account))
        log.info(
            "webpush %s/%s %s: %s, waiting for ACKWEBPUSH",
            account,
            sub.sub_id,
            endpoint_tag(sub.endpoint),
            "created" if old is None else "updated",
        )
        ctx.reply_untagged(vapid_response(current_key.public_key_b64))
        ctx.reply_untagged(webpush_response(sub.sub_id, sub.endpoint, None))
        self._background.spawn(self.verification.send(sub, token))
        await self._registration_changed(account, ctx.session_id)
        return Reply("OK", "WEBPUSH completed")

    async def _check_endpoint(self, endpoint: str) -> str | None:
        """None when the endpoint may be used, else a reason safe to show to the client."""
        if not endpoint.isascii() or not endpoint.isprintable():
            return "malformed endpoint URL"
        try:
            async with asyncio.timeout(webpush_settings(self.config).timeout + _ENDPOINT_CHECK_SLACK):
                await self.sender.check_endpoint(endpoint)
        except EndpointRefused as exc:
            return exc.reason
        except TimeoutError:
            return "endpoint host lookup timed out"
        return None

    async def _unsubscribe(self, account: str, sub_id: str, ctx: SessionContext) -> Reply:
        async with self.process.account_lock(account):
            deleted = await self.subscriptions.delete_subscription(account, sub_id)
            self._undelivered.pop((account, sub_id), None)
        if deleted:
            log.info("webpush %s/%s: deleted by the client", account, sub_id)
            await self._registration_changed(account, ctx.session_id)
        return Reply("OK", "WEBPUSH completed")

    # --- ACKWEBPUSH ---------------------------------------------------------------------
    @_after_login("ACKWEBPUSH", parse_ackwebpush)
    async def ackwebpush(self, account: str, request: Acknowledge, ctx: SessionContext) -> Reply:
        digest = token_hash(request.token)
        async with self.process.account_lock(account):
            now = self.clock()
            sub = await self.subscriptions.find_subscription_by_ack(account, digest)
            if sub is None or sub.active or (request.sub_id is not None and request.sub_id != sub.sub_id):
                return Reply("NO", "Unknown or already used ACKWEBPUSH token")
            if sub.ack_expires is not None and sub.ack_expires <= now:
                return Reply("NO", "ACKWEBPUSH token expired; send WEBPUSH again")
            # Pinned interpretation: the subscription is active under the key that signed
            # the verification push it just proved to have received (the current key,
            # unless a rotation happened in between; then the next WEBPUSH re-keys it).
            sub.active = True
            self._undelivered.pop((account, sub.sub_id), None)
            sub.ack_token_hash = None  # single use
            sub.ack_expires = None
            sub.failures = 0
            sub.updated = now
            await self.subscriptions.put_subscription(sub)
        metrics.WEBPUSH_VERIFICATIONS.labels(result="acknowledged").inc()
        log.info("webpush %s/%s %s: acknowledged, active", account, sub.sub_id, endpoint_tag(sub.endpoint))
        ctx.reply_untagged(webpush_response(sub.sub_id, sub.endpoint, self.process.state_of(sub, now)))
        await self._registration_changed(account, ctx.session_id)
        return Reply("OK", "ACKWEBPUSH completed")

    # --- LWEBPUSH -----------------------------------------------------------------------
    @_after_login("LWEBPUSH", parse_lwebpush)
    async def lwebpush(self, account: str, which: str | None, ctx: SessionContext) -> Reply:
        if which is None:
            subs = await self.subscriptions.subscriptions_for_account(account)
        else:
            one = await self.subscriptions.get_subscription(account, which)
            subs = [one] if one is not None else []
        now = self.clock()
        for sub in subs:
            if not is_expired(sub, now):  # expired but not yet swept: gone for the client
                ctx.reply_untagged(webpush_response(sub.sub_id, sub.endpoint, self.process.state_of(sub, now)))
        return Reply("OK", "LWEBPUSH completed")

    # --- SILWEBPUSH ---------------------------------------------------------------------
    @_after_login("SILWEBPUSH", parse_silwebpush)
    async def silwebpush(self, account: str, request: Silence, ctx: SessionContext) -> Reply:
        async with self.process.account_lock(account):
            now = self.clock()
            sub = await self.subscriptions.get_subscription(account, request.sub_id)
            if sub is None or is_expired(sub, now):
                return Reply("NO", "No such WEBPUSH subscription")
            if request.seconds is None:
                sub.silenced_session = self.process.session_silence_key(ctx.session_id)
                sub.silenced_until = None
                self._silencing_sessions.add(ctx.session_id)
            elif request.seconds == 0:
                sub.silenced_session = None
                sub.silenced_until = None
            else:
                sub.silenced_session = None
                sub.silenced_until = now + request.seconds
            sub.updated = now
            await self.subscriptions.put_subscription(sub)
        ctx.reply_untagged(webpush_response(sub.sub_id, sub.endpoint, self.process.state_of(sub, now)))
        return Reply("OK", "SILWEBPUSH completed")

    async def session_closed(self, session_id: str) -> None:
        """A connection ended: lift the silences it held ("until this connection ends")."""
        if session_id not in self._silencing_sessions:
            return  # nothing to lift: no store write for the many sessions that never silenced
        self._silencing_sessions.discard(session_id)
        lifted = await self.subscriptions.clear_session_silences(self.process.session_silence_key(session_id))
        if lifted:
            log.debug("session %s ended: %d WEBPUSH silence(s) lifted", session_id, lifted)

    async def _registration_changed(self, account: str, session_id: str | None) -> None:
        """Tell the watcher supervisor; the OK waits a bounded time, the update goes on regardless."""
        task = self._background.spawn(self._call_registration_changed(account, session_id))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), _REGISTRATION_WAIT)

    async def _call_registration_changed(self, account: str, session_id: str | None) -> None:
        try:
            await self.registration_changed(account, session_id)
        except StoreUnavailable as exc:  # the store logged the episode; the next change or login follows it
            log.debug("webpush %s: watcher not updated now: %s", account, exc.reason)
        except Exception:
            log.exception("webpush %s: updating the watcher failed", account)

    async def _endpoint_gone(self, account: str) -> None:
        await self._registration_changed(account, None)
