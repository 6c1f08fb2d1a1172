"""Push-ledger claims this node must write but could not, kept in memory (bounded) until the store is back.

:class:`PendingClaims`: the claims of the pushes that went out unclaimed while
the store was away (at most :data:`MAX_PENDING_CLAIMS` messages; beyond that
the oldest are forgotten, counted and logged once: a node taking such an
account over later may push those again).  They are written back by the
store's recovery (:class:`~pushproxy.store.health.StoreHealth`), after the
leases were re-asserted and before any held event goes on.  (The watchers'
mailbox states, which outlive an outage the same way, are
:class:`pushproxy.watch.checks.MailboxStates`.)
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger("pushproxy.store")

MAX_PENDING_CLAIMS = 100_000

ClaimWriter = Callable[[str, str, int, Iterable[int]], Awaitable[object]]


class PendingClaims:
    """Ledger claims not yet recorded: (account, mailbox, UIDVALIDITY) -> UIDs, oldest first."""

    def __init__(self, limit: int = MAX_PENDING_CLAIMS) -> None:
        self._limit = limit
        self._claims: OrderedDict[tuple[str, str, int], set[int]] = OrderedDict()
        self._count = 0
        self.forgotten = 0  # claims dropped over the limit (logged once per outage)

    def __len__(self) -> int:
        return self._count

    def add(self, account: str, mailbox: str, uidvalidity: int, uids: Iterable[int]) -> set[int]:
        """Keep these claims; the UIDs among them that were not pending yet."""
        group = self._claims.setdefault((account, mailbox, uidvalidity), set())
        new = set(uids) - group
        group.update(new)
        self._count += len(new)
        while self._count > self._limit and self._claims:
            _, oldest = self._claims.popitem(last=False)
            self._count -= len(oldest)
            if not self.forgotten:
                log.warning(
                    "push ledger: more than %d unrecorded claims kept in memory; the oldest are forgotten "
                    "(a node taking those accounts over may push them again)",
                    self._limit,
                )
            self.forgotten += len(oldest)
        return new

    async def write(self, claim: ClaimWriter) -> int:
        """Record every pending claim (``claim`` is the ledger's query); how many were written."""
        written = 0
        while self._claims:
            key, uids = next(iter(self._claims.items()))
            batch = sorted(uids)
            await claim(*key, batch)  # raises when the store is away: the rest stays pending
            if self._claims.get(key) is uids:  # still pending (not dropped over the limit meanwhile)
                before = len(uids)
                uids.difference_update(batch)
                self._count -= before - len(uids)
                if not uids:
                    del self._claims[key]
            written += len(batch)
        self.forgotten = 0
        return written
