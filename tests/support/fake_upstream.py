"""A fake upstream IMAP server in a process of its own, counting the logins it sees.

Enough IMAP for watchers (CAPABILITY, STARTTLS, LOGIN, ENABLE, EXAMINE /
SELECT, STATUS, UID FETCH, IDLE, NOOP, LOGOUT) over plain TCP, STARTTLS or
implicit TLS; every user exists, every mailbox too (empty until mail is
delivered to it), any password is right.  New mail is announced with
``* n EXISTS`` to the connections idling on its mailbox (and at the next
NOOP), and UID FETCH answers with an envelope.
It records when each LOGIN was answered and how many connections were
between their accept and their login answer ("logins in flight") at that
moment, and can restart itself (drop every connection, refuse connections
for a while, listen again on the same port).

Run as ``python -m tests.support.fake_upstream --security tls --cert C --key K``:
it prints ``{"port": N}`` and obeys JSON lines on stdin, answering each with
one JSON line: ``{"op": "logins"}`` -> ``{"logins": [[t, in_flight], ...]}``
(t: CLOCK_MONOTONIC, comparable across processes), ``{"op": "restart",
"down": 2.0}``, ``{"op": "stats"}`` -> connections, idling, handshakes,
resumed handshakes; ``{"op": "fire", "users": [...], "mailboxes": [...],
"count": N, "rate": R}`` delivers N messages to random ones at R per second
and answers ``{"sent": [[user, mailbox, uid, t], ...]}`` (t: when their
EXISTS was written); ``{"op": "quit"}``.  :class:`FakeUpstreamProcess` is
the parent's side (tests, ``bench/scale.py`` and ``bench/watchers.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import resource
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.children import end_child

CAPS = b"IMAP4rev1 IDLE LITERAL+ ENABLE"
ENVELOPE = (
    b'("Mon, 1 Jan 2024 10:00:00 +0000" "bench message %d" (("Bench" NIL "bench" "example.org")) '
    b'(("Bench" NIL "bench" "example.org")) (("Bench" NIL "bench" "example.org")) '
    b'((NIL NIL "user" "example.org")) NIL NIL NIL "<%d@bench.example>")'
)


class Box:
    """One mailbox: the UIDs delivered to it."""

    __slots__ = ("uids", "uidvalidity")

    def __init__(self) -> None:
        self.uidvalidity = 1
        self.uids: list[int] = []

    @property
    def uidnext(self) -> int:
        return (self.uids[-1] + 1) if self.uids else 1


class Server:
    def __init__(self, security: str, tls: ssl.SSLContext | None, login_delay: float) -> None:
        self.security = security
        self.tls = tls
        self.login_delay = login_delay
        self.conns: set[Conn] = set()
        self.logins: list[tuple[float, int]] = []
        self.in_flight = 0
        self.handshakes = 0
        self.resumed = 0
        self.idling = 0
        self.boxes: dict[tuple[str, str], Box] = {}
        self.idlers: dict[tuple[str, str], set[Conn]] = {}
        self.sent: list[tuple[str, str, int, float]] = []  # what "fire" delivered: user, mailbox, uid, when

    def box(self, user: str, mailbox: str = "INBOX") -> Box:
        box = self.boxes.get((user, mailbox))
        if box is None:
            box = self.boxes[(user, mailbox)] = Box()
        return box

    def deliver(self, user: str, mailbox: str) -> None:
        """New mail: announced at once to the connections idling on the mailbox."""
        box = self.box(user, mailbox)
        uid = box.uidnext
        box.uids.append(uid)
        for conn in list(self.idlers.get((user, mailbox), ())):
            conn.announce()
        self.sent.append((user, mailbox, uid, time.monotonic()))


class Conn(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.s = server
        self.buf = b""
        self.line = b""  # a command line being assembled around literals
        self.literal: int | None = None
        self.transport: asyncio.Transport | None = None
        self.user: str | None = None
        self.mailbox = "INBOX"  # the selected one
        self.announced = 0  # the EXISTS count this connection was last told
        self.idle_tag: bytes | None = None
        self.pending = True  # accepted, not yet logged in (counted in s.in_flight)
        self._tls_task: asyncio.Future[None] | None = None
        self._upgrading: list[bytes] | None = None  # answers held while start_tls has not returned

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are no asyncio.Transport
        self.s.conns.add(self)
        self.s.in_flight += 1
        if self.s.security == "tls":
            self._count_handshake(transport)
        caps = CAPS + (b" STARTTLS" if self.s.security == "starttls" else b"")
        transport.write(b"* OK [CAPABILITY " + caps + b"] fake upstream ready\r\n")

    def _count_handshake(self, transport: asyncio.BaseTransport) -> None:
        self.s.handshakes += 1
        obj = transport.get_extra_info("ssl_object")
        if obj is not None and obj.session_reused:
            self.s.resumed += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.s.conns.discard(self)
        if self.pending:
            self.pending = False
            self.s.in_flight -= 1
        if self.idle_tag is not None:
            self._stop_idle()

    def _stop_idle(self) -> None:
        self.idle_tag = None
        self.s.idling -= 1
        if self.user is not None:
            self.s.idlers.get((self.user, self.mailbox), set()).discard(self)

    def announce(self) -> None:
        assert self.user is not None
        n = len(self.s.box(self.user, self.mailbox).uids)
        if n > self.announced:
            self.announced = n
            self.write(b"* %d EXISTS\r\n" % n)

    def write(self, data: bytes) -> None:
        if self._upgrading is not None:  # the client's first command can beat start_tls's return
            self._upgrading.append(data)
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.literal is not None:  # a literal's bytes (nginx sends LOGIN's arguments so)
                if len(self.buf) < self.literal:
                    return
                self.line += b'"' + self.buf[: self.literal] + b'"'
                self.buf, self.literal = self.buf[self.literal :], None
            if b"\r\n" not in self.buf:
                return
            part, self.buf = self.buf.split(b"\r\n", 1)
            match = re.search(rb"\{(\d+)(\+?)\}$", part)
            if match and self.idle_tag is None:
                self.line += part[: match.start()]
                self.literal = int(match.group(1))
                if not match.group(2):
                    self.write(b"+ go ahead\r\n")
                continue
            line, self.line = self.line + part, b""
            self.handle(line)

    def handle(self, line: bytes) -> None:
        if self.idle_tag is not None:
            if line.upper() == b"DONE":
                self.write(self.idle_tag + b" OK Idle completed.\r\n")
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
        elif cmd == b"STARTTLS" and self.s.security == "starttls":
            self.write(tag + b" OK Begin TLS negotiation now\r\n")
            self._tls_task = asyncio.ensure_future(self._starttls())
        elif cmd == b"LOGIN":
            self.user = args[0].strip(b'"').decode().split("*", 1)[0]
            if self.s.login_delay:
                asyncio.get_running_loop().call_later(self.s.login_delay, self._logged_in, tag)
            else:
                self._logged_in(tag)
        elif cmd in (b"SELECT", b"EXAMINE") and self.user is not None:
            self.mailbox = args[0].strip(b'"').decode()
            box = self.s.box(self.user, self.mailbox)
            self.announced = len(box.uids)
            self.write(
                b"* FLAGS (\\Seen)\r\n* %d EXISTS\r\n* OK [UIDVALIDITY %d] ok\r\n* OK [UIDNEXT %d] ok\r\n"
                % (len(box.uids), box.uidvalidity, box.uidnext)
                + tag
                + b" OK [READ-ONLY] done\r\n"
            )
        elif cmd == b"STATUS" and self.user is not None:
            name = args[0].strip(b'"')
            box = self.s.box(self.user, name.decode())
            self.write(
                b'* STATUS "%s" (MESSAGES %d UIDNEXT %d UIDVALIDITY %d)\r\n'
                % (name, len(box.uids), box.uidnext, box.uidvalidity)
                + tag
                + b" OK done\r\n"
            )
        elif cmd == b"UID FETCH" and self.user is not None:
            self.write(self._fetched(args[0]) + tag + b" OK Fetch completed.\r\n")
        elif cmd == b"IDLE" and self.user is not None:
            self.idle_tag = tag
            self.s.idling += 1
            self.s.idlers.setdefault((self.user, self.mailbox), set()).add(self)
            self.write(b"+ idling\r\n")
            self.announce()
        elif cmd in (b"NOOP", b"ENABLE"):
            if self.user is not None:
                self.announce()
            self.write(tag + b" OK done\r\n")
        elif cmd == b"LOGOUT":
            self.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
            if self.transport is not None:
                self.transport.close()
        else:
            self.write(tag + b" BAD unknown command\r\n")

    def _fetched(self, uid_set: bytes) -> bytes:
        """The FETCH lines of the selected mailbox's messages from the set's first UID on (else its last)."""
        assert self.user is not None
        box = self.s.box(self.user, self.mailbox)
        start = int(uid_set.split(b":")[0])
        chosen = [u for u in box.uids if u >= start] or box.uids[-1:]
        return b"".join(
            b"* %d FETCH (UID %d FLAGS () ENVELOPE " % (box.uids.index(uid) + 1, uid) + ENVELOPE % (uid, uid) + b")\r\n"
            for uid in chosen
        )

    def _logged_in(self, tag: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.pending:
            self.s.logins.append((time.monotonic(), self.s.in_flight))
            self.pending = False
            self.s.in_flight -= 1
        self.write(tag + b" OK [CAPABILITY " + CAPS + b"] Logged in\r\n")

    async def _starttls(self) -> None:
        assert self.transport is not None and self.s.tls is not None
        loop = asyncio.get_running_loop()
        held: list[bytes] = []
        self._upgrading = held
        try:
            new = await loop.start_tls(self.transport, self, self.s.tls, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError):
            return
        finally:
            self._upgrading = None
        if new is not None:
            self.transport = new
            self._count_handshake(new)
            for data in held:
                self.write(data)


class Listener:
    def __init__(self, server: Server, port: int) -> None:
        self.s = server
        self.port = port
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        tls = self.s.tls if self.s.security == "tls" else None
        self._server = await loop.create_server(
            lambda: Conn(self.s), "127.0.0.1", self.port, ssl=tls, backlog=4096, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def restart(self, down: float) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self.s.conns):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(down)
        await self.open()


async def serve(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tls = None
    if args.security != "none":
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    server = Server(args.security, tls, args.login_delay)
    listener = Listener(server, args.port)
    await listener.open()
    print(json.dumps({"port": listener.port}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)  # a "fire" command lists every user
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["op"]
        answer: dict[str, Any] = {}
        if op == "logins":
            answer = {"logins": server.logins}
        elif op == "stats":
            answer = {
                "connections": len(server.conns),
                "idling": server.idling,
                "handshakes": server.handshakes,
                "resumed": server.resumed,
                "logins": len(server.logins),
            }
        elif op == "restart":
            await listener.restart(float(cmd.get("down", 1.0)))
        elif op == "fire":
            answer = {"sent": await fire(server, cmd["users"], cmd["mailboxes"], cmd["count"], cmd["rate"])}
        elif op == "quit":
            break
        print(json.dumps(answer), flush=True)


async def fire(
    server: Server, users: list[str], mailboxes: list[str], count: int, rate: float
) -> list[tuple[str, str, int, float]]:
    """Deliver ``count`` messages to random users' random mailboxes at ``rate`` per second; what was sent."""
    server.sent.clear()
    interval = 1.0 / rate
    start = time.monotonic()
    for i in range(count):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        server.deliver(random.choice(users), random.choice(mailboxes))
    return server.sent


class FakeUpstreamProcess:
    """The parent's handle on a fake upstream child process."""

    def __init__(
        self,
        security: str = "none",
        cert: Path | None = None,
        key: Path | None = None,
        login_delay: float = 0.0,
        loop: str = "asyncio",
    ) -> None:
        root = Path(__file__).resolve().parents[2]
        argv = [sys.executable, "-m", "tests.support.fake_upstream", "--security", security]
        argv += ["--login-delay", str(login_delay), "--loop", loop]
        if cert is not None and key is not None:
            argv += ["--cert", str(cert), "--key", str(key)]
        self.security = security
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def logins(self) -> list[tuple[float, int]]:
        return [(float(t), int(n)) for t, n in self.call("logins")["logins"]]

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.call("stats").items()}

    def restart(self, down: float = 1.0) -> None:
        self.call("restart", down=down)

    def fire(
        self, users: list[str], mailboxes: list[str], count: int, rate: float
    ) -> list[tuple[str, str, int, float]]:
        """New mail (see the module's ``fire``); blocks until the last is delivered."""
        sent = self.call("fire", users=users, mailboxes=mailboxes, count=count, rate=rate)["sent"]
        return [(str(u), str(b), int(uid), float(t)) for u, b, uid, t in sent]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        end_child(self.proc, json.dumps({"op": "quit"}) + "\n")


def per_second(logins: list[tuple[float, int]], since: float = 0.0) -> list[int]:
    """Logins counted per one-second window from the first one after ``since``."""
    times = sorted(t for t, _ in logins if t >= since)
    if not times:
        return []
    first = times[0]
    counts = [0] * (int(times[-1] - first) + 1)
    for t in times:
        counts[int(t - first)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--security", choices=("none", "starttls", "tls"), default="none")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--login-delay", type=float, default=0.0)
    # uvloop for tens of thousands of TLS connections: the std loop's TLS transport holds 256 KiB each
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
