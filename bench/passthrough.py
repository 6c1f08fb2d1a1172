"""Passthrough cost of pushproxy: direct vs raw byte relays vs the proxy, measured in one run.

Not a test: prints figures.  A real Dovecot serves a ~50 MB mailbox; the same
client workloads run against every target, interleaved round by round so that
machine noise hits all of them alike:

- ``direct``: the client talks to Dovecot;
- ``relay``: Twisted's portforward on its default (epoll) reactor, the floor any
  Python proxy is compared with; ``relay-aio`` and ``relay-uv``: the same relay
  on Twisted's asyncio reactor over the standard loop and over uvloop;
- ``proxy`` / ``proxy-uv``: pushproxy on the standard asyncio loop / on uvloop.

With ``--tls`` both legs are TLS: the client speaks implicit TLS to the middle
process, which speaks implicit TLS to Dovecot (the relays become Twisted TLS
relays, the proxy uses ``upstream.security: tls``).

Workloads: a bulk ``FETCH 1:* BODY.PEEK[]`` of the whole mailbox, and a run of
small commands (alternating NOOP and UID FETCH FLAGS, each awaited).  For each
the script reports the median wall time and the median **CPU seconds of the
middle process** (``/proc/<pid>/task/*/schedstat``, nanoseconds, all threads; utime +
stime from ``/proc/<pid>/stat`` where schedstats are missing), read before and
after the workload, and the ratios proxy/relay.  Targets (CPU): bulk <= 1.10, small
<= 1.25 against ``relay``.

Usage: python bench/passthrough.py [--messages 50] [--size 1000000] [--commands 1000] [--rounds 8] [--tls]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.dovecot import Dovecot, make_message, new_base_dir  # noqa: E402
from tests.support.proxy import ProxyProcess, free_port  # noqa: E402

RELAY = """
import sys
flavour, tls = sys.argv[3], sys.argv[4] == "tls"
if flavour == "asyncio":
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
elif flavour == "uvloop":
    import asyncio, uvloop
    from twisted.internet import asyncioreactor
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
from twisted.internet import reactor
from twisted.protocols import portforward
factory = portforward.ProxyFactory("127.0.0.1", int(sys.argv[2]))
if tls:
    from twisted.internet import ssl
    cert, key = sys.argv[5], sys.argv[6]
    server_ctx = ssl.DefaultOpenSSLContextFactory(key, cert)
    client_ctx = ssl.ClientContextFactory()

    class TLSClient(portforward.ProxyClientFactory):
        pass

    class TLSServer(portforward.ProxyServer):
        def connectionMade(self):
            self.transport.pauseProducing()
            client = self.clientProtocolFactory()
            client.setServer(self)
            reactor.connectSSL(self.factory.host, self.factory.port, client, client_ctx)

    factory.protocol = TLSServer
    reactor.listenSSL(int(sys.argv[1]), factory, server_ctx, interface="127.0.0.1")
else:
    reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
print("ready", flush=True)
reactor.run()
"""

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads, from /proc.

    ``/proc/<pid>/task/*/schedstat`` counts nanoseconds; ``/proc/<pid>/stat``'s
    utime + stime only clock ticks (10 ms), too coarse for one workload, so it is
    the fallback for kernels without schedstats.
    """
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of stat(5)


class Client:
    def __init__(self, port: int, tls: ssl.SSLContext | None) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
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


def bulk(c: Client, _: int) -> None:
    c.cmd(b"FETCH 1:* BODY.PEEK[]")


def small(c: Client, commands: int) -> None:
    for i in range(commands):
        c.cmd(b"NOOP" if i % 2 else b"UID FETCH 1 (FLAGS)")


def measure(
    port: int, pid: int | None, tls: ssl.SSLContext | None, work: Callable[[Client, int], None], n: int
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the middle process) of one workload on a logged-in connection."""
    c = Client(port, tls)
    c.cmd(b"LOGIN alice alicepw")
    c.cmd(b"SELECT INBOX")
    cpu0 = cpu_seconds(pid) if pid else 0.0
    start = time.perf_counter()
    work(c, n)
    wall = time.perf_counter() - start
    cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
    c.close()
    return wall, cpu


def start_relay(flavour: str, upstream: int, dc: Dovecot, tls: bool) -> tuple[int, subprocess.Popen[str]]:
    port = free_port()
    args = [sys.executable, "-c", RELAY, str(port), str(upstream), flavour, "tls" if tls else "plain"]
    if tls:
        args += [str(dc.cert_file), str(dc.key_file)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return port, proc


def start_proxy(dc: Dovecot, loop: str, tls: bool) -> ProxyProcess:
    listen: dict[str, object] = {}
    if tls:
        listen = {"imap": "", "imaps": "auto", "tls_cert_file": str(dc.cert_file), "tls_key_file": str(dc.key_file)}
    upstream = {
        "host": "127.0.0.1",
        "port": dc.imaps_port if tls else dc.imap_port,
        "security": "tls" if tls else "none",
        "ca_file": str(dc.ca_file),
    }
    return ProxyProcess(
        Path(tempfile.mkdtemp(prefix="pp-bench-")),
        {
            "listen": listen,
            "upstream": upstream,
            "runtime": {"event_loop": loop},
            "log": {"level": "info"},
            "admin": {"listen": ""},
        },
    ).start()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=50)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--commands", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tls", action="store_true", help="TLS on both legs")
    args = ap.parse_args()

    with Dovecot(new_base_dir(), tls=True) as dc:
        dc.start()
        print(f"delivering {args.messages} x {args.size // 1000} KB ...", flush=True)
        for i in range(args.messages):
            dc.deliver("alice", make_message(f"bulk {i}", size=args.size))
        client_tls = ssl.create_default_context(cafile=str(dc.ca_file)) if args.tls else None
        upstream = dc.imaps_port if args.tls else dc.imap_port
        relays = {
            name: start_relay(flavour, upstream, dc, args.tls)
            for name, flavour in (("relay", "epoll"), ("relay-aio", "asyncio"), ("relay-uv", "uvloop"))
        }
        proxies = {"proxy": start_proxy(dc, "asyncio", args.tls), "proxy-uv": start_proxy(dc, "uvloop", args.tls)}
        try:
            targets: dict[str, tuple[int, int | None]] = {"direct": (upstream, None)}
            for name, (port, proc) in relays.items():
                targets[name] = (port, proc.pid)
            for name, proxy in proxies.items():
                assert proxy.proc is not None
                targets[name] = (proxy.imaps_port if args.tls else proxy.port, proxy.proc.pid)
            runs: dict[str, dict[str, list[tuple[float, float]]]] = {"bulk": {}, "small": {}}
            for _ in range(args.rounds):
                for name, (port, pid) in targets.items():
                    runs["bulk"].setdefault(name, []).append(measure(port, pid, client_tls, bulk, 0))
                    runs["small"].setdefault(name, []).append(measure(port, pid, client_tls, small, args.commands))
        finally:
            for proxy in proxies.values():
                proxy.stop()
                shutil.rmtree(proxy.base_dir, ignore_errors=True)
            for _, proc in relays.values():
                proc.terminate()
                proc.wait()

    def med(kind: str, name: str, i: int) -> float:
        return statistics.median(r[i] for r in runs[kind][name])

    mb = args.messages * args.size / 1e6
    legs = "TLS on both legs" if args.tls else "plain TCP"
    print(f"\n{legs}; medians of {args.rounds} interleaved rounds; CPU = the middle process (all threads, /proc)")
    print(f"{'target':10} {'bulk wall':>10} {'bulk CPU':>9} {'small wall':>11} {'small CPU':>10}")
    for name in targets:
        print(
            f"{name:10} {med('bulk', name, 0) * 1000:8.0f}ms {med('bulk', name, 1) * 1000:7.0f}ms "
            f"{med('small', name, 0) * 1000:9.0f}ms {med('small', name, 1) * 1000:8.0f}ms"
        )
    print(f"(bulk: FETCH of {mb:.0f} MB; small: {args.commands} awaited commands)")
    print("\nCPU ratios against the raw relay on Twisted's default reactor (targets: bulk <= 1.10, small <= 1.25):")
    for name in ("relay-aio", "relay-uv", "proxy", "proxy-uv"):
        b = med("bulk", name, 1) / med("bulk", "relay", 1)
        s = med("small", name, 1) / med("small", "relay", 1)
        print(f"  {name:10} bulk {b:5.2f}   small {s:5.2f}")
    print("wall ratios proxy/relay:")
    for name in ("proxy", "proxy-uv"):
        b = med("bulk", name, 0) / med("bulk", "relay", 0)
        s = med("small", name, 0) / med("small", "relay", 0)
        print(f"  {name:10} bulk {b:5.2f}   small {s:5.2f}")


if __name__ == "__main__":
    main()
