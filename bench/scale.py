"""Benchmark (figures only, no assertions): one node at scale, measured as an admin sees it.

The real ``pushproxy serve`` process; a fake upstream in another process
(tests/support/fake_upstream.py: plain, STARTTLS or implicit TLS); clients in
a third.  Two loads:

- **watchers**: N accounts with one APNs registration of INBOX each (seeded
  into the proxy's SQLite store), watched with master credentials.  Printed:
  RSS per watcher (over a proxy with no account, same loop and upstream leg),
  idle CPU (% of one core over a quiet window), time from start until every
  watcher idles, peak logins per one-second window and peak logins in flight
  as the upstream saw them, watchers brought up per second of the proxy's
  CPU (its CPU until all were up, over what a proxy with no account took to
  start: one core's bring-up rate, whatever else shares the machine), open
  file descriptors, the longest loop stall in the quiet window
  (``pushproxy_loop_lag_seconds``, bucket bound) and error
  lines in the log.
- **idle sessions**: M clients, each LOGIN, SELECT INBOX, IDLE, then quiet;
  TLS to the client, TLS or plain upstream.  Printed: RSS per session, idle
  CPU, descriptors.  In the same run the same load goes through **nginx's mail
  proxy** (Debian ``nginx`` + ``libnginx-mod-mail``; TLS toward the clients,
  plain upstream -- it cannot speak TLS upstream -- with a tiny ``auth_http``
  responder here), RSS of its one worker per session: the C anchor.

    python bench/scale.py                       # 1k and 10k watchers (TLS, STARTTLS, plain on uvloop,
                                                #   TLS on the std loop), 1k and 5k sessions, nginx
    python bench/scale.py --large               # also 50k watchers (TLS, uvloop)
    python bench/scale.py --watchers 1000 --sessions 1000 --legs tls --loops uvloop   # a quick look

Figures on a shared machine are noisy; the memory figures much less than the
CPU and time ones.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.server
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import scale_setup  # noqa: E402
from tests.support.certs import ApnsTestCerts, make_apns_certs  # noqa: E402
from tests.support.children import end_child  # noqa: E402
from tests.support.fake_upstream import FakeUpstreamProcess, per_second  # noqa: E402
from tests.support.proxy import ProxyProcess, free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# =============================================================================== process figures


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def lag_buckets(proxy: ProxyProcess) -> dict[float, float]:
    _, text = proxy.admin_get("/metrics")
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("pushproxy_loop_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def longest_stall(before: dict[float, float], after: dict[float, float]) -> str:
    """The bucket bound of the longest lag sampled between two scrapes (``< 25 ms``)."""
    bounds = sorted(after)
    total = after[bounds[-1]] - before.get(bounds[-1], 0)
    for bound in bounds:
        if after[bound] - before.get(bound, 0) >= total:
            return f"< {bound * 1000:.0f} ms" if bound != float("inf") else "> 5 s"
    return "?"


def wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.25)


def error_lines(proxy: ProxyProcess) -> int:
    return sum(1 for line in proxy.log_text().splitlines() if " ERROR " in line or line.startswith("Traceback"))


@contextlib.contextmanager
def upstream_and_dir(
    leg: str, certs: ApnsTestCerts, prefix: str, loop: str = "asyncio"
) -> Iterator[tuple[FakeUpstreamProcess, Path]]:
    """A fake upstream speaking ``leg`` and a scratch directory, both gone at the end of the run."""
    upstream = FakeUpstreamProcess(leg, cert=certs.server_cert, key=certs.server_key, loop=loop)
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield upstream, base
    finally:
        upstream.close()
        shutil.rmtree(base, ignore_errors=True)


def stopped(proxy: ProxyProcess, result: dict[str, Any]) -> dict[str, Any]:
    """The run's figures, with the error lines the proxy logged until it stopped."""
    proxy.stop()
    result["errors"] = error_lines(proxy)
    return result


# =============================================================================== watchers


def proxy_for(base: Path, upstream: FakeUpstreamProcess, certs: ApnsTestCerts, n: int, args: Any, loop: str) -> Any:
    scale_setup.seed(base, n)
    config = scale_setup.watched_config(base, upstream, certs, connect_rate=args.connect_rate, backoff_max=30)
    config["runtime"] = {"event_loop": loop}
    config["session"] = {"max_connections": 100}
    return ProxyProcess(base, config)


def run_watchers(n: int, leg: str, loop: str, certs: ApnsTestCerts, args: Any) -> dict[str, Any]:
    with upstream_and_dir(leg, certs, "pp-scale-", loop=upstream_loop(n)) as (upstream, base):
        empty = proxy_for(base / "empty", upstream, certs, 0, args, loop).start(60)
        assert empty.proc is not None
        time.sleep(2)
        rss0, cpu_empty = rss_kb(empty.proc.pid), cpu_s(empty.proc.pid)
        empty.stop()

        proxy = proxy_for(base / "full", upstream, certs, n, args, loop)
        start = time.monotonic()
        proxy.start(120)
        assert proxy.proc is not None
        pid = proxy.proc.pid
        wait(lambda: proxy.metric("pushproxy_watchers_up") >= n, 120 + n / 5, f"{n} watchers up")
        ramp = time.monotonic() - start
        ramp_cpu = cpu_s(pid) - cpu_empty  # the bring-up's CPU: over what an idle proxy took to start
        logins = [(t, k) for t, k in upstream.logins() if t >= start]
        time.sleep(3)  # let the last catch-ups and store writes settle
        lag0, cpu0, t0 = lag_buckets(proxy), cpu_s(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        cpu = (cpu_s(pid) - cpu0) / (time.monotonic() - t0)
        stall = longest_stall(lag0, lag_buckets(proxy))
        rss = rss_kb(pid)
        result = {
            "what": f"{n:,} watchers, {leg} upstream, {loop}",
            "kb_per": (rss - rss0) / n,
            "rss_mb": rss / 1024,
            "idle_cpu_pct": cpu * 100,
            "all_idle_s": ramp,
            "peak_logins_s": max(per_second(logins), default=0),
            "peak_in_flight": max((k for _, k in logins), default=0),
            "per_core_s": n / ramp_cpu if ramp_cpu > 0 else 0.0,
            "fds": fds(pid),
            "stall": stall,
            "resumed": upstream.stats()["resumed"],
        }
        return stopped(proxy, result)


# =============================================================================== --large: 50,000 watchers

LARGE = 50_000
LARGE_NOFILE = 131_072  # descriptors for the proxy and the fake upstream (each holds one per watcher)
LARGE_PORTS = "10000 65535"  # local ports: 55,536 connections to the one upstream address
_NETNS_MARK = "PUSHPROXY_SCALE_NETNS"
FD_MARGIN = 1000  # descriptors besides the watchers' (listeners, store, admin, the ramp's closing sockets)


def upstream_loop(n: int) -> str:
    """The fake upstream's loop: uvloop past 15,000 connections (the std loop's TLS holds 256 KiB each)."""
    return "uvloop" if n > 15_000 else "asyncio"


def large_size() -> int:
    """``--large``: 50,000 watchers, or as many as this machine's descriptors allow (said in one line).

    What an admin sets up for that many, done for this run only:

    - descriptors: each watcher is one in the proxy and one in the fake upstream; the soft limit is
      raised to the hard one, and the hard one too where the process may (root with CAP_SYS_RESOURCE);
      with less, the run takes the largest round size that fits and says so;
    - local ports: every watcher connects from the proxy's address to the one upstream address, so at
      most ``net.ipv4.ip_local_port_range`` of them (28,232 by default) can be open at once.  Past that
      the run re-executes itself in a private network namespace (``unshare --net``, loopback only)
      whose range is widened, so that the machine's own setting is untouched.
    """
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (LARGE_NOFILE, LARGE_NOFILE))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(LARGE, (hard - FD_MARGIN) // 1000 * 1000)
    if n < LARGE:
        print(
            f"# --large: the hard RLIMIT_NOFILE is {hard:,} and cannot be raised here: {n:,} watchers, not {LARGE:,}",
            flush=True,
        )
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if n > high - low + 1 - FD_MARGIN and os.environ.get(_NETNS_MARK) != "1":
        unshare = shutil.which("unshare")
        if os.geteuid() != 0 or unshare is None:
            print(f"# --large: not root or no unshare: at most {high - low + 1:,} connections upstream", flush=True)
            return n
        prelude = f'ip link set lo up && echo "{LARGE_PORTS}" > /proc/sys/net/ipv4/ip_local_port_range && exec "$@"'
        os.environ[_NETNS_MARK] = "1"
        print(f"# --large: in a private network namespace, local ports {LARGE_PORTS}", flush=True)
        os.execv(unshare, [unshare, "--net", "sh", "-c", prelude, "sh", sys.executable, *sys.argv])
    return n


# =============================================================================== idle sessions

CLIENT = r"""
import asyncio, json, ssl, sys, resource
_s, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, count, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
held = []
async def one(i):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    await r.readline()
    steps = ((b"a LOGIN client%d pw\r\n" % i, b"a OK"), (b"b SELECT INBOX\r\n", b"b OK"), (b"c IDLE\r\n", b"+"))
    for line, end in steps:
        w.write(line)
        while not (await r.readline()).startswith(end):
            pass
    held.append(w)
async def main():
    sem = asyncio.Semaphore(50)
    async def gated(i):
        async with sem:
            await asyncio.wait_for(one(i), 60)
    results = await asyncio.gather(*(gated(i) for i in range(count)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    print(json.dumps({"ok": count - len(failed), "failed": len(failed), "why": repr(failed[:1])}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main())
"""


def clients(port: int, count: int, ca: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(port), str(count), str(ca)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def measure_sessions(pid: int, port: int, m: int, ca: Path, args: Any) -> dict[str, Any]:
    time.sleep(1)
    rss0, fds0 = rss_kb(pid), fds(pid)
    proc, ready = clients(port, m, ca)
    try:
        time.sleep(2)
        cpu0, t0 = cpu_s(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        cpu = (cpu_s(pid) - cpu0) / (time.monotonic() - t0)
        rss = rss_kb(pid)
        return {
            "kb_per": (rss - rss0) / max(1, ready["ok"]),
            "rss_mb": rss / 1024,
            "idle_cpu_pct": cpu * 100,
            "fds": fds(pid) - fds0,
            "failed": ready["failed"],
        }
    finally:
        end_child(proc, timeout=30)  # a newline ends the clients


def run_sessions(m: int, leg: str, loop: str, certs: ApnsTestCerts, args: Any) -> dict[str, Any]:
    with upstream_and_dir(leg, certs, "pp-scale-s-") as (upstream, base):
        config: dict[str, Any] = {
            "listen": {"imaps": "auto", "tls_cert_file": str(certs.server_cert), "tls_key_file": str(certs.server_key)},
            "upstream": {
                "host": "127.0.0.1",
                "port": upstream.port,
                "security": leg,
                "ca_file": str(certs.ca_cert),
                "server_name": "localhost",
            },
            "session": {"max_connections": m + 100, "max_connections_per_ip": m + 100},
            "runtime": {"event_loop": loop},
            "log": {"level": "info"},
        }
        proxy = ProxyProcess(base, config).start(60)
        assert proxy.proc is not None
        result = measure_sessions(proxy.proc.pid, proxy.imaps_port, m, certs.ca_cert, args)
        result["what"] = f"{m:,} idle sessions, pushproxy, TLS client / {leg} upstream, {loop}"
        return stopped(proxy, result)


class _Auth(http.server.BaseHTTPRequestHandler):
    upstream_port = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Auth-Status", "OK")
        self.send_header("Auth-Server", "127.0.0.1")
        self.send_header("Auth-Port", str(self.upstream_port))
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


NGINX_CONF = """
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections {conns}; }}
mail {{
    server_name localhost;
    auth_http 127.0.0.1:{auth}/auth;
    proxy on;
    imap_capabilities IMAP4rev1 IDLE;
    server {{
        listen 127.0.0.1:{port} ssl;
        protocol imap;
        ssl_certificate {cert};
        ssl_certificate_key {key};
    }}
}}
"""


def run_nginx(m: int, certs: ApnsTestCerts, args: Any) -> dict[str, Any] | str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    module = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
    if not Path(nginx).exists() or not module.exists():
        return "nginx anchor skipped: apt-get install nginx-core libnginx-mod-mail"
    upstream = FakeUpstreamProcess("none")
    _Auth.upstream_port = upstream.port
    auth = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Auth)
    threading.Thread(target=auth.serve_forever, daemon=True).start()
    base = Path(tempfile.mkdtemp(prefix="pp-scale-nginx-"))
    port = free_port()
    conf = base / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            base=base,
            auth=auth.server_address[1],
            port=port,
            cert=certs.server_cert,
            key=certs.server_key,
            nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            conns=2 * m + 100,
        )
    )
    master = subprocess.Popen([nginx, "-c", str(conf), "-p", str(base), "-g", "daemon off;"])
    try:
        wait(lambda: _worker(master.pid) is not None, 10, "nginx worker")
        worker = _worker(master.pid)
        assert worker is not None
        result = measure_sessions(worker, port, m, certs.ca_cert, args)
        result["what"] = f"{m:,} idle sessions, nginx mail proxy, TLS client / none upstream"
        result["errors"] = 0
        return result
    finally:
        master.send_signal(signal.SIGQUIT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            master.wait(10)
        if master.poll() is None:
            master.kill()
        auth.shutdown()
        upstream.close()
        shutil.rmtree(base, ignore_errors=True)


def _worker(master: int) -> int | None:
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


# =============================================================================== main


def row(r: dict[str, Any] | str) -> str:
    if isinstance(r, str):
        return f"| {r} |"
    cells = [
        r["what"],
        f"{r['kb_per']:.1f}",
        f"{r['rss_mb']:.0f}",
        f"{r['idle_cpu_pct']:.2f} %",
        f"{r['all_idle_s']:.1f} s" if "all_idle_s" in r else "",
        f"{r['peak_logins_s']} / {r['peak_in_flight']}" if "peak_logins_s" in r else "",
        f"{r['per_core_s']:.0f}" if "per_core_s" in r else "",
        str(r["fds"]),
        r.get("stall", ""),
        str(r.get("resumed", "")),
        str(r["errors"]) + (f" (+{r['failed']} failed)" if r.get("failed") else ""),
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| load | KB each | RSS MB | idle CPU | until all idle | peak logins/s / in flight | up per core-s | fds "
    "| longest stall (idle) | TLS resumed | error lines |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", default="1000,10000", help="watched accounts, comma separated")
    parser.add_argument("--sessions", default="1000,5000", help="idle sessions, comma separated ('' for none)")
    parser.add_argument("--legs", default="tls,starttls,none", help="upstream legs for the watchers")
    parser.add_argument("--loops", default="uvloop,asyncio", help="event loops (the std loop: TLS only)")
    parser.add_argument("--large", action="store_true", help="also 50,000 watchers (TLS, uvloop)")
    parser.add_argument("--connect-rate", type=float, default=2000.0, help="watch.connect_rate")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="the quiet window measured")
    parser.add_argument("--no-nginx", action="store_true")
    args = parser.parse_args()
    large = large_size() if args.large else 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    certs_dir = Path(tempfile.mkdtemp(prefix="pp-scale-certs-"))
    atexit.register(shutil.rmtree, certs_dir, True)  # each run left its test PKI in /tmp
    certs = make_apns_certs(certs_dir)
    loops = [x for x in args.loops.split(",") if x]
    legs = [x for x in args.legs.split(",") if x]
    sizes = [int(x) for x in args.watchers.split(",") if x] + ([large] if large else [])
    print(HEADER, flush=True)
    for n in sizes:
        for loop in loops:
            for leg in legs:
                if (loop == "asyncio" and leg != "tls") or (n == large and (loop, leg) != ("uvloop", "tls")):
                    continue
                print(row(run_watchers(n, leg, loop, certs, args)), flush=True)
    for m in [int(x) for x in args.sessions.split(",") if x]:
        for loop in loops:
            print(row(run_sessions(m, "tls", loop, certs, args)), flush=True)
        print(row(run_sessions(m, "none", loops[0], certs, args)), flush=True)
        if not args.no_nginx:
            print(row(run_nginx(m, certs, args)), flush=True)


if __name__ == "__main__":
    main()
