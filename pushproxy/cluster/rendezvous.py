"""Which live node should watch an account: rendezvous (highest random weight) hashing.

Every node computes the same answer from the same list of live nodes, with
no coordination: accounts spread evenly, and a node joining or leaving moves
only its own share.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

SHARE_BATCH = 2000  # accounts hashed between two turns of the loop

__all__ = ["SHARE_BATCH", "shares", "wanted_owner"]


def wanted_owner(account: str, nodes: Sequence[str]) -> str | None:
    """The node with the highest score for the account (None when there is no node)."""
    if len(nodes) == 1:  # one node (SQLite, or alone on PostgreSQL): nothing to hash, at 50,000 accounts a round
        return nodes[0]
    best: tuple[bytes, str] | None = None
    for node in nodes:
        score = hashlib.blake2b(f"{node}\0{account}".encode(), digest_size=8).digest()
        if best is None or score > best[0]:
            best = (score, node)
    return None if best is None else best[1]


async def shares(accounts: Sequence[str], live: list[str], node_id: str, *, here: bool) -> list[str]:
    """The accounts whose wanted owner among ``live`` is (``here``) or is not ``node_id``, in order.

    The loop runs its other work between two batches of SHARE_BATCH: a change of the live nodes
    hashes every held account, a takeover every orphan (at 50,000 accounts, ~150 ms at once).
    """
    if live == [node_id]:
        return list(accounts) if here else []
    out: list[str] = []
    for start in range(0, len(accounts), SHARE_BATCH):
        if start:
            await asyncio.sleep(0)
        batch = accounts[start : start + SHARE_BATCH]
        out += [a for a in batch if (wanted_owner(a, live) == node_id) == here]
    return out
