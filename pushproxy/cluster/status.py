"""``pushproxy cluster status``: live nodes, what each owns, and accounts nobody watches."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from pushproxy.cluster.queries import ClusterStore, NodeInfo
from pushproxy.config import Config
from pushproxy.store.factory import open_store


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    now: float  # the database's clock
    nodes: list[NodeInfo]
    live: set[str]
    owned: dict[str, int]  # node -> accounts under an unexpired lease
    orphaned: list[str]  # accounts with registrations and no unexpired lease


async def read_status(config: Config) -> ClusterStatus:
    store = await open_store(config)
    try:
        cluster = ClusterStore(store)
        now, nodes = await cluster.nodes()
        leases = [lease for lease in await cluster.leases() if lease.expires > now]
        wanted = await store.accounts_with_registrations()
    finally:
        await store.close()
    held = {lease.account for lease in leases}
    return ClusterStatus(
        now=now,
        nodes=nodes,
        live={n.node_id for n in nodes if n.heartbeat > now - config.cluster.lease_ttl},
        owned=dict(Counter(lease.owner for lease in leases)),
        orphaned=[a for a in wanted if a not in held],
    )


def format_status(status: ClusterStatus) -> str:
    lines = [f"{'NODE':32} {'STATE':6} {'HEARTBEAT':>10} {'ACCOUNTS':>8}  ADDRESS"]
    for node in status.nodes:
        state = "live" if node.node_id in status.live else "dead"
        age = f"{status.now - node.heartbeat:.1f}s ago"
        lines.append(f"{node.node_id:32} {state:6} {age:>10} {status.owned.get(node.node_id, 0):>8}  {node.address}")
    lines.append(f"orphaned accounts (registrations, no live lease): {len(status.orphaned)}")
    lines.extend(f"  {account}" for account in status.orphaned[:100])
    if len(status.orphaned) > 100:
        lines.append(f"  ... and {len(status.orphaned) - 100} more")
    return "\n".join(lines)


def cluster_status(config: Config) -> int:
    print(format_status(asyncio.run(read_status(config))))
    return 0
