"""Listening ports for the servers the tests start (the proxy, Dovecot, PostgreSQL, Prometheus, ...).

A port is chosen here and bound later by another process, so it must stay free
in between.  Asking the kernel for port 0 gives a port of the ephemeral range
(``net.ipv4.ip_local_port_range``), which the kernel also hands out as the
source port of every outgoing connection: on a busy machine (other test
suites, the proxies' own upstream connections) one of them took the port before
the server bound it ("Address already in use").  So the ports come from below
that range, where no outgoing connection ever gets a port, and each is
reserved for the life of the test process with a lock file, so that test runs
in other checkouts on the same machine never choose it too; a port some other
program listens on is skipped (it cannot be bound).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import threading
from pathlib import Path

LOCK_DIR = Path("/tmp/pushproxy-test-ports")  # shared by all the test runs on this machine
LOW = 20000  # above the usual fixed service ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


HIGH = max(LOW + 1000, _ephemeral_low())  # exclusive
_lock = threading.Lock()
_held: dict[int, int] = {}  # port -> lock file descriptor, open (and locked) until this process exits


def _reserve(port: int) -> bool:
    """Lock ``port`` for this process (False if another test process holds it)."""
    LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
    fd = os.open(LOCK_DIR / str(port), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    _held[port] = fd
    return True


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind (TIME_WAIT is no obstacle)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port nobody listens on, outside the ephemeral range, given out once per machine."""
    with _lock:
        for _ in range(1000):
            port = random.randrange(LOW, HIGH)
            if port in _held or not _reserve(port):
                continue
            if _bindable(port):
                return port
            # Someone else's listener (not a test run of ours): keep it reserved, never try it again.
        raise RuntimeError(f"no free port in {LOW}..{HIGH - 1}")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports as :func:`free_port` gives them."""
    return [free_port() for _ in range(count)]
