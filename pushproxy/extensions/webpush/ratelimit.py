"""How many verification pushes the proxy sends, per endpoint and per account, per hour -- on every node.

The verification push (``* ACKWEBPUSH <token>``) is the one push that goes to
a URL nobody has proved to control yet; without a bound, one session could
make the proxy POST to a third party's URL as fast as it can send WEBPUSH
(issue 9: about 1,300 per minute).  Pinned interpretation of the draft's
"rate-limited per endpoint and per account": a sliding window of one hour,
``webpush.verification_per_endpoint_per_hour`` and
``webpush.verification_per_account_per_hour``; beyond either, WEBPUSH gets
``NO [LIMIT]`` and nothing is stored or sent.

The sends are rows of ``webpush_verifications`` in the store, so the bound
holds across restarts and across the nodes sharing a PostgreSQL database (a
client cannot multiply it by reconnecting to another node).  Rows name no
account and no URL: the key is a keyed hash (vault key).  Check and record
are one transaction; on PostgreSQL an advisory lock per key serialises nodes
counting the same key.  Rows older than the window are pruned by the
subscription maintenance.
"""

from __future__ import annotations

from pushproxy.store.sql_base import Queries

__all__ = ["WINDOW", "VerificationLimiter", "VerificationQueries"]

WINDOW = 3600.0
_RECENT_SENDS = "SELECT count(*) AS n FROM webpush_verifications WHERE key_hash = $1 AND sent > epoch_now() - $2"


class VerificationQueries(Queries):
    """The ``webpush_verifications`` table (migration 2 of the webpush part)."""

    def key(self, kind: str, value: str) -> bytes:
        return self._vault.keyed_hash(b"webpush-verification", f"{kind}\0{value}".encode())

    async def take(self, keys: list[tuple[bytes, int]], window: float) -> int | None:
        """Record one send under every key if each has fewer than its limit in ``window``;
        else record nothing and return the index of the first key at its limit."""
        async with self._backend.write() as conn:
            if self.dialect.xact_lock is not None:
                for lock in sorted({int.from_bytes(k[:8], "big", signed=True) for k, _ in keys}):
                    await conn.execute(self.dialect.xact_lock, lock)
            for index, (key, limit) in enumerate(keys):
                (row,) = await conn.fetch(
                    _RECENT_SENDS,
                    key,
                    window,
                )
                if int(row["n"]) >= limit:
                    return index
            for key, _ in keys:
                await conn.execute("INSERT INTO webpush_verifications (key_hash, sent) VALUES ($1, epoch_now())", key)
        return None

    async def prune(self, window: float) -> int:
        return await self._modify("DELETE FROM webpush_verifications WHERE sent <= epoch_now() - $1", window)

    async def count(self, key: bytes, window: float) -> int:
        row = await self._fetchone(
            _RECENT_SENDS,
            key,
            window,
        )
        return int(row["n"]) if row is not None else 0


class VerificationLimiter:
    """The per-account and per-endpoint bounds together; endpoints are keyed as stored."""

    def __init__(self, queries: VerificationQueries, per_endpoint: int, per_account: int, window: float = WINDOW):
        self._queries = queries
        self.per_endpoint = per_endpoint
        self.per_account = per_account
        self.window = window

    async def take(self, account: str, endpoint: str) -> str | None:
        """None when one more verification push may go out (and it is counted), else the reason for ``NO [LIMIT]``."""
        keys = [
            (self._queries.key("account", account), self.per_account),
            (self._queries.key("endpoint", endpoint), self.per_endpoint),
        ]
        refused = await self._queries.take(keys, self.window)
        if refused == 0:
            return (
                f"Too many WEBPUSH verification pushes for this account "
                f"(at most {self.per_account} per hour); try again later"
            )
        if refused == 1:
            return (
                f"Too many WEBPUSH verification pushes to this endpoint "
                f"(at most {self.per_endpoint} per hour); try again later"
            )
        return None

    async def prune(self) -> int:
        return await self._queries.prune(self.window)
