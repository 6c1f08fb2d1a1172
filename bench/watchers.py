"""Benchmark (figures only, no assertions): the cost of upstream watchers.

Runs the watcher Supervisor in this process against the tests' fake IMAP
upstream in a child process (tests/support/fake_upstream.py: LOGIN /
CAPABILITY / EXAMINE / STATUS / UID FETCH / IDLE, answering minimally and
sending ``* n EXISTS`` to idling connections on demand), so that the two do
not share one GIL or one RSS.  For each size:

- RSS of this process per watched account (after every watcher is idle,
  minus the RSS before the supervisor started; store rows included),
- CPU of this process while every watcher idles and nothing happens,
- latency from the moment the upstream wrote ``* n EXISTS`` to its submit into
  the push pipeline (CLOCK_MONOTONIC is system wide, so the two processes' timestamps
  compare), with new mail at ``--rate`` events/s on random accounts.

Each size runs twice: ``watch.idle_connections: 1`` with one watched
mailbox per account (INBOX), and ``idle_connections: 3`` with three (INBOX,
Sent, Work; the fake upstream has no NOTIFY, so each is IDLEd on its own
connection and new mail goes to a random one of them).

    python bench/watchers.py                 # 1,000 accounts (a few minutes)
    python bench/watchers.py --large         # also 10,000 accounts
    python bench/watchers.py --aioimaplib    # also: plain aioimaplib's per-connection RSS, for comparison

Targets: <= 20 KB per watched account at 10,000 accounts (idle_connections: 1),
p99 <= 10 ms at 200 events/s, CPU while quiet ~ 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pushproxy.config import Config, StoreConfig, UpstreamConfig, WatchConfig  # noqa: E402
from pushproxy.events import MailEvent, NewMail  # noqa: E402
from pushproxy.extensions.manager import ExtensionManager  # noqa: E402
from pushproxy.extensions.xapplepush.store import ApnsDevice, ApnsQueries  # noqa: E402
from pushproxy.store import SqliteStore, Vault  # noqa: E402
from pushproxy.store.sqlite import MEMORY  # noqa: E402
from pushproxy.watch import Supervisor  # noqa: E402
from pushproxy.watch.credentials import MasterCredentials  # noqa: E402
from tests.support.fake_upstream import FakeUpstreamProcess  # noqa: E402

# =============================================================================== measurements


def raise_nofile_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def wait_for(pred: Any, timeout: float, progress: Any = None) -> bool:
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + 5
    while not pred():
        if time.monotonic() > deadline:
            return False
        if progress is not None and time.monotonic() > next_report:
            print(f"  ... {progress()}", file=sys.stderr, flush=True)
            next_report += 5
        await asyncio.sleep(0.05)
    return True


async def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    upstream = FakeUpstreamProcess("none")
    store = SqliteStore(Path(MEMORY), Vault.generate())
    await store.open()
    users = [f"user{i:05d}" for i in range(n)]
    mailboxes = ["INBOX", "Sent", "Work"][: args.idle_connections]
    for i, user in enumerate(users):
        await store.queries(ApnsQueries).upsert_device(ApnsDevice(user, "aps", f"{i:064x}", mailboxes=mailboxes))
    config = Config(
        upstream=UpstreamConfig(host="127.0.0.1", port=upstream.port, security="none", connect_timeout=30),
        store=StoreConfig(url="sqlite:///:memory:"),
        watch=WatchConfig(
            credentials="master",
            master_user="bench",
            master_password="pw",
            connect_rate=args.connect_rate,
            command_timeout=30,
            backoff_min=1,
            backoff_max=10,
            idle_connections=args.idle_connections,
        ),
    )
    received: list[tuple[str, str, int, float]] = []

    class Received:
        """In the push pipeline's place: when each new message was submitted."""

        def submit(self, event: MailEvent) -> None:
            now = time.monotonic()
            if isinstance(event, NewMail):
                for uid in event.uids:
                    received.append((event.account, event.mailbox, uid, now))

    gc.collect()
    rss0 = rss_bytes()
    watching = ExtensionManager.every(config, store)
    sup = Supervisor(
        config,
        store,
        Received(),
        credentials=MasterCredentials("bench", "pw"),
        watching=watching,  # type: ignore[arg-type]
    )
    t0 = time.monotonic()
    await sup.start()
    start_s = time.monotonic() - t0
    # "idle": every mailbox reported by an IDLE connection (the extra ones included)
    ok = await wait_for(
        lambda: sup.status()["idle"] == n, timeout=max(60.0, 3 * n / args.connect_rate), progress=sup.status
    )
    ramp = time.monotonic() - t0
    await asyncio.sleep(1.0)
    gc.collect()
    rss1 = rss_bytes()

    cpu0, w0 = cpu_seconds(), time.monotonic()
    await asyncio.sleep(args.quiet)
    quiet_cpu = (cpu_seconds() - cpu0) / (time.monotonic() - w0)

    count = int(args.rate * args.seconds)
    cpu1, w1 = cpu_seconds(), time.monotonic()
    sent = await asyncio.to_thread(upstream.fire, users, mailboxes, count, args.rate)
    await wait_for(lambda: len(received) >= count, timeout=10)
    busy_cpu = (cpu_seconds() - cpu1) / (time.monotonic() - w1)
    emitted = {(a, b, u): t for a, b, u, t in received}
    latencies = [emitted[(a, b, u)] - t for a, b, u, t in sent if (a, b, u) in emitted]
    duplicates = len(received) - len(emitted)

    await sup.close()
    await store.close()
    upstream.close()
    return {
        "accounts": n,
        "idle_connections": args.idle_connections,
        "all_idle": ok,
        "ramp_s": ramp,
        "start_s": start_s,
        "rss_per_account_kb": (rss1 - rss0) / n / 1024,
        "rss_before_mb": rss0 / 2**20,
        "rss_after_mb": rss1 / 2**20,
        "quiet_cpu_pct": quiet_cpu * 100,
        "busy_cpu_pct": busy_cpu * 100,
        "events": count,
        "delivered": len(latencies),
        "duplicates": duplicates,
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
    }


async def run_aioimaplib(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """The same idle connections made with aioimaplib (login, SELECT, IDLE), for comparison."""
    import aioimaplib

    upstream = FakeUpstreamProcess("none")
    gc.collect()
    rss0 = rss_bytes()
    clients: list[Any] = []
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with sem:
            c = aioimaplib.IMAP4(host="127.0.0.1", port=upstream.port, timeout=30)
            await c.wait_hello_from_server()
            await c.login(f"user{i:05d}", "pw")
            await c.select("INBOX")
            await c.idle_start(timeout=1500)
            clients.append(c)

    await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.sleep(1.0)
    gc.collect()
    rss1 = rss_bytes()
    for c in clients:
        with contextlib.suppress(Exception):
            c.idle_done()
            c.protocol.transport.close()
    upstream.close()
    return {"accounts": n, "rss_per_account_kb": (rss1 - rss0) / n / 1024}


def report(r: dict[str, Any]) -> None:
    print(
        f"\n== {r['accounts']:,} watched accounts, idle_connections: {r['idle_connections']} "
        f"({r['idle_connections']} mailbox(es) each; fake upstream in a child process, plain TCP) =="
    )
    print(
        f"  all idle:            {r['all_idle']}  (ramp-up {r['ramp_s']:.1f} s, of which "
        f"{r['start_s']:.1f} s in Supervisor.start() reading the store)"
    )
    print(
        f"  RSS per account:     {r['rss_per_account_kb']:.1f} KB   "
        f"(process {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB)   target <= 20 KB (idle_connections: 1)"
    )
    print(f"  CPU while quiet:     {r['quiet_cpu_pct']:.2f} % of one core")
    print(f"  CPU at the event rate: {r['busy_cpu_pct']:.1f} % of one core")
    print(
        f"  EXISTS -> submit:    p50 {r['p50_ms']:.1f} ms   p99 {r['p99_ms']:.1f} ms   max {r['max_ms']:.1f} ms   "
        f"({r['delivered']}/{r['events']} events, {r['duplicates']} duplicates)   target p99 <= 10 ms"
    )


def measure_in_child(kind: str, n: int, args: argparse.Namespace, idle_connections: int = 1) -> dict[str, Any]:
    """Each measurement in a fresh process: memory freed by an earlier run would hide RSS growth."""
    argv = [sys.executable, __file__, "--measure", kind, "--accounts", str(n), "--rate", str(args.rate)]
    argv += ["--idle-connections", str(idle_connections)]
    argv += ["--seconds", str(args.seconds), "--quiet", str(args.quiet), "--connect-rate", str(args.connect_rate)]
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


async def measure(kind: str, args: argparse.Namespace) -> None:
    raise_nofile_limit()
    result = await (run_size(args.accounts, args) if kind == "watchers" else run_aioimaplib(args.accounts, args))
    print(json.dumps(result), flush=True)


def main_all(args: argparse.Namespace) -> None:
    sizes = [args.accounts] + ([10_000] if args.large else [])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.rate:.0f} events/s for {args.seconds:.0f} s")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for n in sizes:
        for idle_connections in (1, 3):
            # One socket per connection in each process: stay under the file descriptor limit.
            fitting = min(n, (hard - 1000) // idle_connections)
            if fitting < n:
                print(f"\n(idle_connections {idle_connections}: {fitting:,} accounts, not {n:,}: RLIMIT_NOFILE {hard})")
            report(measure_in_child("watchers", fitting, args, idle_connections))
    if args.aioimaplib:
        r = measure_in_child("aioimaplib", args.accounts, args)
        print(
            f"\n== aioimaplib 2.0.3 for comparison: {r['accounts']:,} idle connections (login, SELECT, IDLE): "
            f"{r['rss_per_account_kb']:.1f} KB each =="
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--large", action="store_true", help="also run 10,000 accounts")
    parser.add_argument("--rate", type=float, default=200.0, help="new mail events per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the event phase")
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds of the quiet CPU measurement")
    parser.add_argument("--connect-rate", type=float, default=1000.0, help="watch.connect_rate for the ramp-up")
    parser.add_argument("--aioimaplib", action="store_true", help="also measure aioimaplib's per-connection RSS")
    parser.add_argument("--idle-connections", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["watchers", "aioimaplib"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        asyncio.run(measure(args.measure, args))
    else:
        main_all(args)


if __name__ == "__main__":
    main()
