"""The push ledger: every new message is pushed by one node, once, whoever detected it.

Every source of events (the watchers, Dovecot's ``/events/dovecot-ox``
endpoint, on any node) passes its new-mail events through
:meth:`PushLedger.gate` before they reach the dispatcher.  The gate claims
each message (account, mailbox, UIDVALIDITY, UID) with ``INSERT ... ON CONFLICT DO
NOTHING``; only the messages this call claimed go on.  Two nodes that both
believe they watch an account (a split brain after a freeze), a watcher and
Dovecot reporting the same delivery, a watcher replaying after a takeover:
each message is pushed once.  Rows are pruned after
``cluster.ledger_retention``.

Other events (expunges, flag changes) pass through, in order with the
account's new-mail events.  If the claim fails (the database cannot be
reached, or anything else), the gate lets the event through (a possible
duplicate beats a lost push) and says so once per outage.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import replace

from pushproxy import metrics
from pushproxy.accounts import is_inbox
from pushproxy.cluster.queries import ClusterStore
from pushproxy.events import MailEvent, NewMail
from pushproxy.store.sql import SqlStore

log = logging.getLogger("pushproxy.cluster")

CLAIM_TIMEOUT = 10.0

Submit = Callable[[MailEvent], None]


class PushLedger:
    def __init__(self, store: SqlStore, node_id: str) -> None:
        self._cluster = ClusterStore(store)
        self._node_id = node_id
        self._tails: dict[str, asyncio.Task[None]] = {}  # per account: the last event in line
        self._degraded = False

    def gate(self, submit: Submit) -> Submit:
        """``submit`` behind the ledger; like it, the result returns at once."""

        def gated(event: MailEvent) -> None:
            previous = self._tails.get(event.account)
            task = asyncio.ensure_future(self._forward(event, submit, previous))
            self._tails[event.account] = task
            task.add_done_callback(functools.partial(self._done, event.account))

        return gated

    def _done(self, account: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(account) is task:
            del self._tails[account]

    async def _forward(self, event: MailEvent, submit: Submit, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # keep the account's events in order
        try:
            await self._claim_then_submit(event, submit)
        except Exception:
            log.exception("push ledger: an event for %s could not be handled", event.account)

    async def _claim_then_submit(self, event: MailEvent, submit: Submit) -> None:
        if isinstance(event, NewMail) and event.messages:
            claimed = await self._claim(event)
            if not claimed:
                return
            if len(claimed) < len(event.messages):
                event = replace(event, messages=tuple(m for m in event.messages if m.uid in claimed))
        submit(event)

    async def _claim(self, event: NewMail) -> set[int]:
        uids = [m.uid for m in event.messages]
        mailbox = event.mailbox.upper() if is_inbox(event.mailbox) else event.mailbox
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT):
                claimed = await self._cluster.claim(self._node_id, event.account, mailbox, event.uidvalidity, uids)
        except Exception as exc:  # fail open, whatever went wrong (StoreUnavailable, timeouts, ...)
            if not self._degraded:
                log.warning("push ledger unavailable (%s): pushing without claiming, duplicates possible", exc)
                self._degraded = True
            return set(uids)
        if self._degraded:
            log.info("push ledger available again")
            self._degraded = False
        conflicts = len(uids) - len(claimed)
        if conflicts:
            metrics.PUSH_LEDGER_CONFLICTS.inc(conflicts)
        return claimed

    async def flush(self) -> None:
        """Wait until every event gated so far went on (tests, shutdown)."""
        while self._tails:
            await asyncio.wait(list(self._tails.values()))

    async def close(self) -> None:
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT):
                await self.flush()
        except TimeoutError:
            for task in self._tails.values():
                task.cancel()
