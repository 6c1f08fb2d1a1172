"""Build everything from the config; own start and stop.

``serve`` runs :func:`run`: one asyncio loop with Twisted's reactor on it.  On
SIGTERM/SIGINT the proxy stops accepting, lets sessions end (bounded by
``session.drain_timeout``), stops the watchers and senders, closes the store
and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from pushproxy.config import Config, ConfigError
from pushproxy.upstream_probe import CachedUpstreamProbe

log = logging.getLogger("pushproxy.app")


class App:
    """The running proxy: listeners, store, push services, watchers, admin HTTP."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.components: list[Any] = []  # started in order, stopped in reverse
        self.service: Any = None
        self.admin: Any = None
        self.store: Any = None
        self.pipeline: Any = None
        self.supervisor: Any = None
        self.stopping = asyncio.Event()
        self.upstream_probe = CachedUpstreamProbe(config.upstream)

    async def start(self) -> None:
        from pushproxy.wiring import build

        await build(self)

    async def stop(self) -> None:
        cfg = self.config
        if self.service is not None:
            log.info("draining %d session(s), up to %.0f s", len(self.service.sessions), cfg.session.drain_timeout)
            await self.service.drain(cfg.session.drain_timeout)
        for component in reversed(self.components):
            try:
                await component.close()
            except Exception:
                log.exception("error while stopping %s", type(component).__name__)
        log.info("stopped")


async def serve(config: Config) -> int:
    app = App(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stopping.set)
    try:
        await app.start()
    except Exception as exc:
        # The reason first, then the orderly stop: "stopped" must not be the last word
        # an operator reads before the error that caused it.
        if isinstance(exc, ConfigError):
            log.error("%s", exc)
        else:
            log.error("fatal error while starting", exc_info=exc)
        await app.stop()
        return 2 if isinstance(exc, ConfigError) else 1
    probe = await app.upstream_probe.result()
    if probe.ok:
        log.info("pushproxy ready (%s)", probe.describe(config.upstream))
    else:
        log.warning(
            "pushproxy started, but %s: logins will fail and /readyz answers 503 until it answers",
            probe.describe(config.upstream),
        )
    await app.stopping.wait()
    log.info("shutdown requested")
    await app.stop()
    return 0


def run(config: Config) -> int:
    """Run the proxy in the foreground until SIGTERM/SIGINT; return the exit code."""
    from pushproxy.fdlimit import raise_soft_limit
    from pushproxy.reactor import install_asyncio_reactor, loop_name, quiet_tls_teardown

    limit = raise_soft_limit()
    loop = install_asyncio_reactor(config.runtime.event_loop)
    quiet_tls_teardown(loop)
    raised = f" (raised from {limit.raised_from})" if limit.raised_from is not None else ""
    log.info("event loop: %s; file descriptors: at most %d%s", loop_name(loop), limit.soft, raised)
    from twisted.internet import defer
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    result: dict[str, Any] = {"code": 0}

    def main() -> None:
        future = asyncio.ensure_future(serve(config))

        def done(f: asyncio.Future[int]) -> None:
            if f.cancelled():
                result["code"] = 1
            elif f.exception() is not None:
                exc = f.exception()
                if isinstance(exc, ConfigError):
                    log.error("%s", exc)
                    result["code"] = 2
                else:
                    log.error("fatal error", exc_info=exc)
                    result["code"] = 1
            else:
                result["code"] = f.result()
            reactor.stop()

        future.add_done_callback(done)
        defer.Deferred.fromFuture(future).addErrback(lambda _: None)

    reactor.callWhenRunning(main)
    reactor.run(installSignalHandlers=False)
    return int(result["code"])
