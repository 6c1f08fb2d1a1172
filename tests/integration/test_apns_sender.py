"""ApnsPusher against the APNs stand-in: real HTTP/2 over TLS on loopback, certificate and token auth."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from pushproxy import metrics
from pushproxy.extensions.xapplepush.apns import ApnsPusher
from pushproxy.extensions.xapplepush.settings import ApnsConfig
from tests.support import apns_env
from tests.support.apns_standin import Answer, ApnsStandin
from tests.support.certs import ApnsTestCerts
from tests.support.ports import free_port
from tests.support.waiting import async_assert_quiet, async_wait_for

TOKEN_A = "a1" * 32
TOKEN_B = "b2" * 32
ACCOUNT = "0715A26B-CA09-4730-A419-793000CA982E"


def md5_upper(name: str) -> str:
    return hashlib.md5(name.encode("utf-8")).hexdigest().upper()


# the shared pytest fixtures (tests/support/apns_env.py): the stand-in in certificate mode is "standin" here
certs, standin = apns_env.certs, apns_env.apns


@pytest.fixture
def token_standin(certs: ApnsTestCerts) -> Iterator[ApnsStandin]:
    with ApnsStandin(
        certs.server_cert, certs.server_key, token_key=certs.token_key, key_id=certs.key_id, team_id=certs.team_id
    ) as s:
        yield s


class Recorder:
    """invalid_token calls and metrics callbacks."""

    def __init__(self) -> None:
        self.invalid: list[tuple[str, float | None]] = []
        self.statuses: list[str] = []
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.days: list[int] = []
        self.expiries: list[float] = []
        self.delivered = asyncio.Event()

    async def invalid_token(self, token: str, registered_before: float | None) -> None:
        self.invalid.append((token, registered_before))

    def sent(self, status: str) -> None:
        self.statuses.append(status)
        if status == "200":
            self.delivered.set()

    def failed(self, reason: str) -> None:
        self.failures.append(reason)

    def latency(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def cert_days_left(self, days: int) -> None:
        self.days.append(days)

    def cert_expires_at(self, timestamp: float) -> None:
        self.expiries.append(timestamp)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def make_pusher(certs: ApnsTestCerts, recorder: Recorder) -> AsyncIterator[Callable[..., Any]]:
    pushers: list[ApnsPusher] = []

    async def make(standin: ApnsStandin, *, auth: str = "pem", **overrides: Any) -> ApnsPusher:
        settings: dict[str, Any] = {
            "enabled": True,
            "endpoint": standin.endpoint,
            "ca_file": certs.ca_cert,
            "debounce": 0.05,
            "timeout": 5.0,
            "retry_budget": 3,
        }
        if auth == "pem":
            settings |= {"cert_file": certs.client_cert, "key_file": certs.client_key}
        elif auth == "p12":
            settings |= {"cert_file": certs.client_p12, "p12_password_file": certs.client_p12_password_file}
        elif auth == "token":
            settings |= {
                "token_key_file": certs.token_key,
                "key_id": certs.key_id,
                "team_id": certs.team_id,
                "topic": certs.topic,
            }
        settings |= overrides
        backoff = settings.pop("backoff_base", 0.01)
        pusher = ApnsPusher(ApnsConfig(**settings), recorder, recorder, backoff_base=backoff, backoff_max=0.1)
        await pusher.start()
        pushers.append(pusher)
        return pusher

    yield make
    for pusher in pushers:
        await pusher.close()


# -- wire format --------------------------------------------------------------------------


async def test_wire_format_certificate_auth(
    standin: ApnsStandin, make_pusher: Any, certs: ApnsTestCerts, recorder: Recorder
) -> None:
    pusher = await make_pusher(standin)
    assert pusher.topic == certs.topic
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()

    [req] = standin.requests
    assert req.method == "POST"
    assert req.path == f"/3/device/{TOKEN_A}"
    assert req.client_uid == certs.topic
    assert req.headers["apns-topic"] == certs.topic
    assert req.headers["apns-push-type"] == "background"
    assert req.headers["apns-priority"] == "5"
    expiration = int(req.headers["apns-expiration"])
    assert abs(expiration - (req.time + 24 * 3600)) < 120
    assert req.json == {"aps": {"account-id": ACCOUNT}}
    assert req.status == 200
    assert recorder.statuses == ["200"]
    assert recorder.invalid == []
    assert recorder.days and 360 <= recorder.days[0] <= 365


async def test_m_hash_for_sent_messages(standin: ApnsStandin, make_pusher: Any) -> None:
    pusher = await make_pusher(standin)
    pusher.notify(TOKEN_A, ACCOUNT, "Sent Messages")
    await pusher.flush()
    [req] = standin.requests
    assert req.json == {"aps": {"account-id": ACCOUNT}, "m": [md5_upper("Sent Messages")]}


async def test_burst_is_debounced_to_one_push(standin: ApnsStandin, make_pusher: Any) -> None:
    pusher = await make_pusher(standin, debounce=0.5)
    for i in range(20):
        pusher.notify(TOKEN_A, ACCOUNT, "Notes" if i == 7 else "INBOX")
    # A second device and a second account on the same device are separate pushes.
    pusher.notify(TOKEN_B, ACCOUNT, "INBOX")
    pusher.notify(TOKEN_A, "OTHER-ACCOUNT", "INBOX")
    await pusher.flush()

    assert len(standin.requests) == 3
    by_key = {(r.token, r.json["aps"]["account-id"]): r.json for r in standin.requests}
    assert by_key[(TOKEN_A, ACCOUNT)]["m"] == sorted([md5_upper("Notes"), md5_upper("INBOX")])
    assert "m" not in by_key[(TOKEN_B, ACCOUNT)]
    assert "m" not in by_key[(TOKEN_A, "OTHER-ACCOUNT")]


async def test_the_queue_gauge_counts_windows_and_sends(standin: ApnsStandin, make_pusher: Any) -> None:
    """pushproxy_push_queue{service="apns"} (the dashboard's queue): debounce windows and sends in flight."""

    def queue() -> float | None:
        return metrics.REGISTRY.get_sample_value("pushproxy_push_queue", {"service": "apns"})

    pusher = await make_pusher(standin, debounce=30.0)
    assert queue() == 0
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    pusher.notify(TOKEN_A, ACCOUNT, "Notes")  # the same window
    pusher.notify(TOKEN_B, ACCOUNT, "INBOX")
    assert queue() == 2
    await pusher.flush()
    assert queue() == 0 and len(standin.requests) == 2
    await pusher.close()
    assert queue() == 0


async def test_window_merges_without_flush(standin: ApnsStandin, make_pusher: Any) -> None:
    pusher = await make_pusher(standin, debounce=0.3)
    pusher.notify(TOKEN_A, ACCOUNT, "Sent Messages")
    await asyncio.sleep(0.05)
    pusher.notify(TOKEN_A, ACCOUNT, "Archive")
    reqs = await standin.async_wait_for(1, timeout=10)
    await pusher.flush()
    assert len(standin.requests) == 1
    assert reqs[0].json["m"] == sorted([md5_upper("Sent Messages"), md5_upper("Archive")])
    # After the window a new notification is a new push.
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    assert len(standin.requests) == 2


# -- answers ---------------------------------------------------------------------------------


async def test_410_reports_token_with_timestamp(standin: ApnsStandin, make_pusher: Any, recorder: Recorder) -> None:
    standin.script(TOKEN_A, [Answer(410, timestamp_ms=1_700_000_123_456)])
    pusher = await make_pusher(standin)
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    assert len(standin.requests) == 1
    assert recorder.invalid == [(TOKEN_A, pytest.approx(1_700_000_123.456))]


async def test_400_bad_device_token_reports_token_without_timestamp(
    standin: ApnsStandin, make_pusher: Any, recorder: Recorder
) -> None:
    standin.script(TOKEN_A, [400])
    pusher = await make_pusher(standin)
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    assert len(standin.requests) == 1
    assert recorder.invalid == [(TOKEN_A, None)]


async def test_other_4xx_is_dropped_without_retry(standin: ApnsStandin, make_pusher: Any, recorder: Recorder) -> None:
    standin.script(TOKEN_A, [Answer(400, reason="BadExpirationDate"), 413])
    pusher = await make_pusher(standin)
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    assert [r.status for r in standin.requests] == [400, 413]
    assert recorder.invalid == []


async def test_429_then_200_is_retried(standin: ApnsStandin, make_pusher: Any, recorder: Recorder) -> None:
    standin.script(TOKEN_A, [429, 200])
    pusher = await make_pusher(standin)
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    assert [r.status for r in standin.requests] == [429, 200]
    assert recorder.statuses == ["429", "200"]
    assert recorder.failures == ["TooManyRequests"]
    assert len(recorder.latencies) == 2
    assert recorder.invalid == []


async def test_503_and_500_are_retried(standin: ApnsStandin, make_pusher: Any) -> None:
    standin.script(TOKEN_A, [503, 500])
    pusher = await make_pusher(standin)
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    assert [r.status for r in standin.requests] == [503, 500, 200]


async def test_retry_after_is_honoured(standin: ApnsStandin, make_pusher: Any) -> None:
    standin.script(TOKEN_A, [Answer(429, retry_after="1"), 200])
    pusher = await make_pusher(standin, backoff_base=0.001)
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    first, second = standin.requests
    assert second.status == 200
    # Backoff alone would have waited ~1 ms; Retry-After says one second.
    assert second.time - first.time >= 0.9


async def test_500_forever_exhausts_the_budget(
    standin: ApnsStandin, make_pusher: Any, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    standin.always(TOKEN_A, 500)
    pusher = await make_pusher(standin, retry_budget=3)
    with caplog.at_level(logging.WARNING, logger="pushproxy.xapplepush.apns"):
        pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
        await pusher.flush()
    assert len(standin.requests) == 4  # first try + 3 retries
    assert recorder.statuses == ["500"] * 4
    assert recorder.failures == ["InternalServerError"] * 4
    assert recorder.invalid == []
    assert any("given up after 3 retries" in r.getMessage() for r in caplog.records)


async def test_403_keeps_device_and_logs_error(
    standin: ApnsStandin, make_pusher: Any, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    standin.script(TOKEN_A, [Answer(403, reason="BadCertificate")])
    pusher = await make_pusher(standin)
    with caplog.at_level(logging.INFO, logger="pushproxy.xapplepush.apns"):
        pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
        await pusher.flush()
    assert len(standin.requests) == 1
    assert recorder.invalid == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "BadCertificate" in errors[0].getMessage() and "certificate" in errors[0].getMessage()


# -- a hanging APNs ---------------------------------------------------------------------------


async def test_hanging_token_does_not_delay_another(standin: ApnsStandin, make_pusher: Any, recorder: Recorder) -> None:
    standin.always(TOKEN_A, "hang")
    pusher = await make_pusher(standin, timeout=60.0)
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await standin.async_wait_for(1, timeout=10, token=TOKEN_A)
    pusher.notify(TOKEN_B, ACCOUNT, "INBOX")
    await asyncio.wait_for(recorder.delivered.wait(), 30)
    # B was delivered while A's request is still unanswered and A has not been retried.
    assert [r.status for r in standin.requests_for(TOKEN_B)] == [200]
    assert [r.status for r in standin.requests_for(TOKEN_A)] == [None]
    assert recorder.statuses == ["200"]
    await pusher.close()  # cancels A's pending attempt


async def test_timeouts_are_retried_then_given_up(standin: ApnsStandin, make_pusher: Any, recorder: Recorder) -> None:
    standin.always(TOKEN_A, "hang")
    pusher = await make_pusher(standin, timeout=0.3, retry_budget=2)
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    assert len(standin.requests_for(TOKEN_A)) == 3
    assert recorder.statuses == ["error"] * 3
    assert recorder.failures == ["timeout"] * 3
    # The abandoned streams do not poison the connection.
    pusher.notify(TOKEN_B, ACCOUNT, "INBOX")
    await pusher.flush()
    assert [r.status for r in standin.requests_for(TOKEN_B)] == [200]


# -- transport trouble --------------------------------------------------------------------------


async def test_connection_refused_is_retried_and_does_not_crash(
    certs: ApnsTestCerts, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ApnsConfig(
        cert_file=certs.client_cert,
        key_file=certs.client_key,
        endpoint=f"127.0.0.1:{free_port()}",
        ca_file=certs.ca_cert,
        debounce=0.01,
        timeout=2.0,
        retry_budget=2,
    )
    pusher = ApnsPusher(cfg, recorder, recorder, backoff_base=0.01, backoff_max=0.05)
    await pusher.start()
    try:
        with caplog.at_level(logging.DEBUG):
            pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
            await pusher.flush()
    finally:
        await pusher.close()
    assert recorder.statuses == ["error"] * 3
    assert recorder.failures == ["transport"] * 3
    assert recorder.invalid == []
    assert TOKEN_A not in caplog.text


async def test_rejected_client_certificate_is_a_transport_error(
    standin: ApnsStandin, make_pusher: Any, certs: ApnsTestCerts, recorder: Recorder
) -> None:
    # The stand-in's TLS refuses an expired client certificate during the handshake.
    pusher = await make_pusher(
        standin, cert_file=certs.expired_cert, key_file=certs.expired_key, allow_expired=True, retry_budget=1
    )
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    assert standin.requests == []
    assert recorder.statuses == ["error"] * 2


# -- other credentials -----------------------------------------------------------------------------


async def test_p12_credentials_send_and_leave_no_temp_file(
    standin: ApnsStandin, make_pusher: Any, certs: ApnsTestCerts
) -> None:
    before = set(glob.glob("/dev/shm/pushproxy-apns-*")) | set(glob.glob("/tmp/pushproxy-apns-*"))
    pusher = await make_pusher(standin, auth="p12")
    after = set(glob.glob("/dev/shm/pushproxy-apns-*")) | set(glob.glob("/tmp/pushproxy-apns-*"))
    assert after <= before
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    [req] = standin.requests
    assert req.status == 200 and req.client_uid == certs.topic


async def test_token_auth(token_standin: ApnsStandin, make_pusher: Any, certs: ApnsTestCerts) -> None:
    pusher = await make_pusher(token_standin, auth="token")
    pusher.notify(TOKEN_A, ACCOUNT, "Sent Messages")
    await pusher.flush()
    [req] = token_standin.requests
    assert req.status == 200
    assert req.client_uid is None
    assert req.headers["authorization"].startswith("bearer ")
    assert req.headers["apns-topic"] == certs.topic
    assert req.json == {"aps": {"account-id": ACCOUNT}, "m": [md5_upper("Sent Messages")]}


async def test_token_auth_with_wrong_key_id_is_403(
    token_standin: ApnsStandin, make_pusher: Any, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    pusher = await make_pusher(token_standin, auth="token", key_id="WRONGKEYID")
    with caplog.at_level(logging.ERROR, logger="pushproxy.xapplepush.apns"):
        pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
        await pusher.flush()
    [req] = token_standin.requests
    assert (req.status, req.reason) == (403, "InvalidProviderToken")
    assert recorder.invalid == []
    assert any("provider token" in r.getMessage() and "InvalidProviderToken" in r.getMessage() for r in caplog.records)


# -- logging ---------------------------------------------------------------------------------------


async def test_full_token_never_logged(
    standin: ApnsStandin, make_pusher: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = [f"{i:02x}" * 32 for i in range(6)]
    standin.script(tokens[0], [400])
    standin.script(tokens[1], [410])
    standin.script(tokens[2], [403])
    standin.script(tokens[3], [429, 500, 500, 500])
    standin.script(tokens[4], [Answer(400, reason="BadTopic")])
    standin.script(tokens[5], ["hang"])
    pusher = await make_pusher(standin, timeout=0.5)
    with caplog.at_level(logging.DEBUG):
        for token in tokens:
            pusher.notify(token, ACCOUNT, "INBOX")
        pusher.notify("not-a-hex-token/../x" * 4, ACCOUNT, "INBOX")
        await pusher.flush()
    assert len(standin.requests) >= 10
    text = caplog.text
    for token in tokens:
        assert token not in text
        assert token[:8] in text  # the shortened form is what identifies it


async def test_notify_after_close_is_ignored(standin: ApnsStandin, make_pusher: Any) -> None:
    pusher = await make_pusher(standin)
    await pusher.close()
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    await async_assert_quiet(lambda: standin.requests == [], period=0.1, what="no request after close")


def test_standin_blocking_wait_for_times_out(standin: ApnsStandin) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        standin.wait_for(1, timeout=0.2)
    assert time.monotonic() - started >= 0.2


async def test_standin_global_queue_applies_to_unscripted_tokens(standin: ApnsStandin, make_pusher: Any) -> None:
    standin.enqueue([503])
    standin.script(TOKEN_B, [200])
    pusher = await make_pusher(standin)
    pusher.notify(TOKEN_B, ACCOUNT, "INBOX")
    await pusher.flush()
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    assert [(r.token, r.status) for r in standin.requests] == [(TOKEN_B, 200), (TOKEN_A, 503), (TOKEN_A, 200)]


# -- connection keep-alive ------------------------------------------------------------------


async def test_idle_connection_is_pinged_and_reused(
    standin: ApnsStandin, make_pusher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: aioapns closed every connection after 10 s without a request
    (APNsBaseClientProtocol.INACTIVITY_TIME), so each push to a quiet account paid a
    new TLS handshake.  Both intervals are shortened here: aioapns' to 0.3 s, our PING
    to 0.1 s; the connection must outlive several PINGs and carry the second push."""
    import aioapns.connection

    from pushproxy.extensions.xapplepush import apns_h2 as apns

    monkeypatch.setattr(aioapns.connection.APNsBaseClientProtocol, "INACTIVITY_TIME", 0.3)
    monkeypatch.setattr(apns, "PING_INTERVAL", 0.1)
    pusher = await make_pusher(standin)
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    # Idle for at least six PING intervals (0.6 s, twice aioapns' shortened timeout).
    pings = await asyncio.to_thread(standin.wait_for_pings, 6, 10.0)
    assert pings >= 6
    pusher.notify(TOKEN_B, ACCOUNT, "INBOX")
    await pusher.flush()
    assert [r.status for r in standin.requests] == [200, 200]
    assert standin.connections_accepted == 1


async def test_connection_without_pong_is_closed_and_replaced(
    standin: ApnsStandin, make_pusher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection whose PING goes unanswered is dead: closed, and the next push opens a new one."""
    from pushproxy.extensions.xapplepush import apns_h2 as apns

    monkeypatch.setattr(apns, "PING_INTERVAL", 0.1)
    monkeypatch.setattr(apns, "PING_TIMEOUT", 0.2)
    # Swallow PING ACKs on the client side, as a black-holed connection would.
    original = apns._ApnsClientProtocol.data_received

    def drop_pongs(self: Any, data: bytes) -> None:
        from h2.events import PingAckReceived

        receive = self.conn.receive_data

        def without_acks(raw: bytes) -> list[Any]:
            return [e for e in receive(raw) if not isinstance(e, PingAckReceived)]

        self.conn.receive_data = without_acks
        try:
            original(self, data)
        finally:
            self.conn.receive_data = receive

    monkeypatch.setattr(apns._ApnsClientProtocol, "data_received", drop_pongs)
    pusher = await make_pusher(standin)
    pusher.notify(TOKEN_A, ACCOUNT, "INBOX")
    await pusher.flush()
    pool = pusher._pool
    assert pool is not None
    await async_wait_for(lambda: pool.connections == [], 10, "the silent connection to be dropped")
    pusher.notify(TOKEN_B, ACCOUNT, "INBOX")
    await pusher.flush()
    assert [r.status for r in standin.requests] == [200, 200]
    assert standin.connections_accepted == 2
