"""Benchmark (figures only, no assertions): several nodes on one PostgreSQL.

Starts a throwaway PostgreSQL (tests/support/postgres.py), registers
``--accounts`` accounts, and runs ``--nodes`` node processes.  Each node runs
the real lease manager, registration feed and push ledger of
:mod:`pushproxy.cluster` on its own PostgresStore; its "watchers" are a fake
upstream: every held account reports one new message (a fresh UID per
account, shared by all nodes through the database) every ``--mail-every``
seconds, and every reported message goes through the node's push ledger.  A
message that passes two ledgers is a duplicate.

Prints:

- time to full ownership at start (every account leased by a live node),
- failover time after ``kill -9`` of the node holding most leases (until
  every account is leased by a survivor again; target <= lease_ttl + 5 s),
- PostgreSQL transactions per second at steady state: with the fake mail
  flowing (one ledger claim per reported event: it grows with the mail, as
  pushes do) and with the mail paused, i.e. the coordination alone
  (heartbeats, lease renewals, the registration feed; target O(nodes), not
  O(accounts): <= 50/s for 10,000 accounts),
- duplicates (must be 0) and pushes in total.

    python bench/cluster.py                          # 3 nodes, 3,000 accounts, lease_ttl 10 s
    python bench/cluster.py --accounts 10000 --ttl 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from pushproxy.cluster import LeaseManager, RegistrationFeed  # noqa: E402
from pushproxy.events import MailEvent, MessageInfo, NewMail  # noqa: E402
from pushproxy.extensions.xapplepush.store import ApnsDevice, ApnsQueries  # noqa: E402
from pushproxy.push.pipeline import FanOut, PushLedger, PushPipeline  # noqa: E402
from pushproxy.store import Vault  # noqa: E402

KEY_HEX = os.urandom(32).hex()  # the vault key every node shares
from pushproxy.store.postgres import PostgresStore  # noqa: E402

# =============================================================================== a node process


class FakeWatchers:
    def __init__(self, leases: LeaseManager) -> None:
        self.leases = leases
        self.running: set[str] = set()

    async def registration_changed(self, account: str, session_id: str | None = None) -> None:
        if self.leases.owns(account):
            self.running.add(account)
        else:
            self.running.discard(account)

    async def release(self, account: str, lost: bool = False) -> None:
        self.running.discard(account)


class Pushed:
    """The extensions' place at the end of the push pipeline: one line per message pushed."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    async def on_event(self, event: MailEvent) -> None:
        if isinstance(event, NewMail):
            for m in event.messages:
                self._out.write(f"{event.account} {m.uid}\n")

    async def flush(self) -> None:
        pass


async def node_main(dsn: str, node_id: str, ttl: float, mail_every: float, out: Path) -> None:
    store = PostgresStore(dsn, Vault(bytes.fromhex(os.environ["BENCH_KEY"])), max_size=4)
    await store.open()
    leases = LeaseManager(store, node_id, f"bench {node_id}", ttl, 3600.0)
    watchers = FakeWatchers(leases)
    pipeline = PushPipeline(PushLedger(store, node_id), FanOut(Pushed(out.open("a", buffering=1))))
    feed = RegistrationFeed(store, leases.registration_changed, leases.resync)
    await leases.start()
    leases.attach(watchers)
    for account in leases.held():
        await watchers.registration_changed(account)
    feed.start()
    quiet = out.with_suffix(".quiet")  # the driver pauses the mail to measure coordination alone
    while True:  # the fake upstream: one new message per watched account and period
        await asyncio.sleep(mail_every)
        if quiet.exists():
            continue
        uid = int(time.time() // mail_every)  # the same message for every node that watches the account
        for account in list(watchers.running):
            pipeline.submit(NewMail(account, "INBOX", (MessageInfo(uid),)))


# =============================================================================== the driver


async def count_owned(conn: Any, live: list[str]) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM watch_leases WHERE expires > extract(epoch FROM clock_timestamp()) "
            "AND owner = ANY($1::text[])",
            live,
        )
    )


async def xacts(conn: Any) -> int:
    return int(
        await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
    )


async def wait_owned(conn: Any, live: list[str], n: int, timeout: float) -> float:
    started = time.monotonic()
    while await count_owned(conn, live) < n:
        if time.monotonic() - started > timeout:
            return float("nan")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def spawn(dsn: str, node_id: str, args: argparse.Namespace, out: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--node", node_id, "--dsn", dsn, "--ttl", str(args.ttl)]
    command += ["--mail-every", str(args.mail_every), "--out", str(out)]
    return subprocess.Popen(command, env={**os.environ, "BENCH_KEY": KEY_HEX})


async def driver(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.postgres import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
    server = PostgresServer(bin_dir).start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    out = Path(server.base) / "pushes.txt"
    try:
        dsn = server.dsn(server.create_database())
        store = PostgresStore(dsn, Vault(bytes.fromhex(KEY_HEX)))
        await store.open()
        accounts = [f"user{i:05d}" for i in range(args.accounts)]
        for i, account in enumerate(accounts):
            await store.queries(ApnsQueries).upsert_device(ApnsDevice(account, "aps", f"{i:064x}"))
        await store.close()
        conn = await asyncpg.connect(dsn)
        nodes = [f"node{i}" for i in range(args.nodes)]
        for node in nodes:
            procs[node] = spawn(dsn, node, args, out)
        start_time = await wait_owned(conn, nodes, len(accounts), 120)

        await asyncio.sleep(args.ttl)  # hand-overs settle
        before, t0 = await xacts(conn), time.monotonic()
        await asyncio.sleep(args.steady)
        qps = (await xacts(conn) - before) / (time.monotonic() - t0)
        # Coordination alone (heartbeats, lease renewals, the registration feed): no mail for a while.
        quiet = out.with_suffix(".quiet")
        quiet.touch()
        await asyncio.sleep(args.mail_every + 1)
        before, t0 = await xacts(conn), time.monotonic()
        await asyncio.sleep(args.steady)
        coordination_qps = (await xacts(conn) - before) / (time.monotonic() - t0)
        quiet.unlink()

        held = {
            r["owner"]: r["n"] for r in await conn.fetch("SELECT owner, count(*) AS n FROM watch_leases GROUP BY owner")
        }
        victim = max(nodes, key=lambda n: held.get(n, 0))
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        survivors = [n for n in nodes if n != victim]
        failover = await wait_owned(conn, survivors, len(accounts), args.ttl * 4 + 60)
        await asyncio.sleep(args.mail_every * 3)
        await conn.close()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            p.wait()
        lines = out.read_text().splitlines() if out.exists() else []
        server.stop()
    duplicates = len(lines) - len(set(lines))
    return {
        "nodes": args.nodes,
        "accounts": args.accounts,
        "lease_ttl_s": args.ttl,
        "time_to_full_ownership_s": round(start_time, 2),
        "leases_per_node_before_kill": held,
        "failover_after_kill_9_s": round(failover, 2),
        "failover_target_s": args.ttl + 5,
        "postgres_transactions_per_s_steady_with_mail": round(qps, 1),
        "mail_events_per_s": round(args.accounts / args.mail_every, 1),
        "postgres_transactions_per_s_coordination_only": round(coordination_qps, 1),
        "pushes": len(lines),
        "duplicates": duplicates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=3000)
    parser.add_argument("--ttl", type=float, default=10.0)
    parser.add_argument("--mail-every", type=float, default=5.0)
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of steady state measured")
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        asyncio.run(node_main(args.dsn, args.node, args.ttl, args.mail_every, args.out))
        return
    print(json.dumps(asyncio.run(driver(args)), indent=2))


if __name__ == "__main__":
    main()
