"""Passthrough cost of pushproxy: direct vs a raw byte relay vs the proxy, measured in one run.

Not a test: prints figures.  A real Dovecot serves a ~50 MB mailbox; the same
client workload runs three ways:

- direct to Dovecot;
- through a minimal raw byte relay (Twisted's portforward), the floor for any proxy;
- through pushproxy (upstream security "none", like the relay).

Workloads: a bulk ``FETCH 1:* BODY.PEEK[]`` of the whole mailbox, and a burst of
2,000 small commands (alternating NOOP and UID FETCH FLAGS, each awaited).
Each is run several times; the median is reported, and the ratios
proxy/direct and proxy/relay.  Targets: bulk proxy/relay <= 1.10,
small-command proxy/relay <= 1.25.

Usage: python bench/passthrough.py [--messages 50] [--size 1000000] [--commands 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.dovecot import Dovecot, make_message, new_base_dir  # noqa: E402
from tests.support.proxy import ProxyProcess, free_port  # noqa: E402

RELAY = """
import sys
if len(sys.argv) > 3 and sys.argv[3] == "asyncio":
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
from twisted.internet import reactor
from twisted.protocols import portforward
reactor.listenTCP(int(sys.argv[1]), portforward.ProxyFactory("127.0.0.1", int(sys.argv[2])), interface="127.0.0.1")
print("ready", flush=True)
reactor.run()
"""


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.n = 0
        self._until(b"\r\n")

    def _until(self, needle: bytes) -> None:
        while True:
            idx = self.buf.find(needle)
            if idx >= 0:
                del self.buf[: idx + len(needle)]
                return
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("connection closed")
            # Keep only a tail: the tagged line is all we look for.
            self.buf += chunk
            if len(self.buf) > 1 << 16:
                del self.buf[: -(1 << 10)]

    def cmd(self, text: bytes) -> None:
        self.n += 1
        tag = b"b%d" % self.n
        self.sock.sendall(tag + b" " + text + b"\r\n")
        self.buf[:0] = b"\r\n"  # so that a tagged line at the very start matches too
        self._until(b"\r\n" + tag + b" OK")
        self._until(b"\r\n")

    def close(self) -> None:
        self.sock.close()


def bulk(port: int) -> float:
    c = Client(port)
    c.cmd(b"LOGIN alice alicepw")
    c.cmd(b"SELECT INBOX")
    start = time.perf_counter()
    c.cmd(b"FETCH 1:* BODY.PEEK[]")
    elapsed = time.perf_counter() - start
    c.close()
    return elapsed


def small(port: int, commands: int) -> float:
    c = Client(port)
    c.cmd(b"LOGIN alice alicepw")
    c.cmd(b"SELECT INBOX")
    start = time.perf_counter()
    for i in range(commands):
        c.cmd(b"NOOP" if i % 2 else b"UID FETCH 1 (FLAGS)")
    elapsed = time.perf_counter() - start
    c.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=50)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--commands", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    with Dovecot(new_base_dir(), tls=False) as dc:
        dc.start()
        print(f"delivering {args.messages} x {args.size // 1000} KB ...", flush=True)
        for i in range(args.messages):
            dc.deliver("alice", make_message(f"bulk {i}", size=args.size))
        relays = {}
        for flavour in ("epoll", "asyncio"):
            port = free_port()
            relays[flavour] = (
                port,
                subprocess.Popen(
                    [sys.executable, "-c", RELAY, str(port), str(dc.imap_port), flavour],
                    stdout=subprocess.PIPE,
                    text=True,
                ),
            )
            out = relays[flavour][1].stdout
            assert out is not None and out.readline().strip() == "ready"
        proxy = ProxyProcess(
            Path(tempfile.mkdtemp(prefix="pp-bench-")),
            {
                "upstream": {"host": "127.0.0.1", "port": dc.imap_port, "security": "none"},
                "log": {"level": "info"},
                "admin": {"listen": ""},
            },
        ).start()
        try:
            targets = {
                "direct": dc.imap_port,
                "relay": relays["epoll"][0],
                "relay-aio": relays["asyncio"][0],
                "proxy": proxy.port,
            }
            results: dict[str, dict[str, float]] = {"bulk": {}, "small": {}}
            bulk_runs: dict[str, list[float]] = {k: [] for k in targets}
            small_runs: dict[str, list[float]] = {k: [] for k in targets}
            for _ in range(args.rounds):  # interleave so that machine noise hits all three alike
                for name, port in targets.items():
                    bulk_runs[name].append(bulk(port))
                    small_runs[name].append(small(port, args.commands))
            for name in targets:
                results["bulk"][name] = statistics.median(bulk_runs[name])
                results["small"][name] = statistics.median(small_runs[name])
        finally:
            proxy.stop()
            for _, proc in relays.values():
                proc.terminate()
                proc.wait()

    mb = args.messages * args.size / 1e6
    print(f"\nbulk FETCH of {mb:.0f} MB (median of {args.rounds}):")
    for name, t in results["bulk"].items():
        print(f"  {name:9} {t * 1000:8.1f} ms  {mb / t:8.1f} MB/s")
    print(f"{args.commands} small commands (median of {args.rounds}):")
    for name, t in results["small"].items():
        print(f"  {name:9} {t * 1000:8.1f} ms  {t / args.commands * 1e6:8.1f} us/command")
    b, s = results["bulk"], results["small"]
    print("\nratios:")
    print(
        f"  bulk   proxy/direct = {b['proxy'] / b['direct']:.2f}   proxy/relay = {b['proxy'] / b['relay']:.2f}"
        "   (target proxy/relay <= 1.10)"
    )
    print(
        f"  small  proxy/direct = {s['proxy'] / s['direct']:.2f}   proxy/relay = {s['proxy'] / s['relay']:.2f}"
        "   (target proxy/relay <= 1.25)"
    )
    print("  (relay = Twisted portforward on its default epoll reactor; relay-aio = the same relay on the")
    print("   asyncio reactor pushproxy runs on, which isolates the proxy's own work from the reactor's)")
    print(
        f"  bulk   proxy/relay-aio = {b['proxy'] / b['relay-aio']:.2f}   "
        f"small  proxy/relay-aio = {s['proxy'] / s['relay-aio']:.2f}"
    )


if __name__ == "__main__":
    main()
