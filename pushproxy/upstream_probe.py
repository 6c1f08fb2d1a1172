"""Is the upstream IMAP server there?  One connection: greeting, STARTTLS/TLS as configured, CAPABILITY.

Used by ``check-config --probe`` (prints the capabilities), by ``serve`` at start (a
clear warning when the upstream does not answer) and by ``/readyz`` through
:class:`CachedUpstreamProbe`, so that a load balancer does not send clients to a
node whose upstream is gone -- without one connection per readiness request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass

from pushproxy.config import UpstreamConfig
from pushproxy.watch.connect import open_connection
from pushproxy.watch.upstream_types import UpstreamError

__all__ = ["CachedUpstreamProbe", "ProbeResult", "probe_upstream"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 4.0  # below the admin listener's 5 s readiness deadline
CACHE_SECONDS = 15.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    capabilities: frozenset[str]
    error: str | None
    checked_at: float  # time.monotonic()

    def describe(self, upstream: UpstreamConfig) -> str:
        where = f"{upstream.host}:{upstream.port} ({upstream.security})"
        return f"upstream {where} answers" if self.ok else f"upstream {where} unreachable: {self.error}"


async def probe_upstream(upstream: UpstreamConfig, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Connect, read the greeting, negotiate TLS as configured, ask CAPABILITY, log out."""
    try:
        async with asyncio.timeout(timeout):
            conn = await open_connection(upstream, None, command_timeout=timeout)
            try:
                caps = frozenset(await conn.refresh_capabilities())
            finally:
                conn.abort()
    except TimeoutError:
        return ProbeResult(False, frozenset(), f"no answer within {timeout:.0f} s", time.monotonic())
    except ssl.SSLError as exc:
        return ProbeResult(False, frozenset(), f"TLS: {exc.reason or exc}", time.monotonic())
    except (OSError, UpstreamError) as exc:
        # asyncio's connect errors carry errno with a "Connect call failed" text: say what errno means.
        errno = exc.errno if isinstance(exc, OSError) else None
        reason = os.strerror(errno) if errno else str(exc) or type(exc).__name__
        return ProbeResult(False, frozenset(), reason, time.monotonic())
    return ProbeResult(True, caps, None, time.monotonic())


class CachedUpstreamProbe:
    """:func:`probe_upstream` at most once per ``max_age`` seconds; concurrent callers share one probe."""

    def __init__(self, upstream: UpstreamConfig, max_age: float = CACHE_SECONDS, timeout: float = PROBE_TIMEOUT):
        self.upstream = upstream
        self.max_age = max_age
        self.timeout = timeout
        self.last: ProbeResult | None = None
        self._lock = asyncio.Lock()

    async def result(self) -> ProbeResult:
        async with self._lock:
            last = self.last
            if last is None or time.monotonic() - last.checked_at >= self.max_age:
                previous, last = last, await probe_upstream(self.upstream, self.timeout)
                self.last = last
                if previous is not None and previous.ok != last.ok:  # one line per change, not per probe
                    (log.info if last.ok else log.warning)("%s", last.describe(self.upstream))
            return last

    async def ok(self) -> bool:
        return (await self.result()).ok
