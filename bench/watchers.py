"""Benchmark (figures only, no assertions): the cost of upstream watchers.

Runs the watcher Supervisor in this process against a lightweight fake IMAP
upstream in a child process (LOGIN / CAPABILITY / EXAMINE / STATUS / UID FETCH
/ IDLE, answering minimally and sending ``* n EXISTS`` to idling connections
on demand), so that the two do not share one GIL or one RSS.  For each size:

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
import random
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

CAPS = b"IMAP4rev1 IDLE LITERAL+"
ENVELOPE = (
    b'("Mon, 1 Jan 2024 10:00:00 +0000" "bench message %d" (("Bench" NIL "bench" "example.org")) '
    b'(("Bench" NIL "bench" "example.org")) (("Bench" NIL "bench" "example.org")) '
    b'((NIL NIL "user" "example.org")) NIL NIL NIL "<%d@bench.example>")'
)


# =============================================================================== fake upstream


class Box:
    __slots__ = ("uids", "uidvalidity")

    def __init__(self) -> None:
        self.uidvalidity = 1
        self.uids: list[int] = []

    @property
    def uidnext(self) -> int:
        return (self.uids[-1] + 1) if self.uids else 1


class FakeUpstream:
    def __init__(self) -> None:
        self.boxes: dict[tuple[str, str], Box] = {}
        self.idlers: dict[tuple[str, str], set[FakeConn]] = {}
        self.sent: list[tuple[str, str, int, float]] = []

    def box(self, user: str, mailbox: str = "INBOX") -> Box:
        b = self.boxes.get((user, mailbox))
        if b is None:
            b = self.boxes[(user, mailbox)] = Box()
        return b

    def deliver(self, user: str, mailbox: str) -> None:
        box = self.box(user, mailbox)
        uid = box.uidnext
        box.uids.append(uid)
        for conn in list(self.idlers.get((user, mailbox), ())):
            conn.announce()
        self.sent.append((user, mailbox, uid, time.monotonic()))


class FakeConn(asyncio.Protocol):
    """One client connection of the fake server (state machine over lines; no literals needed)."""

    def __init__(self, up: FakeUpstream) -> None:
        self.up = up
        self.buf = b""
        self.user: str | None = None
        self.mailbox = "INBOX"
        self.idle_tag: bytes | None = None
        self.announced = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"* OK [CAPABILITY " + CAPS + b"] fake upstream ready\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_idle()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def announce(self) -> None:
        assert self.user is not None
        n = len(self.up.box(self.user, self.mailbox).uids)
        if n > self.announced:
            self.announced = n
            self.write(b"* %d EXISTS\r\n" % n)

    def _stop_idle(self) -> None:
        if self.user is not None:
            self.up.idlers.get((self.user, self.mailbox), set()).discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n" in self.buf:
            line, self.buf = self.buf.split(b"\r\n", 1)
            self.handle(line)

    def handle(self, line: bytes) -> None:
        if self.idle_tag is not None:
            if line.upper() == b"DONE":
                self.write(self.idle_tag + b" OK Idle completed.\r\n")
                self.idle_tag = None
                self._stop_idle()
            return
        parts = line.split(b" ")
        if len(parts) < 2:
            self.write(b"* BAD what?\r\n")
            return
        tag, cmd, args = parts[0], parts[1].upper(), parts[2:]
        if cmd == b"UID" and args:
            cmd, args = b"UID " + args[0].upper(), args[1:]
        if cmd == b"CAPABILITY":
            self.write(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n")
        elif cmd == b"LOGIN":
            login = args[0].strip(b'"').decode()
            self.user = login.split("*", 1)[0]
            self.write(tag + b" OK [CAPABILITY " + CAPS + b"] Logged in\r\n")
        elif cmd in (b"SELECT", b"EXAMINE"):
            assert self.user is not None
            self.mailbox = args[0].strip(b'"').decode()
            box = self.up.box(self.user, self.mailbox)
            self.announced = len(box.uids)
            self.write(
                b"* FLAGS (\\Seen)\r\n* %d EXISTS\r\n* OK [UIDVALIDITY %d] ok\r\n* OK [UIDNEXT %d] ok\r\n"
                % (len(box.uids), box.uidvalidity, box.uidnext)
                + tag
                + b" OK [READ-ONLY] done\r\n"
            )
        elif cmd == b"STATUS":
            assert self.user is not None
            name = args[0].strip(b'"')
            box = self.up.box(self.user, name.decode())
            self.write(
                b'* STATUS "%s" (MESSAGES %d UIDNEXT %d UIDVALIDITY %d)\r\n' % (name, len(box.uids), box.uidnext, 1)
                + tag
                + b" OK done\r\n"
            )
        elif cmd == b"UID FETCH":
            assert self.user is not None
            box = self.up.box(self.user, self.mailbox)
            start = int(args[0].split(b":")[0])
            chosen = [u for u in box.uids if u >= start] or box.uids[-1:]
            out = []
            for uid in chosen:
                seq = box.uids.index(uid) + 1
                out.append(b"* %d FETCH (UID %d FLAGS () ENVELOPE " % (seq, uid) + ENVELOPE % (uid, uid) + b")\r\n")
            self.write(b"".join(out) + tag + b" OK Fetch completed.\r\n")
        elif cmd == b"IDLE":
            assert self.user is not None
            self.idle_tag = tag
            self.up.idlers.setdefault((self.user, self.mailbox), set()).add(self)
            self.write(b"+ idling\r\n")
            self.announce()
        elif cmd == b"NOOP" or cmd == b"ENABLE":
            if self.user is not None:
                self.announce()
            self.write(tag + b" OK done\r\n")
        elif cmd == b"LOGOUT":
            self.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
            if self.transport is not None:
                self.transport.close()
        else:
            self.write(tag + b" BAD unknown command\r\n")


async def serve() -> None:
    """Child process: print the port, then obey commands on stdin."""
    raise_nofile_limit()
    up = FakeUpstream()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeConn(up), "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    reader = asyncio.StreamReader(limit=2**26)  # the "fire" command lists every user
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["op"] == "fire":
            up.sent.clear()
            users: list[str] = cmd["users"]
            mailboxes: list[str] = cmd["mailboxes"]
            interval = 1.0 / cmd["rate"]
            start = time.monotonic()
            for i in range(cmd["count"]):
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                up.deliver(random.choice(users), random.choice(mailboxes))
            print(json.dumps({"sent": up.sent}), flush=True)
        elif cmd["op"] == "quit":
            break
    server.close()


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


class Child:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]

    async def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = await asyncio.to_thread(self.proc.stdout.readline)
        return dict(json.loads(line))

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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
    child = Child()
    store = SqliteStore(Path(MEMORY), Vault.generate())
    await store.open()
    users = [f"user{i:05d}" for i in range(n)]
    mailboxes = ["INBOX", "Sent", "Work"][: args.idle_connections]
    for i, user in enumerate(users):
        await store.queries(ApnsQueries).upsert_device(ApnsDevice(user, "aps", f"{i:064x}", mailboxes=mailboxes))
    config = Config(
        upstream=UpstreamConfig(host="127.0.0.1", port=child.port, security="none", connect_timeout=30),
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
    result = await child.call(op="fire", users=users, mailboxes=mailboxes, count=count, rate=args.rate)
    await wait_for(lambda: len(received) >= count, timeout=10)
    busy_cpu = (cpu_seconds() - cpu1) / (time.monotonic() - w1)
    emitted = {(a, b, u): t for a, b, u, t in received}
    latencies = [emitted[(a, b, u)] - t for a, b, u, t in result["sent"] if (a, b, u) in emitted]
    duplicates = len(received) - len(emitted)

    await sup.close()
    await store.close()
    child.close()
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

    child = Child()
    gc.collect()
    rss0 = rss_bytes()
    clients: list[Any] = []
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with sem:
            c = aioimaplib.IMAP4(host="127.0.0.1", port=child.port, timeout=30)
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
    child.close()
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
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["watchers", "aioimaplib"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
    elif args.measure:
        asyncio.run(measure(args.measure, args))
    else:
        main_all(args)


if __name__ == "__main__":
    main()
