"""The cluster's tables: node heartbeats, watch leases, the push ledger (queries written once, both back ends).

Times are the database's clock (``epoch_now()``), so that nodes with skewed
clocks agree on who is alive and which lease has expired.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pushproxy.store.records import Row
from pushproxy.store.sql import SqlStore


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    address: str
    started: float
    heartbeat: float


@dataclass(frozen=True, slots=True)
class Lease:
    account: str
    owner: str
    expires: float
    fence: int


def _lease(row: Row) -> Lease:
    return Lease(row["account"], row["owner"], float(row["expires"]), int(row["fence"]))


class ClusterStore:
    """Coordination queries on the store's own database connections."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._backend = store.backend

    # --- nodes ------------------------------------------------------------------------
    async def heartbeat(self, node_id: str, address: str) -> float:
        """Record that this node is alive; the database's clock."""
        async with self._backend.write() as conn:
            (row,) = await conn.fetch(
                """INSERT INTO cluster_nodes (node_id, address, started, heartbeat)
                   VALUES ($1, $2, epoch_now(), epoch_now())
                   ON CONFLICT (node_id) DO UPDATE SET address = excluded.address, heartbeat = excluded.heartbeat
                   RETURNING heartbeat""",
                node_id,
                address,
            )
        return float(row["heartbeat"])

    async def restarted(self, node_id: str) -> None:
        async with self._backend.write() as conn:
            await conn.execute("UPDATE cluster_nodes SET started = epoch_now() WHERE node_id = $1", node_id)

    async def nodes(self) -> tuple[float, list[NodeInfo]]:
        """The database's clock and every node that ever sent a heartbeat (until pruned)."""
        async with self._backend.read() as conn:
            (now,) = await conn.fetch("SELECT epoch_now() AS now")
            rows = await conn.fetch("SELECT * FROM cluster_nodes ORDER BY node_id")
        return float(now["now"]), [
            NodeInfo(r["node_id"], r["address"], float(r["started"]), float(r["heartbeat"])) for r in rows
        ]

    async def leave(self, node_id: str) -> None:
        """A clean shutdown: release every lease at once and stop counting as alive."""
        async with self._backend.write() as conn:
            await conn.execute("DELETE FROM watch_leases WHERE owner = $1", node_id)
            await conn.execute("DELETE FROM cluster_nodes WHERE node_id = $1", node_id)

    async def prune_nodes(self, older_than: float) -> int:
        return await self._modify("DELETE FROM cluster_nodes WHERE heartbeat < epoch_now() - $1", older_than)

    # --- leases -------------------------------------------------------------------------
    async def leases(self) -> list[Lease]:
        async with self._backend.read() as conn:
            rows = await conn.fetch("SELECT * FROM watch_leases")
        return [_lease(r) for r in rows]

    async def renew(self, node_id: str, ttl: float) -> dict[str, int]:
        """Extend every unexpired lease of this node; account -> fence of the leases still held.

        A lease that expired (the node was frozen or cut off for longer than
        the TTL) is not renewed here; :meth:`reassert` keeps it if nobody
        took it meanwhile (same owner, same fence).
        """
        async with self._backend.write() as conn:
            rows = await conn.fetch(
                """UPDATE watch_leases SET expires = epoch_now() + $2
                   WHERE owner = $1 AND expires > epoch_now()
                   RETURNING account, fence""",
                node_id,
                ttl,
            )
        return {r["account"]: int(r["fence"]) for r in rows}

    async def renew_counted(self, node_id: str, ttl: float) -> int:
        """:meth:`renew`, telling only how many leases it extended (no row handed back: the usual round)."""
        return await self._modify(
            "UPDATE watch_leases SET expires = epoch_now() + $2 WHERE owner = $1 AND expires > epoch_now()",
            node_id,
            ttl,
        )

    async def expiring(self, node_id: str, within: float) -> list[Lease]:
        """Other nodes' leases that expire within ``within`` seconds or have expired: a live node renews
        every TTL/3, so in a quiet cluster there are none, whatever the number of accounts."""
        async with self._backend.read() as conn:
            rows = await conn.fetch(
                "SELECT * FROM watch_leases WHERE owner <> $1 AND expires < epoch_now() + $2", node_id, within
            )
        return [_lease(r) for r in rows]

    async def unleased(self) -> dict[str, Lease | None]:
        """Accounts with registrations and no live lease: account -> its expired lease (None: never leased).

        Joined by the database: in a quiet cluster nothing comes back, whatever the number of accounts.
        """
        registered = self._store.registered_accounts_sql()
        if registered is None:
            return {}
        async with self._backend.read() as conn:
            rows = await conn.fetch(
                # The f-string inserts the extensions' static SELECTs (SchemaPart.registered_accounts), no input.
                f"""SELECT r.account AS account, l.owner AS owner, l.expires AS expires, l.fence AS fence
                    FROM ({registered}) r LEFT JOIN watch_leases l ON l.account = r.account
                    WHERE l.account IS NULL OR l.expires <= epoch_now()"""  # noqa: S608
            )
        return {
            r["account"]: None
            if r["owner"] is None
            else Lease(r["account"], r["owner"], float(r["expires"]), int(r["fence"]))
            for r in rows
        }

    async def unregistered(self, node_id: str) -> list[str]:
        """This node's leases of accounts that have no registration any more."""
        registered = self._store.registered_accounts_sql()
        async with self._backend.read() as conn:
            if registered is None:
                rows = await conn.fetch("SELECT account FROM watch_leases WHERE owner = $1", node_id)
            else:
                rows = await conn.fetch(
                    # As in unleased: static SELECTs only.
                    f"""SELECT account FROM watch_leases WHERE owner = $1
                        AND account NOT IN (SELECT account FROM ({registered}) r)""",  # noqa: S608
                    node_id,
                )
        return [r["account"] for r in rows]

    async def reassert(self, node_id: str, held: dict[str, int], ttl: float) -> dict[str, int]:
        """After an outage: extend this node's expired leases that nobody took meanwhile (same owner, same
        fence: no other node held them in between); account -> fence of those extended."""
        return await self._fences(
            """UPDATE watch_leases SET expires = epoch_now() + $4
               WHERE account = $1 AND owner = $2 AND fence = $3
               RETURNING fence""",
            ((account, (node_id, fence, ttl)) for account, fence in held.items()),
        )

    async def acquire_many(self, node_id: str, accounts: Iterable[str], ttl: float) -> dict[str, int]:
        """Take the leases of these accounts that are free, expired or ours, in one transaction (a takeover
        of hundreds is one round trip per account, not one transaction each); account -> new fence."""
        return await self._fences(
            """INSERT INTO watch_leases (account, owner, expires, fence) VALUES ($1, $2, epoch_now() + $3, 1)
               ON CONFLICT (account) DO UPDATE SET owner = excluded.owner, expires = excluded.expires,
                   fence = watch_leases.fence + 1
               WHERE watch_leases.expires <= epoch_now() OR watch_leases.owner = excluded.owner
               RETURNING fence""",
            ((account, (node_id, ttl)) for account in accounts),
        )

    async def _fences(self, sql: str, each: Iterable[tuple[str, tuple[object, ...]]]) -> dict[str, int]:
        """``sql`` once per (account, further arguments), all in one transaction; account -> the fence it
        returned (an account whose statement returned no row is left out)."""
        fences: dict[str, int] = {}
        async with self._backend.write() as conn:
            for account, args in each:
                rows = await conn.fetch(sql, account, *args)
                if rows:
                    fences[account] = int(rows[0]["fence"])
        return fences

    async def release(self, node_id: str, accounts: Iterable[str]) -> None:
        async with self._backend.write() as conn:
            for account in accounts:
                await conn.execute("DELETE FROM watch_leases WHERE owner = $1 AND account = $2", node_id, account)

    # --- the push ledger (claimed by pushproxy.push.pipeline) ---------------------------
    async def prune_ledger(self, older_than: float, limit: int) -> int:
        """Forget at most ``limit`` (the oldest) of the claims older than ``older_than`` seconds; how many."""
        return await self._modify(
            """DELETE FROM push_ledger
               WHERE claimed < epoch_now() - $1 AND (account, mailbox, uidvalidity, uid) IN (
                   SELECT account, mailbox, uidvalidity, uid FROM push_ledger
                   WHERE claimed < epoch_now() - $1 ORDER BY claimed LIMIT $2)""",
            older_than,
            limit,
        )

    async def _modify(self, sql: str, *args: object) -> int:
        async with self._backend.write() as conn:
            return await conn.execute(sql, *args)
