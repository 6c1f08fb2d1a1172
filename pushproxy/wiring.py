"""Which components exist for a given config, and how they connect.

A config with only ``listen``, ``upstream`` and ``store`` is a plain
transparent proxy: no store is opened, no capability added, no watcher runs.
When the config enables an extension (one its ``extensions`` list loads and
whose section turns it on: XAPPLEPUSHSERVICE with ``apns.enabled``, WEBPUSH
with ``webpush.enabled``)
the push flow is built, knowing extensions only through their hooks:

    watchers (Supervisor) ─┐
    Dovecot ox endpoint  ──┴─> PushPipeline: dedupe ─> skip \\Seen ─> fan out
                                 ─> ExtensionManager ─> every extension's on_event
    sessions ─> ExtensionManager ─> every extension's commands ─> store, Supervisor
    Supervisor ─> ExtensionManager ─> every extension's watched_mailboxes

Every call of an extension's hook goes through the
:class:`~pushproxy.extensions.manager.ExtensionManager` (one error policy).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pushproxy import fdlimit, metrics
from pushproxy.admin import AdminServer
from pushproxy.config import Config, read_secret_file
from pushproxy.extensions.base import CredentialSink, NullCredentialSink
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.looplag import LoopLagProbe
from pushproxy.proxy.server import ProxyService
from pushproxy.proxy.shared import SessionStats
from pushproxy.upstream_probe import CachedUpstreamProbe

log = logging.getLogger("pushproxy.wiring")


class PrometheusSessionStats(SessionStats):
    """Metric children bound once, not looked up by label for every session or command."""

    def __init__(self) -> None:
        self._bytes_in = metrics.SESSION_BYTES.labels(direction="client_to_upstream")
        self._bytes_out = metrics.SESSION_BYTES.labels(direction="upstream_to_client")
        self._intercepted: dict[str, Any] = {}  # keyed by registered command names only

    def opened(self) -> None:
        metrics.SESSIONS_ACTIVE.inc()
        metrics.SESSIONS_TOTAL.inc()

    def closed(self, bytes_in: int, bytes_out: int) -> None:
        metrics.SESSIONS_ACTIVE.dec()
        self._bytes_in.inc(bytes_in)
        self._bytes_out.inc(bytes_out)

    def intercepted(self, command: str) -> None:
        child = self._intercepted.get(command)
        if child is None:
            child = self._intercepted[command] = metrics.COMMANDS_INTERCEPTED.labels(command=command)
        child.inc()

    def refused(self, reason: str) -> None:
        metrics.CONNECTIONS_REFUSED.labels(reason=reason).inc()

    def auth_failed(self) -> None:
        metrics.AUTH_FAILURES.inc()

    def logged_in(self) -> None:
        metrics.LOGINS.inc()

    def timed_out(self, kind: str) -> None:
        metrics.SESSION_TIMEOUTS.labels(kind=kind).inc()


class _Closing:
    """Adapts ``stop()`` / plain tasks to the ``close()`` the App calls in reverse order."""

    def __init__(self, name: str, fn: Any) -> None:
        self.name = name
        self._fn = fn

    async def close(self) -> None:
        await self._fn()


class Assembly(Protocol):
    """What :func:`build` fills in: :class:`pushproxy.app.App` (which calls it; wiring does not import it)."""

    config: Config
    upstream_probe: CachedUpstreamProbe
    components: list[Any]  # started in order, closed in reverse
    service: Any
    admin: Any
    store: Any
    pipeline: Any
    supervisor: Any


async def build(app: Assembly) -> None:
    cfg = app.config
    credentials: CredentialSink = NullCredentialSink()
    supervisor: Any = None
    pipeline: Any = None

    extensions = ExtensionManager.for_config(cfg)
    if extensions:
        from pushproxy.push.pipeline import FanOut, PushLedger, PushPipeline
        from pushproxy.store.factory import open_store
        from pushproxy.watch.supervisor import Supervisor

        store = await open_store(cfg)
        app.store = store
        app.components.append(store)

        extensions.attach(cfg, store)
        app.components.append(extensions)  # stopped after the pipeline's flush (those that started)
        await extensions.start()
        from pushproxy.cluster import Cluster

        # Leases, registration feed and the push ledger: the same code on one SQLite node and on
        # several PostgreSQL nodes.  Appended before the supervisor, so closed after it.
        cluster = Cluster(cfg, store)
        dedupe = PushLedger(store, cluster.node_id, cluster.leases)
        pipeline = PushPipeline(dedupe, FanOut(extensions))
        app.components.append(pipeline)
        app.pipeline = pipeline
        app.components.append(cluster)
        supervisor = Supervisor(
            cfg, store, pipeline, master_style=cfg.watch.master_login, watching=extensions, owns=cluster.leases.owns
        )
        extensions.follow(supervisor.registration_changed, supervisor.relist_subscribed)
        dedupe.read_states_from(supervisor.states)  # an ox event's missing UIDVALIDITY: the watchers' view
        app.supervisor = supervisor
        credentials = supervisor

    service = ProxyService(cfg, extensions, credentials, stats=PrometheusSessionStats())

    async def readiness() -> dict[str, bool]:
        checks = {"listeners": bool(service.ports) and not service.draining}
        checks["upstream"] = await app.upstream_probe.ok()  # cached: one connection per 15 s at most
        if app.store is not None:
            ok = await app.store.ping()
            app.store.health.observe(ok)  # pushproxy_store_up; one WARNING / INFO per outage
            checks["store"] = ok
        return checks

    admin = AdminServer(cfg.admin.listen, readiness)
    if cfg.admin.ox_secret_file is not None:
        if pipeline is None:
            log.warning("admin.ox_secret_file is set but no push service is enabled: ox endpoint not installed")
        else:
            from pushproxy.watch.dovecot_ox import install_ox_endpoint

            install_ox_endpoint(admin, read_secret_file(cfg.admin.ox_secret_file), pipeline)
    await admin.start()
    app.admin = admin
    app.components.append(_Closing("admin", admin.stop))
    probe = LoopLagProbe()
    probe.start()
    app.components.append(_Closing("loop lag probe", probe.stop))

    service.start()
    app.service = service
    if supervisor is not None:
        await cluster.start(supervisor, pipeline, supervisor.states.flush)
        await supervisor.start()
        app.components.append(supervisor)
    fdlimit.check(cfg, supervisor.wanted if supervisor is not None else 0)
    fdlimit.check_local_ports(cfg, supervisor.wanted if supervisor is not None else 0)
