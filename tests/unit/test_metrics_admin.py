"""The admin listener (/metrics, /healthz, /readyz, added routes) and the metrics registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from pushproxy import metrics
from pushproxy.admin import AdminServer, parse_listen
from pushproxy.extensions import EXTENSIONS, available

EXPECTED_METRICS = {
    # family name as the text parser reports it (counters without _total)
    "pushproxy_sessions_active": "gauge",
    "pushproxy_sessions": "counter",
    "pushproxy_logins": "counter",
    "pushproxy_session_bytes": "counter",
    "pushproxy_commands_intercepted": "counter",
    "pushproxy_registrations": "gauge",
    "pushproxy_watchers": "gauge",
    "pushproxy_watcher_reconnects": "counter",
    "pushproxy_event_dispatch_latency_seconds": "histogram",
    "pushproxy_pushes": "counter",
    "pushproxy_push_failures": "counter",
    "pushproxy_push_latency_seconds": "histogram",
    "pushproxy_push_queue": "gauge",
    "pushproxy_apns_certificate_days_left": "gauge",
    "pushproxy_apns_certificate_expiry_timestamp_seconds": "gauge",
    "pushproxy_webpush_subscriptions": "gauge",
    "pushproxy_webpush_verifications": "counter",
    "pushproxy_webpush_payload_fallbacks": "counter",
    "pushproxy_store_up": "gauge",
    "pushproxy_cluster_leases_held": "gauge",
    "pushproxy_cluster_nodes_live": "gauge",
    "pushproxy_cluster_accounts_unwatched": "gauge",
    "pushproxy_cluster_takeovers": "counter",
    "pushproxy_push_ledger_conflicts": "counter",
}

TIMEOUT = aiohttp.ClientTimeout(total=10)


class Readiness:
    def __init__(self) -> None:
        self.checks = {"store": True, "listeners": True}

    async def __call__(self) -> dict[str, bool]:
        return dict(self.checks)


@pytest.fixture
async def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def admin(readiness: Readiness) -> AsyncIterator[AdminServer]:
    server = AdminServer("127.0.0.1:0", readiness)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"got": await request.json()})

    server.add_route("POST", "/events/test", echo)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


async def test_bound_port_is_exposed(admin: AdminServer) -> None:
    assert admin.port is not None and admin.port > 0
    assert admin.url == f"http://127.0.0.1:{admin.port}"


async def test_healthz(admin: AdminServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{admin.url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.text()).strip() == "ok"


async def test_metrics_exposes_every_metric(admin: AdminServer, http: aiohttp.ClientSession) -> None:
    # An extension's metrics are registered by its module, imported when the proxy loads the extension
    # (the add-on model): load pushproxy's own as ``serve`` does, not rely on an earlier test having done so.
    available(EXTENSIONS, installed=False)
    metrics.SESSIONS_TOTAL.inc()
    metrics.PUSHES.labels(service="apns", status="200").inc()
    async with http.get(f"{admin.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in EXPECTED_METRICS.items():
        assert families.get(name) == kind, name
    # Known label values are present at 0 before anything happened.
    for state in metrics.WATCHER_STATES:
        assert f'pushproxy_watchers{{state="{state}"}}' in text
    assert 'pushproxy_session_bytes_total{direction="client_to_upstream"}' in text
    assert 'pushproxy_pushes_total{service="apns",status="200"}' in text


async def test_metrics_openmetrics_negotiation(admin: AdminServer, http: aiohttp.ClientSession) -> None:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with http.get(f"{admin.url}/metrics", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await resp.text()).rstrip().endswith("# EOF")


async def test_readyz_follows_the_readiness_callback(
    admin: AdminServer, readiness: Readiness, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{admin.url}/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"store": True, "listeners": True}
    readiness.checks["store"] = False
    async with http.get(f"{admin.url}/readyz") as resp:
        assert resp.status == 503
        assert await resp.json() == {"store": False, "listeners": True}


async def test_readyz_fails_when_the_callback_raises(http: aiohttp.ClientSession) -> None:
    async def broken() -> dict[str, bool]:
        raise RuntimeError("boom")

    server = AdminServer("127.0.0.1:0", broken)
    await server.start()
    try:
        async with http.get(f"{server.url}/readyz") as resp:
            assert resp.status == 503
            assert await resp.json() == {"readiness_check": False}
    finally:
        await server.stop()


async def test_readyz_fails_when_the_callback_hangs(http: aiohttp.ClientSession) -> None:
    async def hangs() -> dict[str, bool]:
        await asyncio.Event().wait()
        return {}

    server = AdminServer("127.0.0.1:0", hangs, readiness_timeout=0.05)
    await server.start()
    try:
        async with http.get(f"{server.url}/readyz") as resp:
            assert resp.status == 503
    finally:
        await server.stop()


async def test_added_route(admin: AdminServer, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{admin.url}/events/test", json={"user": "demo"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"got": {"user": "demo"}}


async def test_add_route_after_start_is_refused(admin: AdminServer) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(RuntimeError):
        admin.add_route("GET", "/late", handler)


async def test_stop_closes_the_port(readiness: Readiness, http: aiohttp.ClientSession) -> None:
    server = AdminServer("127.0.0.1:0", readiness)
    await server.start()
    url = server.url
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{url}/healthz"):
            pass
    await server.stop()  # idempotent


async def test_two_servers_share_the_registry(readiness: Readiness) -> None:
    a = AdminServer("127.0.0.1:0", readiness)
    b = AdminServer("127.0.0.1:0", readiness)
    await a.start()
    await b.start()
    try:
        assert a.port != b.port
    finally:
        await a.stop()
        await b.stop()


async def test_empty_listen_disables(readiness: Readiness) -> None:
    server = AdminServer("", readiness)
    assert not server.enabled
    await server.start()
    assert server.port is None
    await server.stop()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("0.0.0.0:9143") == ("0.0.0.0", 9143)
    with pytest.raises(ValueError):
        parse_listen("127.0.0.1")
    with pytest.raises(ValueError):
        parse_listen("127.0.0.1:70000")


def test_set_state_gauge_zeroes_missing_states() -> None:
    metrics.set_state_gauge(metrics.WATCHERS, {"idle": 3, "backoff": 1}, metrics.WATCHER_STATES)
    assert metrics.REGISTRY.get_sample_value("pushproxy_watchers", {"state": "idle"}) == 3
    metrics.set_state_gauge(metrics.WATCHERS, {"polling": 2}, metrics.WATCHER_STATES)
    assert metrics.REGISTRY.get_sample_value("pushproxy_watchers", {"state": "idle"}) == 0
    assert metrics.REGISTRY.get_sample_value("pushproxy_watchers", {"state": "backoff"}) == 0
    assert metrics.REGISTRY.get_sample_value("pushproxy_watchers", {"state": "polling"}) == 2


def test_every_metric_is_documented() -> None:
    # The core's metrics in pushproxy.metrics, each extension's in its own metrics module.
    from pushproxy.extensions.deltachat import metrics as deltachat_metrics
    from pushproxy.extensions.webpush import metrics as webpush_metrics
    from pushproxy.extensions.xapplepush import metrics as apns_metrics

    modules = (metrics, webpush_metrics, apns_metrics, deltachat_metrics)
    doc = "".join(module.__doc__ or "" for module in modules)
    for family in metrics.REGISTRY.collect():
        if family.name.startswith("pushproxy_"):
            exposed = family.name + ("_total" if family.type == "counter" else "")
            assert exposed in doc, exposed
