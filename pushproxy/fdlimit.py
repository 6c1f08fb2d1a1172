"""File descriptors: raise the soft limit at start, and say when the configuration needs more.

Every client session holds two descriptors (the client's socket and its
upstream connection), every watched account ``watch.idle_connections`` (one
with NOTIFY), plus a fixed part: listeners, the admin listener and its
clients, the store's connections, the push services' HTTP/2 connections,
log files and the interpreter's own.  A proxy at its limit cannot accept
(see :mod:`pushproxy.proxy.listener`) nor open watcher connections, so the
soft ``RLIMIT_NOFILE`` (often 1,024) is raised to the hard limit at start,
and one WARNING names the number when even that is lower than what the
configuration may need.

Local ports are the other limit a large node meets: every connection to the
upstream goes from the proxy's address to the same upstream address and
port, so at most ``net.ipv4.ip_local_port_range`` of them (28,232 by
default) can be open at once; past that, connects fail (``EADDRNOTAVAIL``)
and those watchers wait in backoff.  One WARNING says so at start too.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from pathlib import Path

from pushproxy.config import Config

__all__ = ["FIXED", "FdLimit", "check", "check_local_ports", "local_ports", "needed", "raise_soft_limit"]

log = logging.getLogger("pushproxy.fdlimit")

# Listeners, admin HTTP and its clients, store pool, APNs / Web Push connections, logs,
# the loop's own (epoll, self-pipe), the interpreter's: measured about 40 at start; room for more.
FIXED = 128
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@dataclass(frozen=True, slots=True)
class FdLimit:
    soft: int
    hard: int
    raised_from: int | None  # the soft limit before, when it was raised


def raise_soft_limit() -> FdLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as far as the kernel allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        target = _nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return FdLimit(soft, hard, None)
        return FdLimit(target, hard, soft)
    return FdLimit(soft, hard, None)


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def needed(config: Config, watched_accounts: int) -> int:
    """Descriptors the configuration may use at once with this many watched accounts."""
    return config.session.max_connections * 2 + watched_accounts * config.watch.idle_connections + FIXED


def check(config: Config, watched_accounts: int) -> int | None:
    """One WARNING when the limit is below :func:`needed`; returns the number needed then, else None."""
    want = needed(config, watched_accounts)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return None
    log.warning(
        "file descriptor limit %d is below the %d this configuration may need "
        "(session.max_connections %d x 2 + %d watched accounts x watch.idle_connections %d + %d): "
        "raise LimitNOFILE (systemd) / ulimits nofile (compose) / ulimit -n to at least %d",
        soft,
        want,
        config.session.max_connections,
        watched_accounts,
        config.watch.idle_connections,
        FIXED,
        want,
    )
    return want


def local_ports(path: Path = PORT_RANGE) -> int | None:
    """How many local ports outgoing connections to one address and port can use (None: unknown)."""
    try:
        low, high = (int(x) for x in path.read_text(encoding="ascii").split()[:2])
    except (OSError, ValueError):
        return None
    return high - low + 1


def check_local_ports(config: Config, watched_accounts: int, path: Path = PORT_RANGE) -> int | None:
    """One WARNING when the upstream connections may outnumber the local ports; the number then, else None."""
    want = watched_accounts * config.watch.idle_connections + config.session.max_connections
    have = local_ports(path)
    if have is None or want <= have:
        return None
    log.warning(
        "the %d connections this configuration may open to the upstream (%d watched accounts x "
        "watch.idle_connections %d + session.max_connections %d) exceed the %d local ports of "
        "net.ipv4.ip_local_port_range: widen it (e.g. sysctl net.ipv4.ip_local_port_range='10000 65535') "
        "or spread the accounts over several nodes",
        want,
        watched_accounts,
        config.watch.idle_connections,
        config.session.max_connections,
        have,
    )
    return want
