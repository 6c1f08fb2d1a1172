"""Which components exist for a given config, and how they connect.

A config with only ``listen``, ``upstream`` and ``store`` is a plain
transparent proxy: no store is opened, no capability added, no watcher runs.
With ``apns.enabled`` or ``webpush.enabled`` the push flow is built:

    watchers (Supervisor) ─┐
    Dovecot ox endpoint  ──┴─> Dispatcher ─> ApnsPusher / WebPushDelivery
    sessions ─> extensions (XAPPLEPUSHSERVICE, WEBPUSH) ─> store, Supervisor
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from pushproxy import metrics
from pushproxy.admin import AdminServer
from pushproxy.config import Config, read_secret_file
from pushproxy.extensions.base import CredentialSink, Extension, ExtensionRegistry, NullCredentialSink
from pushproxy.proxy.server import ProxyService, SessionStats

if TYPE_CHECKING:
    from pushproxy.app import App
    from pushproxy.store.base import Store

log = logging.getLogger("pushproxy.wiring")

HOUSEKEEPING_INTERVAL = 60.0


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

    def timed_out(self, kind: str) -> None:
        metrics.SESSION_TIMEOUTS.labels(kind=kind).inc()


class PrometheusWebPushMetrics:
    def webpush_request(self, status: int | None, seconds: float) -> None:
        metrics.PUSHES.labels(service="webpush", status=str(status) if status is not None else "error").inc()
        metrics.PUSH_LATENCY.labels(service="webpush").observe(seconds)

    def webpush_result(self, outcome: str) -> None:
        if outcome != "ok":
            metrics.PUSH_FAILURES.labels(service="webpush", reason=outcome).inc()


class _Closing:
    """Adapts ``stop()`` / plain tasks to the ``close()`` the App calls in reverse order."""

    def __init__(self, name: str, fn: Any) -> None:
        self.name = name
        self._fn = fn

    async def close(self) -> None:
        await self._fn()


class Housekeeping:
    """Device expiry and registration gauges, once a minute."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("housekeeping failed")
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    async def run_once(self) -> None:
        now = time.time()
        expired = await self.store.expire_devices(now - self.config.store.device_expiry)
        if expired:
            log.info("expired %d device registration(s) not renewed in time", expired)
        devices = await self.store.list_devices()
        metrics.REGISTRATIONS.labels(kind="apns", state="active").set(len(devices))
        # WebPush expiry and gauges are the WEBPUSH extension's own sweep.

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def build(app: App) -> None:
    cfg = app.config
    extensions: list[Extension] = []
    credentials: CredentialSink = NullCredentialSink()
    supervisor: Any = None
    dispatcher: Any = None

    if cfg.push_enabled:
        from pushproxy.push.dispatch import Dispatcher
        from pushproxy.store.factory import open_store
        from pushproxy.watch.supervisor import Supervisor

        store = await open_store(cfg)
        app.store = store
        app.components.append(store)

        apns: Any = None
        if cfg.apns.enabled:
            from pushproxy.push.apns import ApnsPusher, PrometheusApnsMetrics

            async def invalid_token(token: str, registered_before: float | None) -> None:
                removed = await store.remove_device_token(token, registered_before)
                if removed:
                    log.info("removed %d registration(s) of a device APNs no longer knows", removed)

            apns = ApnsPusher(cfg.apns, on_invalid_token=invalid_token, metrics=PrometheusApnsMetrics())
            await apns.start()
            app.components.append(apns)

        delivery: Any = None
        keyring: Any = None
        sender: Any = None
        if cfg.webpush.enabled:
            from pushproxy.push.vapid import VapidKeyring
            from pushproxy.push.webpush import WebPushSender
            from pushproxy.push.webpush_delivery import WebPushDelivery

            keyring = await VapidKeyring.load(cfg.vapid_key_path(), store)
            sender = WebPushSender(cfg.webpush, keyring, metrics=PrometheusWebPushMetrics())
            await sender.start()
            app.components.append(sender)
            delivery = WebPushDelivery(cfg, store, sender)

        dispatcher = Dispatcher(store, apns, delivery)
        app.components.append(dispatcher)
        app.dispatcher = dispatcher
        supervisor = Supervisor(cfg, store, dispatcher.submit, master_style=cfg.watch.master_login)
        app.supervisor = supervisor
        credentials = supervisor

        if apns is not None:
            from pushproxy.extensions.xapplepush import XApplePushExtension

            extensions.append(XApplePushExtension(cfg, store, apns.topic, supervisor.registration_changed))
        if sender is not None:
            from pushproxy.extensions.webpush import WebPushExtension

            webpush_ext = WebPushExtension(cfg, store, keyring, sender, supervisor.registration_changed)
            extensions.append(webpush_ext)
            app.components.append(webpush_ext)

        housekeeping = Housekeeping(cfg, store)
        housekeeping.start()
        app.components.append(housekeeping)

    service = ProxyService(cfg, ExtensionRegistry(extensions), credentials, stats=PrometheusSessionStats())

    async def readiness() -> dict[str, bool]:
        checks = {"listeners": bool(service.ports) and not service.draining}
        checks["upstream"] = await app.upstream_probe.ok()  # cached: one connection per 15 s at most
        if app.store is not None:
            ok = await app.store.ping()
            metrics.STORE_UP.set(1 if ok else 0)
            checks["store"] = ok
        return checks

    admin = AdminServer(cfg.admin.listen, readiness)
    if cfg.admin.ox_secret_file is not None:
        if dispatcher is None:
            log.warning("admin.ox_secret_file is set but no push service is enabled: ox endpoint not installed")
        else:
            from pushproxy.events.dovecot_ox import install_ox_endpoint

            install_ox_endpoint(admin, read_secret_file(cfg.admin.ox_secret_file), dispatcher.submit)
    await admin.start()
    app.admin = admin
    app.components.append(_Closing("admin", admin.stop))

    service.start()
    app.service = service
    if supervisor is not None:
        await supervisor.start()
        app.components.append(supervisor)
