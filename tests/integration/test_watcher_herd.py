"""The start-up herd, counted (not timed) at the upstream, and a clean stop in the middle of it.

The real ``pushproxy serve`` watches a few hundred accounts (APNs
registrations seeded into its store; master credentials) on a fake upstream in
another process (tests/support/fake_upstream.py), which records every login
it answers and how many connections were between accept and login then.
Every ramp -- the start, a restart of the proxy, everyone reconnecting after
an upstream restart -- goes through one token bucket (``watch.connect_rate``,
burst ``min(rate, 10)``) with a bound on logins in flight
(``watch.connect_in_flight``): so no one-second window holds more than
``rate + burst`` logins and the upstream never sees more than the bound at once.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import scale_setup
from tests.support.certs import ApnsTestCerts, make_apns_certs
from tests.support.fake_upstream import FakeUpstreamProcess, per_second
from tests.support.proxy import ProxyProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

ACCOUNTS = 240
RATE = 40.0
BURST = 10  # min(rate, 10): the bucket's burst
IN_FLIGHT = 3
STOP_ACCOUNTS = 1000


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ApnsTestCerts:
    return make_apns_certs(tmp_path_factory.mktemp("upstream-certs"))


_MADE: dict[Path, list[ProxyProcess]] = {}


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pp-herd-"))
    yield path
    for proxy in _MADE.pop(path, []):
        proxy.kill()
    shutil.rmtree(path, ignore_errors=True)


def _proxy(
    workdir: Path,
    upstream: FakeUpstreamProcess,
    certs: ApnsTestCerts,
    *,
    accounts: int = ACCOUNTS,
    loop: str = "auto",
    **watch: object,
) -> ProxyProcess:
    scale_setup.seed(workdir, accounts)
    settings = {"connect_rate": RATE, "connect_in_flight": IN_FLIGHT, "backoff_min": 0.5, "backoff_max": 2.0, **watch}
    config = scale_setup.watched_config(workdir, upstream, certs, **settings)
    proxy = ProxyProcess(workdir, {**config, "runtime": {"event_loop": loop}})
    _MADE.setdefault(workdir, []).append(proxy)  # killed at teardown, whatever the test did
    return proxy


def _check_ramp(upstream: FakeUpstreamProcess, since: float) -> list[int]:
    logins = [(t, n) for t, n in upstream.logins() if t >= since]
    windows = per_second(logins)
    assert len(logins) >= ACCOUNTS, f"{len(logins)} logins after {since}"
    assert max(windows) <= RATE + BURST, f"logins per one-second window: {windows}"
    # Counted at the upstream: the connection being answered is one of those in flight.
    assert max(n for _, n in logins) <= IN_FLIGHT, sorted({n for _, n in logins})
    return windows


def test_start_restart_and_upstream_restart_stay_within_the_bucket(certs: ApnsTestCerts, workdir: Path) -> None:
    upstream = FakeUpstreamProcess("none", login_delay=0.05)
    try:
        proxy = _proxy(workdir, upstream, certs)
        begin = time.monotonic()
        proxy.start(60)
        wait_for(lambda: proxy.metric("pushproxy_watchers_up") >= ACCOUNTS, 60, lambda: proxy.log_tail())
        windows = _check_ramp(upstream, begin)
        print(f"\nstart: logins per second {windows}")
        assert proxy.metric("pushproxy_watchers_wanted") == ACCOUNTS
        assert proxy.metric("pushproxy_watchers_logins_total") >= ACCOUNTS
        # The ramp's progress, every few seconds, then its end.
        assert f"/{ACCOUNTS} up (" in proxy.log_text()
        proxy.wait_log(f"watchers: {ACCOUNTS}/{ACCOUNTS} up (ramp of")

        assert proxy.stop() == 0
        begin = time.monotonic()
        proxy.start(60)
        wait_for(lambda: proxy.metric("pushproxy_watchers_up") >= ACCOUNTS, 60, lambda: proxy.log_tail())
        print(f"restart: logins per second {_check_ramp(upstream, begin)}")

        begin = time.monotonic()
        upstream.restart(down=1.0)  # every connection dropped at once, refused for a second
        wait_for(lambda: proxy.metric("pushproxy_watchers_up") < ACCOUNTS, 10)
        wait_for(lambda: proxy.metric("pushproxy_watchers_up") >= ACCOUNTS, 60, lambda: proxy.log_tail())
        print(f"upstream restart: logins per second {_check_ramp(upstream, begin)}")
        assert proxy.stop() == 0
        text = proxy.log_text()
        assert " ERROR " not in text and "Traceback" not in text, proxy.log_tail()
    finally:
        upstream.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_sigterm_during_the_tls_ramp_logs_no_error(
    certs: ApnsTestCerts, workdir: Path, security: str, loop: str
) -> None:
    """Stopped twice while hundreds of TLS handshakes are under way (uvloop used to log
    "ERROR asyncio: Fatal error on SSL protocol" for handshakes cut short by the stop)."""
    upstream = FakeUpstreamProcess(security, cert=certs.server_cert, key=certs.server_key)
    try:
        proxy = _proxy(
            workdir, upstream, certs, accounts=STOP_ACCOUNTS, loop=loop, connect_rate=2000.0, connect_in_flight=500
        )
        for _ in range(2):
            target = upstream.stats()["handshakes"] + 200
            proxy.start(60)
            # Mid-ramp: some watchers up, many connecting, handshakes under way.
            wait_for(lambda: upstream.stats()["handshakes"] >= target, 30, lambda: proxy.log_tail())  # noqa: B023
            assert proxy.metric("pushproxy_watchers_up") < STOP_ACCOUNTS
            assert proxy.stop() == 0
        # pushproxy.watch.tlsbio, on both loops: later handshakes resume the session of earlier ones.
        assert upstream.stats()["resumed"] > 0
        text = proxy.log_text()
        assert text.count("INFO pushproxy.app: stopped") == 2
        assert " ERROR " not in text and "Traceback" not in text and "Fatal error" not in text, proxy.log_tail()
    finally:
        upstream.close()
