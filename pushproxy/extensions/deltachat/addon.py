"""The Delta Chat extension as the core sees it: the ``deltachat`` section, device tokens, the gateway.

Advertises ``XDELTAPUSH`` and ``METADATA`` after login (METADATA appears
once whether or not the upstream has it), takes over the METADATA commands
described in :mod:`.commands`, keeps each account's tokens (encrypted, 90
days from the last time the device set them), watches INBOX of every account
with a token and, for each new message there that is not ``\\Seen`` and not
from the account itself, POSTs each of its tokens to ``deltachat.notify_url``
(:mod:`.notifier`).  aiohttp is imported in :meth:`DeltaChat.start`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from pushproxy.events import MailEvent, MessageInfo, NewMail
from pushproxy.extensions.base import (
    Claim,
    Extension,
    Reply,
    SessionContext,
    WatchRequest,
    admin_command,
    admin_group,
    require_login,
)
from pushproxy.extensions.baseline import record_baseline
from pushproxy.extensions.deltachat import commands
from pushproxy.extensions.deltachat.metrics import set_registrations
from pushproxy.extensions.deltachat.schema import DELTACHAT
from pushproxy.extensions.deltachat.settings import SECTION, DeltaChatConfig, deltachat_settings
from pushproxy.extensions.deltachat.store import DeltaChatQueries, DeltaChatToken
from pushproxy.extensions.housekeeping import Housekeeping
from pushproxy.imap.fetch import MalformedResponse, parse_envelope
from pushproxy.imap.parse import Command
from pushproxy.store.base import StoreUnavailable
from pushproxy.store.batches import in_batches

if TYPE_CHECKING:
    from pushproxy.config import Config
    from pushproxy.extensions.deltachat.notifier import DeltaChatNotifier

log = logging.getLogger("pushproxy.deltachat")

HOUSEKEEPING_INTERVAL = 60.0
_STORE_TIMEOUT = 5.0
INBOX_ONLY = WatchRequest(("INBOX",))


class DeltaChat(Extension):
    section = SECTION
    settings = DeltaChatConfig
    schema = DELTACHAT

    def __init__(self) -> None:
        super().__init__(
            name="deltachat",
            capabilities=(b"XDELTAPUSH", b"METADATA"),
            claims={
                "SETMETADATA": Claim(commands.wants_setmetadata, self.setmetadata),
                "GETMETADATA": Claim(self._wants_getmetadata, self.getmetadata),
            },
        )
        self.cfg = DeltaChatConfig()
        self.notifier: DeltaChatNotifier | None = None
        self.housekeeping = Housekeeping("deltachat", self.expire_tokens, HOUSEKEEPING_INTERVAL)
        self._background: set[asyncio.Task[None]] = set()

    def configure(self, config: Config) -> bool:
        self.cfg = deltachat_settings(config)
        return self.cfg.enabled

    @property
    def tokens(self) -> DeltaChatQueries:
        return self.core.store.queries(DeltaChatQueries)

    async def start(self) -> None:
        from pushproxy.extensions.deltachat.notifier import DeltaChatNotifier

        self.notifier = DeltaChatNotifier(self.cfg, self._token_gone)
        await self.notifier.start()
        self.housekeeping.start()

    async def stop(self) -> None:
        await self.housekeeping.stop()
        if self.notifier is not None:
            await self.notifier.close()

    # --- the commands -----------------------------------------------------------------
    def _wants_getmetadata(self, line: bytes, ctx: SessionContext) -> bool:
        return commands.wants_getmetadata(line, ctx, self.cfg.max_smtp_recipients)

    async def getmetadata(self, cmd: Command, ctx: SessionContext) -> Reply:
        account = require_login(ctx, "GETMETADATA")
        if isinstance(account, Reply):
            return account
        return await commands.get_metadata(cmd, ctx, self.cfg.max_smtp_recipients)

    async def setmetadata(self, cmd: Command, ctx: SessionContext) -> Reply:
        account = require_login(ctx, "SETMETADATA")
        if isinstance(account, Reply):
            return account
        parsed = commands.token_change(cmd, self.cfg.max_token_size)
        if isinstance(parsed, Reply):
            return parsed
        change, others = parsed
        mailbox = commands.parse_setmetadata(cmd.args).mailbox
        if change is not None and others and not await commands.upstream_metadata(ctx, mailbox):
            return Reply("NO", f"Only {commands.DEVICETOKEN} can be set on this server")
        refused = await commands.set_other_entries(ctx, mailbox, others)
        if refused is not None or change is None:
            return refused or Reply("OK", "SETMETADATA completed.")
        if change.token is None:
            return await self._remove_tokens(account)
        return await self._set_token(account, change.token, ctx)

    async def _set_token(self, account: str, token: str, ctx: SessionContext) -> Reply:
        # Before the OK, so that mail arriving from now on is pushed (see extensions/baseline.py).
        await record_baseline(ctx, self.core.store, account, ["INBOX"])
        try:
            stored = await asyncio.wait_for(self.tokens.set_token(account, token), _STORE_TIMEOUT)
            await self._enforce_cap(account, stored)
        except Exception as exc:
            # Delta Chat sets its token again on its next connection: NO loses nothing.
            _store_fault(f"storing a Delta Chat token for {account}", exc)
            return Reply("NO", "Cannot store the device token now, try again later", "UNAVAILABLE")
        renewed = stored.first_registered != stored.last_registered
        log.info("%s Delta Chat token %s for %s", "renewed" if renewed else "registered", stored.token_id, account)
        self._spawn(self.core.registration_changed(account, ctx.session_id))
        return Reply("OK", "SETMETADATA completed.")

    async def _remove_tokens(self, account: str) -> Reply:
        try:
            removed = await asyncio.wait_for(self.tokens.remove_account(account), _STORE_TIMEOUT)
        except Exception as exc:
            _store_fault(f"removing the Delta Chat tokens of {account}", exc)
            return Reply("NO", "Cannot remove the device token now, try again later", "UNAVAILABLE")
        log.info("removed %d Delta Chat token(s) of %s (SETMETADATA NIL)", removed, account)
        return Reply("OK", "SETMETADATA completed.")

    async def _enforce_cap(self, account: str, newest: DeltaChatToken) -> None:
        cap = self.cfg.max_tokens_per_account
        tokens = await self.tokens.list_tokens(account)
        if len(tokens) <= cap:
            return
        others = [t for t in tokens if t.token_id != newest.token_id]  # least recently set first
        for old in others[: len(tokens) - cap]:
            await self.tokens.remove_token(account, old.token)
            log.warning(
                "account %s has more than %d Delta Chat tokens: removed %s (least recently set)",
                account,
                cap,
                old.token_id,
            )

    # --- watching and notifying ---------------------------------------------------------
    async def watched_mailboxes(self, account: str) -> WatchRequest | None:
        return INBOX_ONLY if await self.tokens.tokens_for_account(account) else None

    async def watched_accounts(self) -> dict[str, WatchRequest]:
        return {token.account: INBOX_ONLY for token in await self.tokens.list_tokens()}

    async def watched_mailboxes_of(self, accounts: Sequence[str]) -> dict[str, WatchRequest]:
        by_account = await self.tokens.tokens_of_accounts(accounts)
        return {account: INBOX_ONLY for account, tokens in by_account.items() if tokens}

    async def on_event(self, event: MailEvent) -> None:
        """New mail in INBOX not from the account itself: each of its tokens to the gateway.

        The tokens are read through the store's registration view (``pushproxy.store.regview``), as
        the APNs and Web Push senders read theirs: while the store is away the last tokens read are
        used without waiting; change notices (this node's writes, other nodes' NOTIFY) keep them
        current.  An account never read raises StoreUnavailable: the extension manager retries the event.
        """
        if not isinstance(event, NewMail) or self.notifier is None or event.mailbox != "INBOX":
            return
        if event.messages and all(_from_account(m, event.account) for m in event.messages):
            return  # Delta Chat's own copies (multi-device) wake nobody
        for token in await self.tokens.tokens_for_account(event.account):
            self.notifier.notify(token.token, token.token_id)

    async def flush(self) -> None:
        if self.notifier is not None:
            await self.notifier.flush()

    async def _token_gone(self, token: str, digest_id: str, posted_at: float) -> None:
        """410 from the gateway: the token is removed (unless set again since); its watcher may stop."""
        try:
            removed = await asyncio.wait_for(self.tokens.remove_token_everywhere(token, posted_at), _STORE_TIMEOUT)
        except Exception as exc:
            _store_fault(f"removing the gone Delta Chat token {digest_id}", exc)
            return
        if removed:
            log.info("removed %d registration(s) of Delta Chat token %s (gone)", removed, digest_id)

    # --- housekeeping -------------------------------------------------------------------
    async def expire_tokens(self) -> None:
        """Token expiry and the registration gauge, once a minute."""
        cutoff, batch = time.time() - self.cfg.token_expiry, self.core.config.store.housekeeping_batch
        expired = await in_batches(lambda limit: self.tokens.expire_tokens(cutoff, limit), batch)
        if expired:
            log.info("expired %d Delta Chat token(s) not set again in time", expired)
        set_registrations(await self.tokens.count_tokens())  # counted by the database: nothing decrypted

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(functools.partial(_done, self._background))

    @classmethod
    def cli(cls, subparsers: argparse._SubParsersAction[Any]) -> None:
        from pushproxy.extensions.deltachat import admin

        group = admin_group(subparsers, "deltachat", "Delta Chat device tokens")
        listing = admin_command(group, "list", "list tokens (their ids, never the tokens)", admin.tokens_list)
        listing.add_argument("--account")
        remove = admin_command(group, "remove", "remove an account's tokens", admin.tokens_remove)
        remove.add_argument("--account", required=True)
        remove.add_argument("--token-id", help="only the token whose id starts with this")


def _from_account(message: MessageInfo, account: str) -> bool:
    """Whether the message's From is the account itself (a login without a domain: its local part)."""
    if message.envelope is None:
        return False
    try:
        senders = parse_envelope(message.envelope).sender
    except MalformedResponse:
        return False
    for sender in senders:
        address = (sender.email or "").lower()
        if address and (address == account or ("@" not in account and address.split("@", 1)[0] == account)):
            return True
    return False


def _store_fault(what: str, exc: Exception) -> None:
    """One line for a failed store operation; none for a store outage (the store logs each episode once)."""
    if isinstance(exc, StoreUnavailable):
        log.debug("%s failed: %s", what, type(exc).__name__)
    else:
        log.warning("%s failed (%s)", what, type(exc).__name__)


def _done(tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("Delta Chat background task failed: %s: %s", type(exc).__name__, exc)
