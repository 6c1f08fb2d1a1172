"""The admin HTTP listener: ``/metrics``, ``/healthz``, ``/readyz``, plus routes of other components.

It is an aiohttp application on the process's one asyncio loop (the one Twisted
runs on).  Other components add their endpoints with :meth:`AdminServer.add_route`
before :meth:`AdminServer.start`, e.g. the Dovecot push_notification ox endpoint.

- ``/healthz``: 200 ``ok`` while the process runs (liveness).
- ``/readyz``: the readiness callback's checks as JSON; 200 if all are true,
  else 503 (readiness: take the node out of a load balancer).
- ``/metrics``: :data:`pushproxy.metrics.REGISTRY` in Prometheus text format
  (OpenMetrics if the scraper asks for it).

It binds to loopback by default: the metrics and readiness output are not
secret, but there is no reason to show them to the world.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from pushproxy import metrics
from pushproxy.config import parse_hostport

__all__ = ["AdminServer", "Handler", "Readiness", "parse_listen"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Readiness = Callable[[], Awaitable[dict[str, bool]]]

READINESS_TIMEOUT = 5.0  # seconds; a probe that hangs is a failed probe
SHUTDOWN_TIMEOUT = 5.0  # seconds given to in-flight admin requests at stop
CLIENT_MAX_SIZE = 1024 * 1024  # request bodies (ox events are small JSON documents)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` as :func:`pushproxy.config.parse_hostport`, but port 0 (any free port) allowed."""
    head, sep, port_s = listen.strip().rpartition(":")
    if sep and port_s == "0":
        host, _ = parse_hostport(f"{head}:1")
        return host, 0
    return parse_hostport(listen)


class AdminServer:
    """The admin HTTP listener.  ``listen`` is ``host:port``; ``""`` disables it (start is a no-op)."""

    def __init__(
        self,
        listen: str,
        readiness: Readiness,
        *,
        readiness_timeout: float = READINESS_TIMEOUT,
        access_log: bool = False,
    ) -> None:
        self.listen = listen
        self._address = parse_listen(listen) if listen else None
        self._readiness = readiness
        self._readiness_timeout = readiness_timeout
        # Off by default: a scrape every 15 s would drown the useful log lines.
        self._access_log = access_log
        self._app = web.Application(client_max_size=CLIENT_MAX_SIZE)
        self._app.router.add_get("/metrics", self._metrics)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/readyz", self._readyz)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None  # the bound port, known after start()

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def url(self) -> str:
        """Base URL of the running listener, e.g. ``http://127.0.0.1:9143``."""
        if self._address is None or self.port is None:
            raise RuntimeError("the admin listener is not running")
        host = self._address[0]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Add an endpoint; only before :meth:`start` (aiohttp freezes the router then)."""
        if self._runner is not None:
            raise RuntimeError("routes must be added before the admin listener starts")
        self._app.router.add_route(method, path, handler)

    async def start(self) -> None:
        if self._address is None:
            log.info("admin listener disabled (admin.listen is empty)")
            return
        if self._runner is not None:
            raise RuntimeError("the admin listener is already started")
        host, port = self._address
        access_logger = logging.getLogger("aiohttp.access") if self._access_log else None
        runner = web.AppRunner(self._app, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=access_logger)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = _bound_port(runner, port)
        log.info("admin listener on %s:%d (/metrics /healthz /readyz)", host, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("admin listener stopped")

    # --- handlers ---------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            checks = await asyncio.wait_for(self._readiness(), timeout=self._readiness_timeout)
        except TimeoutError:
            log.warning("readiness check timed out after %.1fs", self._readiness_timeout)
            checks = {"readiness_check": False}
        except Exception:
            log.exception("readiness check failed")
            checks = {"readiness_check": False}
        ready = all(checks.values())
        return web.Response(
            text=json.dumps(checks, sort_keys=True) + "\n",
            status=200 if ready else 503,
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        # Collection is in-memory plus a few /proc reads: cheap enough for the loop.
        body, content_type = metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested
