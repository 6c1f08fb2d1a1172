"""Benchmark (figures only, no assertions): what one idle TLS connection costs in this Python.

The floor under bench/scale.py's per-watcher and per-session figures: N idle
TLS connections held by a process that does nothing else, its RSS growth per
connection over the same N plain TCP connections (so the socket, the kernel
side and the Python objects around it are not counted).  The measured side
runs in a process of its own, blocking sockets, one handshake after the
other; the peer is another process (uvloop, many at once) and is not measured.

Variants, each one row:

- **client** (the watchers' and the sessions' upstream leg): the ``ssl``
  module (``SSLSocket``; ``SSLObject`` over ``ssl.MemoryBIO`` as
  pushproxy/watch/tlsbio.py uses it), pyOpenSSL (Twisted's TLS); certificate
  verified or not; session tickets from the server (``num_tickets`` 0, 1, 2
  or 4); resumed (every connection offers the first one's session) or full;
  TLS 1.2; uvloop's TLS transport; a client that writes once after the
  greeting (the others only read it);
- **server** (the sessions' client leg): the ``ssl`` module and pyOpenSSL as
  Twisted sets it up (session cache off, ``OP_NO_TICKET``), then with
  stateless tickets, with the server-side session cache, with
  ``SSL_MODE_RELEASE_BUFFERS`` cleared, and with the ssl module's options and
  ciphers.

    python bench/tls_floor.py              # 1,000 connections per row
    python bench/tls_floor.py --n 3000

Memory figures are firm (the same to within ~1 KB run to run).
"""

from __future__ import annotations

import _ssl
import argparse
import asyncio
import gc
import json
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.certs import make_apns_certs  # noqa: E402

GREETING = b"* OK ready\r\n"
OPTS: dict[str, Any] = {}  # the measured variant's options (in the measured process)

# (name, side, library, options): each measured in a fresh process.
VARIANTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("client, plain TCP (the baseline, 0 by definition)", "client", "plain", {}),
    ("client, ssl module (SSLSocket), verified, 2 tickets", "client", "ssl", {"tickets": 2}),
    ("client, ssl module, SSLObject over MemoryBIO (tlsbio)", "client", "bio", {"tickets": 2}),
    ("client, ssl module, not verified", "client", "ssl", {"tickets": 2, "verify": False}),
    ("client, ssl module, server sends no tickets", "client", "ssl", {"tickets": 0}),
    ("client, ssl module, writes a line after the greeting", "client", "ssl", {"tickets": 2, "write": True}),
    ("client, ssl module, server sends 1 ticket", "client", "ssl", {"tickets": 1}),
    ("client, ssl module, server sends 4 tickets", "client", "ssl", {"tickets": 4}),
    ("client, ssl module, resumed (TLS 1.3 ticket)", "client", "ssl", {"tickets": 2, "resume": True}),
    ("client, ssl module, resumed, TLS 1.2", "client", "ssl", {"tickets": 2, "resume": True, "tls12": True}),
    ("client, ssl module, full handshake, TLS 1.2", "client", "ssl", {"tickets": 2, "tls12": True}),
    ("client, uvloop, plain TCP transport (the baseline of the next two)", "client", "uvloop-plain", {}),
    ("client, uvloop's TLS transport", "client", "uvloop-tls", {"tickets": 2}),
    ("client, uvloop's TCP transport + tlsbio (OpenSSL over MemoryBIO)", "client", "uvloop-tlsbio", {"tickets": 2}),
    ("client, uvloop + tlsbio, resumed", "client", "uvloop-tlsbio", {"tickets": 2, "resume": True}),
    ("client, pyOpenSSL (Twisted's), verified, 2 tickets", "client", "pyopenssl", {"tickets": 2}),
    ("client, pyOpenSSL, RELEASE_BUFFERS cleared", "client", "pyopenssl", {"tickets": 2, "no_release": True}),
    ("server, plain TCP (the baseline, 0 by definition)", "server", "plain", {}),
    ("server, ssl module, defaults (2 tickets, cache on)", "server", "ssl", {"tickets": 2}),
    ("server, ssl module, num_tickets 0", "server", "ssl", {"tickets": 0}),
    ("server, ssl module, TLS 1.2 client, cache on", "server", "ssl", {"tickets": 2, "tls12": True}),
    ("server, pyOpenSSL as Twisted sets it (cache off, OP_NO_TICKET)", "server", "pyopenssl", {"twisted": True}),
    ("server, pyOpenSSL, stateless tickets (cache off)", "server", "pyopenssl", {"tickets": True}),
    ("server, pyOpenSSL, session cache on, OP_NO_TICKET", "server", "pyopenssl", {"cache": True}),
    ("server, pyOpenSSL, RELEASE_BUFFERS cleared", "server", "pyopenssl", {"twisted": True, "no_release": True}),
    ("server, pyOpenSSL, the ssl module's options", "server", "pyopenssl", {"twisted": True, "py_options": True}),
    ("server, pyOpenSSL, the ssl module's ciphers", "server", "pyopenssl", {"twisted": True, "py_ciphers": True}),
]


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def settle() -> int:
    gc.collect()
    time.sleep(0.3)
    return rss_kb()


# =============================================================================== the measured side


def client_ssl_context(certs: dict[str, str], opts: dict[str, Any]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs["ca"])
    if opts.get("tls12"):
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if opts.get("verify") is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pyopenssl_context(certs: dict[str, str], opts: dict[str, Any], server: bool) -> Any:
    from OpenSSL import SSL
    from OpenSSL._util import lib

    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # as Twisted's CertificateOptions does
    if opts.get("no_release"):
        lib.SSL_CTX_clear_mode(ctx._context, SSL.MODE_RELEASE_BUFFERS)
    if opts.get("py_options"):
        ctx.set_options(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).options)
    if opts.get("py_ciphers"):
        ctx.set_cipher_list(_ssl._DEFAULT_CIPHERS.encode())
    if server:
        ctx.use_certificate_file(certs["cert"])
        ctx.use_privatekey_file(certs["key"])
        ctx.set_session_id(b"tlsfloor")
        if opts.get("twisted") or opts.get("cache"):
            ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER if opts.get("cache") else SSL.SESS_CACHE_OFF)
    else:
        ctx.load_verify_locations(certs["ca"])
        ctx.set_verify(SSL.VERIFY_PEER)
    return ctx


def measured_client(port: int, n: int, lib: str, opts: dict[str, Any], certs: dict[str, str]) -> dict[str, Any]:
    held: list[Any] = []
    resumed = 0
    ctx = client_ssl_context(certs, opts)
    pctx = pyopenssl_context(certs, opts, server=False) if lib == "pyopenssl" else None
    session: Any = None
    warm = _client_conn(port, lib, ctx, pctx, None)  # one first: contexts, code paths and the session to resume
    if opts.get("resume"):
        session = warm[1]
    before = settle()
    for _ in range(n):
        conn, _s, reused = _client_conn(port, lib, ctx, pctx, session)
        resumed += reused
        held.append(conn)
    after = settle()
    return {"kb": (after - before) / n, "resumed": resumed}


class _Greeted(asyncio.Protocol):
    def __init__(self) -> None:
        self.greeted = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.greeted.done():
            self.greeted.set_result(None)


async def measured_client_async(port: int, n: int, lib: str, opts: dict[str, Any], certs: dict[str, str]) -> Any:
    """Connections the way the watchers open them: uvloop's transports, pushproxy.watch.tlsbio."""
    from pushproxy.watch import tlsbio

    loop = asyncio.get_running_loop()
    ctx = client_ssl_context(certs, opts)

    async def one() -> tuple[Any, bool]:
        app = _Greeted()
        if lib == "uvloop-tlsbio":
            tls = await tlsbio.connect_tls(app, "127.0.0.1", port, ctx, "localhost")
            await app.greeted
            return tls, tls.get_extra_info("ssl_object").session_reused
        tls_ctx = ctx if lib == "uvloop-tls" else None
        transport, _ = await loop.create_connection(
            lambda: app, "127.0.0.1", port, ssl=tls_ctx, server_hostname="localhost" if tls_ctx else None
        )
        await app.greeted
        return transport, False

    held = [await one()]
    if not opts.get("resume"):
        tlsbio.SessionCache.forget(ctx, ("127.0.0.1", port, "localhost"))
    before = settle()
    resumed = 0
    for _ in range(n):
        conn, reused = await one()
        if not opts.get("resume"):
            tlsbio.SessionCache.forget(ctx, ("127.0.0.1", port, "localhost"))
        resumed += reused
        held.append(conn)
    after = settle()
    return {"kb": (after - before) / n, "resumed": resumed}


def _client_conn(port: int, lib: str, ctx: ssl.SSLContext, pctx: Any, session: Any) -> tuple[Any, Any, bool]:
    sock = socket.create_connection(("127.0.0.1", port))
    if lib == "plain":
        _read_line(sock.recv)
        return sock, None, False
    if lib == "ssl":
        tls = ctx.wrap_socket(sock, server_hostname="localhost", session=session)
        _read_line(tls.recv)
        if OPTS.get("write"):
            tls.sendall(b"a NOOP\r\n")
        return tls, tls.session, tls.session_reused
    if lib == "bio":
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="localhost", session=session)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(out.read())
                inc.write(sock.recv(16384))
        sock.sendall(out.read())
        got = b""
        while not got.endswith(b"\n"):
            try:
                got += obj.read(16384)
            except ssl.SSLWantReadError:
                inc.write(sock.recv(16384))
        return (sock, obj, inc, out), obj.session, obj.session_reused
    from OpenSSL import SSL
    from OpenSSL._util import lib as lib_

    conn = SSL.Connection(pctx, sock)
    conn.set_tlsext_host_name(b"localhost")
    if session is not None:
        conn.set_session(session)
    conn.set_connect_state()
    conn.do_handshake()
    _read_line(conn.recv)
    return conn, conn.get_session(), bool(lib_.SSL_session_reused(conn._ssl))


def _read_line(recv: Any) -> None:
    got = b""
    while not got.endswith(b"\n"):
        chunk = recv(1024)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk


def measured_server(listener: socket.socket, n: int, lib: str, opts: dict[str, Any], certs: dict[str, str]) -> Any:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    ctx.num_tickets = int(opts.get("tickets", 2))
    pctx = pyopenssl_context(certs, opts, server=True) if lib == "pyopenssl" else None
    held = [_server_conn(listener, lib, ctx, pctx)]
    before = settle()
    for _ in range(n):
        held.append(_server_conn(listener, lib, ctx, pctx))
    after = settle()
    return {"kb": (after - before) / n, "resumed": 0}


def _server_conn(listener: socket.socket, lib: str, ctx: ssl.SSLContext, pctx: Any) -> Any:
    sock, _addr = listener.accept()
    if lib == "plain":
        sock.sendall(GREETING)
        return sock
    if lib == "ssl":
        tls = ctx.wrap_socket(sock, server_side=True)
        tls.sendall(GREETING)
        return tls
    from OpenSSL import SSL

    conn = SSL.Connection(pctx, sock)
    conn.set_accept_state()
    conn.do_handshake()
    conn.sendall(GREETING)
    return conn


# =============================================================================== the peer (uvloop, many at once)


async def peer_server(port_out: Any, opts: dict[str, Any], certs: dict[str, str]) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    ctx.num_tickets = int(opts.get("tickets", 2))
    held: list[Any] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        held.append(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=None if opts.get("plain") else ctx, backlog=4096)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def peer_client(port: int, n: int, opts: dict[str, Any], certs: dict[str, str]) -> None:
    ctx = ssl.create_default_context(cafile=certs["ca"])
    if opts.get("tls12"):
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    sem = asyncio.Semaphore(20)
    held: list[Any] = []

    async def one() -> None:
        async with sem:
            tls = None if opts.get("plain") else ctx
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname=None)
            await reader.readline()
            held.append(writer)

    await asyncio.gather(*(one() for _ in range(n + 1)))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# =============================================================================== driver


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def child(args: argparse.Namespace) -> None:
    _raise_nofile()
    certs = json.loads(args.certs)
    opts = json.loads(args.opts)
    OPTS.update(opts)
    if args.role == "peer-server":
        import uvloop

        uvloop.run(peer_server(sys.stdout, opts, certs))
    elif args.role == "peer-client":
        import uvloop

        uvloop.run(peer_client(args.port, args.n, opts, certs))
    elif args.role == "client" and args.lib.startswith("uvloop"):
        import uvloop

        print(json.dumps(uvloop.run(measured_client_async(args.port, args.n, args.lib, opts, certs))), flush=True)
    elif args.role == "client":
        print(json.dumps(measured_client(args.port, args.n, args.lib, opts, certs)), flush=True)
    else:
        listener = socket.create_server(("127.0.0.1", args.port), backlog=4096)
        print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
        print(json.dumps(measured_server(listener, args.n, args.lib, opts, certs)), flush=True)
    sys.stdin.readline()


def _spawn(role: str, n: int, port: int, lib: str, opts: dict[str, Any], certs: dict[str, str]) -> Any:
    argv = [sys.executable, __file__, "--role", role, "--n", str(n), "--port", str(port), "--lib", lib]
    argv += ["--opts", json.dumps(opts), "--certs", json.dumps(certs)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _finish(*procs: Any) -> None:
    for proc in procs:
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
        except OSError:
            pass
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def measure(side: str, lib: str, opts: dict[str, Any], n: int, certs: dict[str, str]) -> dict[str, Any]:
    peer_opts = {**opts, "plain": lib.endswith("plain")}
    if side == "client":
        peer = _spawn("peer-server", n, 0, "", peer_opts, certs)
        port = json.loads(peer.stdout.readline())["port"]
        subject = _spawn("client", n, port, lib, opts, certs)
        result = json.loads(subject.stdout.readline())
        _finish(subject, peer)
        return dict(result)
    subject = _spawn("server", n, 0, lib, opts, certs)
    port = json.loads(subject.stdout.readline())["port"]
    peer = _spawn("peer-client", n, port, "", peer_opts, certs)
    result = json.loads(subject.stdout.readline())
    _finish(peer, subject)
    return dict(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="connections per row")
    parser.add_argument("--only", default="", help="rows whose name contains this")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lib", default="", help=argparse.SUPPRESS)
    parser.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--certs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child(args)
        return
    _raise_nofile()
    pki = make_apns_certs(Path(tempfile.mkdtemp(prefix="pp-tlsfloor-")))
    certs = {"cert": str(pki.server_cert), "key": str(pki.server_key), "ca": str(pki.ca_cert)}
    from OpenSSL import SSL

    bundled = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    python = sys.version.split()[0]
    print(f"ssl module: {ssl.OPENSSL_VERSION}; pyOpenSSL: {bundled}; Python {python}; {args.n:,} per row")
    print("| connection (the measured side; the peer is another process) | KB each | resumed |\n|---|---|---|")
    baseline = {"client": 0.0, "server": 0.0}
    for name, side, lib, opts in VARIANTS:
        if args.only and args.only not in name and not lib.endswith("plain"):
            continue
        result = measure(side, lib, opts, args.n, certs)
        if lib.endswith("plain"):
            baseline[side] = result["kb"]
            print(f"| {name} | 0 ({result['kb']:.1f} KB with the socket) | |", flush=True)
            continue
        kb = result["kb"] - baseline[side]
        resumed = f"{result['resumed']:,}" if side == "client" else ""
        print(f"| {name} | {kb:.1f} | {resumed} |", flush=True)


if __name__ == "__main__":
    main()
