"""Several nodes on one PostgreSQL: each account watched by one node, each message pushed once.

PostgreSQL is the coordinator; there is no protocol between nodes:

- :mod:`~pushproxy.cluster.leases`: per-account watcher leases (owner node,
  expiry, fencing counter), spread by rendezvous hashing, renewed by
  heartbeat, taken over after ``cluster.lease_ttl``;
- :mod:`~pushproxy.cluster.feed`: registration changes reach the owning node
  within a second (LISTEN/NOTIFY, resync after a lost connection);
- the push ledger (``push_ledger``): every new message is claimed there
  before it is pushed, by the push pipeline's dedupe stage
  (:mod:`pushproxy.push.pipeline`); the leases prune it.

With SQLite the same code runs on one node, which owns every lease; the
feed then also stops a watcher whose last registration the senders or
housekeeping removed.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from pushproxy.cluster.feed import RegistrationFeed
from pushproxy.cluster.leases import LeaseManager, Watchers
from pushproxy.cluster.rendezvous import wanted_owner
from pushproxy.config import Config
from pushproxy.push.pipeline import PushPipeline
from pushproxy.store.sql import SqlStore

__all__ = ["Cluster", "LeaseManager", "RegistrationFeed", "default_node_id", "wanted_owner"]


def _listener(config: Config) -> str:
    return config.listen.imap or config.listen.imaps


def default_node_id(config: Config) -> str:
    """The host name and the IMAP listener: stable across restarts, distinct for two nodes on one host."""
    port = _listener(config).rpartition(":")[2]
    return f"{socket.gethostname()}:{port}" if port else socket.gethostname()


class Cluster:
    """This node's part: leases and registration feed, started and stopped together."""

    def __init__(self, config: Config, store: SqlStore) -> None:
        cfg = config.cluster
        self._store = store
        self.node_id = cfg.node_id or default_node_id(config)
        address = cfg.address or f"{socket.gethostname()} {_listener(config)}"
        self.leases = LeaseManager(
            store, self.node_id, address, cfg.lease_ttl, cfg.ledger_retention, config.store.housekeeping_batch
        )
        self.feed = RegistrationFeed(store, self.leases.registration_changed, self.leases.resync)

    async def start(
        self, watchers: Watchers, pipeline: PushPipeline, write_states: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Take this node's share of the leases (before the supervisor starts its watchers), then follow.

        When the store returns after an outage, in this order and before the other nodes' grace
        period ends (``lease_ttl``): re-assert the leases, record the claims of what the push
        pipeline sent unclaimed, write the watchers' mailbox state (``write_states``), let the
        pipeline's held events go on.
        """
        health = self._store.health
        health.on_recovered("leases", self.leases.run_round)
        health.on_recovered("push claims", pipeline.dedupe.write_pending)
        if write_states is not None:
            health.on_recovered("mailbox state", write_states)
        health.on_recovered("held events", pipeline.release)
        await self.leases.start()
        self.leases.attach(watchers)
        self.feed.start()

    async def close(self) -> None:
        await self.feed.close()
        await self.leases.close()
