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
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from pushproxy.config import Config

__all__ = ["FIXED", "FdLimit", "check", "needed", "raise_soft_limit"]

log = logging.getLogger("pushproxy.fdlimit")

# Listeners, admin HTTP and its clients, store pool, APNs / Web Push connections, logs,
# the loop's own (epoll, self-pipe), the interpreter's: measured about 40 at start; room for more.
FIXED = 128


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
