"""WebPushSender against the stand-in push service (loopback only)."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pushproxy.events import MessageInfo
from pushproxy.extensions.webpush.payload import MAX_PLAINTEXT, new_mail_payload
from pushproxy.extensions.webpush.sender import WebPushSender
from pushproxy.extensions.webpush.settings import WebPushConfig
from pushproxy.extensions.webpush.ssrf import PinnedResolver
from pushproxy.extensions.webpush.store import VapidKey, WebPushSubscription
from pushproxy.extensions.webpush.vapid import VapidKeyring
from pushproxy.imap.envelope import envelope_from_fields
from tests.support.push_standin import Answer, PushStandin, StandinSubscription
from tests.support.waiting import async_assert_quiet


class FakeVapidStore:
    def __init__(self) -> None:
        self.keys: dict[str, VapidKey] = {}

    shared_by_nodes = False  # one node: a replaced key file becomes current

    async def vapid_keys(self) -> list[VapidKey]:
        return list(self.keys.values())

    async def add_vapid_key(self, key: VapidKey, make_current: bool = True) -> None:
        self.keys[key.key_id] = key


class RecordingMetrics:
    def __init__(self) -> None:
        self.requests: list[int | None] = []
        self.results: list[str] = []

    def webpush_request(self, status: int | None, seconds: float) -> None:
        self.requests.append(status)

    def webpush_result(self, outcome: str) -> None:
        self.results.append(outcome)


@pytest.fixture
def standin() -> Iterator[PushStandin]:
    with PushStandin() as s:
        yield s


@pytest.fixture
async def keyring(tmp_path: Path) -> VapidKeyring:
    return await VapidKeyring.load(tmp_path / "vapid.pem", FakeVapidStore())


def make_cfg(**kw) -> WebPushConfig:
    base = dict(
        enabled=True,
        allow_private_endpoints=True,
        subject="mailto:ops@example.org",
        timeout=2.0,
        retry_budget=3,
    )
    base.update(kw)
    return WebPushConfig(**base)


@pytest.fixture
async def sender(keyring: VapidKeyring) -> AsyncIterator[WebPushSender]:
    s = WebPushSender(make_cfg(), keyring, backoff_base=0.01, backoff_max=0.05)
    await s.start()
    yield s
    await s.close()


def subscription(ss: StandinSubscription, keyring: VapidKeyring, key_id: str | None = None) -> WebPushSubscription:
    return WebPushSubscription(
        account="alice",
        sub_id=ss.id[:8],
        endpoint=ss.endpoint,
        p256dh=ss.p256dh,
        auth=ss.auth,
        vapid_key_id=key_id or keyring.current.key_id,
        active=True,
    )


async def test_plaintext_decrypts_exactly_and_vapid_verifies(standin, sender, keyring) -> None:
    ss = standin.new_subscription()
    sub = subscription(ss, keyring)
    env = envelope_from_fields("Mon, 7 Feb 1994 21:52:25 -0800", "Grüße", "Fred <fred@example.org>", "<a@b>")
    payload = new_mail_payload("INBOX", [MessageInfo(uid=4392, envelope=env)]).data
    biggest = bytes(range(256)) * (MAX_PLAINTEXT // 256) + b"x" * (MAX_PLAINTEXT % 256)
    assert len(biggest) == MAX_PLAINTEXT

    r1 = await sender.send(sub, payload, urgency="high", ttl=86400)
    r2 = await sender.send(sub, biggest, urgency="normal", ttl=0)
    assert (r1.outcome, r1.status, r1.attempts) == ("ok", 201, 1)
    assert r2.ok

    first, second = await standin.wait_for(ss, 2)
    assert first.problems == [] and second.problems == []
    assert first.plaintext == payload
    assert second.plaintext == biggest
    assert first.headers["TTL"] == "86400" and second.headers["TTL"] == "0"
    assert first.headers["Urgency"] == "high" and second.headers["Urgency"] == "normal"
    assert first.headers["Content-Encoding"] == "aes128gcm"
    assert first.headers["Content-Type"] == "application/octet-stream"
    assert first.vapid_key == keyring.current.public_key_b64
    assert first.vapid_claims is not None
    assert first.vapid_claims["aud"] == standin.base_url
    assert first.vapid_claims["sub"] == "mailto:ops@example.org"
    assert 11 * 3600 < first.vapid_claims["exp"] - time.time() <= 12 * 3600
    # A fresh sender key and salt per message: bodies differ even for equal plaintexts.
    await sender.send(sub, payload, urgency="high", ttl=60)
    third = (await standin.wait_for(ss, 3))[2]
    assert third.plaintext == payload and third.problems == []


async def test_ack_push(standin, sender, keyring) -> None:
    ss = standin.new_subscription()
    result = await sender.send_ack(subscription(ss, keyring), "Tok3n_-x")
    assert result.ok
    (rec,) = await standin.wait_for(ss, 1)
    assert rec.plaintext == b"* ACKWEBPUSH Tok3n_-x\r\n"
    # Changed with issue 13: by default the ACK push lives as long as the ACK window
    # (webpush.ack_expiry, 24 h), no longer 300 s; an explicit ack_ttl still wins.
    assert rec.headers["TTL"] == "86400" and rec.headers["Urgency"] == "high"
    explicit = WebPushSender(make_cfg(ack_ttl=300), keyring)
    async with explicit:
        assert (await explicit.send_ack(subscription(ss, keyring), "again")).ok
    assert (await standin.wait_for(ss, 2))[1].headers["TTL"] == "300"


@pytest.mark.parametrize(
    "code, outcome",
    [
        (404, "delete"),
        (410, "delete"),
        (401, "deactivate"),
        (403, "deactivate"),
        (413, "too_large"),
        (400, "dropped"),
        (422, "dropped"),
        (202, "ok"),
        (200, "ok"),
    ],
)
async def test_status_outcomes(standin, sender, keyring, code, outcome) -> None:
    ss = standin.new_subscription()
    standin.program(ss, Answer.status(code))
    result = await sender.send(subscription(ss, keyring), b"* SYNC\r\n", urgency="normal", ttl=60)
    assert result.outcome == outcome
    assert result.status == code
    assert result.attempts == 1
    assert len(standin.records_for(ss)) == 1


async def test_429_retry_after_is_honoured(standin, keyring) -> None:
    ss = standin.new_subscription()
    standin.program(ss, Answer.status(429, retry_after="1"), Answer.ok())
    metrics = RecordingMetrics()
    async with WebPushSender(make_cfg(), keyring, metrics, backoff_base=0.01, backoff_max=0.05) as sender:
        result = await sender.send(subscription(ss, keyring), b"hello", urgency="high", ttl=600)
    assert (result.outcome, result.attempts) == ("ok", 2)
    first, second = standin.records_for(ss)
    assert (first.answered, second.answered) == (429, 201)
    # Retry-After: 1 means "not before one second" (a lower bound, not a speed claim).
    assert second.received_at - first.received_at >= 0.95
    assert second.plaintext == b"hello"
    assert metrics.requests == [429, 201] and metrics.results == ["ok"]


async def test_retry_after_delay_requested_from_sleep(standin, keyring) -> None:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    ss = standin.new_subscription()
    standin.program(ss, Answer.status(503, retry_after="7"), Answer.status(429, retry_after="9999"), Answer.ok())
    sender = WebPushSender(make_cfg(), keyring, backoff_base=0.01, retry_after_cap=30, sleep=fake_sleep)
    async with sender:
        result = await sender.send(subscription(ss, keyring), b"x", urgency="high", ttl=86400)
    assert result.ok and result.attempts == 3
    assert delays == [7.0, 30.0]  # honoured, and capped


async def test_server_errors_until_budget_then_failed(standin, keyring) -> None:
    ss = standin.new_subscription()
    standin.set_default(ss, Answer.status(500))
    async with WebPushSender(make_cfg(retry_budget=2), keyring, backoff_base=0.01, backoff_max=0.02) as sender:
        result = await sender.send(subscription(ss, keyring), b"x", urgency="high", ttl=600)
    assert result.outcome == "failed"
    assert result.status == 500
    assert result.attempts == 3  # one try + retry_budget retries
    assert len(standin.records_for(ss)) == 3


async def test_exponential_backoff_grows(standin, keyring) -> None:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    ss = standin.new_subscription()
    standin.set_default(ss, Answer.status(502))
    sender = WebPushSender(make_cfg(retry_budget=4), keyring, backoff_base=1.0, backoff_max=5.0, sleep=fake_sleep)
    async with sender:
        result = await sender.send(subscription(ss, keyring), b"x", urgency="high", ttl=86400)
    assert result.outcome == "failed" and len(delays) == 4
    for n, d in enumerate(delays):
        cap = min(5.0, 2.0**n)
        assert cap / 2 <= d <= cap


async def test_hang_times_out_without_blocking_other_sends(standin, keyring) -> None:
    hanging = standin.new_subscription()
    normal = standin.new_subscription()
    standin.set_default(hanging, Answer.hanging(30))
    cfg = make_cfg(timeout=1.0, retry_budget=1)
    async with WebPushSender(cfg, keyring, backoff_base=0.01, backoff_max=0.02) as sender:
        slow = asyncio.create_task(sender.send(subscription(hanging, keyring), b"h", urgency="high", ttl=60))
        await standin.wait_for(hanging, 1, accepted_only=False)
        fast = [await sender.send(subscription(normal, keyring), b"n%d" % i, urgency="high", ttl=60) for i in range(5)]
        assert all(r.ok for r in fast)
        assert not slow.done()  # the hanging request did not hold the others up
        result = await slow
    assert result.outcome == "failed" and result.status is None
    assert result.attempts == 2 and "timeout" in result.detail
    assert len(standin.records_for(hanging)) == 2


async def test_redirect_is_not_followed(standin, sender, keyring) -> None:
    ss = standin.new_subscription()
    standin.program(ss, Answer.redirecting())
    result = await sender.send(subscription(ss, keyring), b"secret", urgency="high", ttl=60)
    assert result.outcome == "dropped" and result.status == 307
    await async_assert_quiet(lambda: standin.redirect_hits == [], period=0.1, what="the redirect not followed")
    assert len(standin.records_for(ss)) == 1


async def test_too_large_plaintext_is_not_sent(standin, sender, keyring) -> None:
    ss = standin.new_subscription()
    result = await sender.send(subscription(ss, keyring), b"x" * (MAX_PLAINTEXT + 1), urgency="high", ttl=60)
    assert result.outcome == "too_large" and result.attempts == 0
    assert standin.records_for(ss) == []


async def test_invalid_subscription_keys_dropped(standin, sender, keyring) -> None:
    ss = standin.new_subscription()
    sub = subscription(ss, keyring)
    sub.auth = base64.urlsafe_b64encode(b"short").decode()
    assert (await sender.send(sub, b"x", urgency="high", ttl=60)).outcome == "dropped"
    sub = subscription(ss, keyring)
    sub.p256dh = "B" + "A" * 86
    assert (await sender.send(sub, b"x", urgency="high", ttl=60)).outcome == "dropped"
    assert standin.records_for(ss) == []


async def test_connections_are_reused(standin, sender, keyring) -> None:
    ss = standin.new_subscription()
    sub = subscription(ss, keyring)
    for i in range(10):
        assert (await sender.send(sub, b"%d" % i, urgency="high", ttl=60)).ok
    peers = {r.peer for r in await standin.wait_for(ss, 10)}
    assert len(peers) == 1


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://127.0.0.1/push/x",
        "https://10.0.0.1/push/x",
        "https://[::ffff:127.0.0.1]/push/x",
        "https://[::1]/push/x",
        "https://169.254.169.254/push/x",
        "https://100.64.0.1/push/x",
        "https://[fc00::1]/push/x",
        "https://localhost/push/x",
    ],
)
async def test_ssrf_endpoints_refused(keyring, endpoint) -> None:
    async with WebPushSender(make_cfg(allow_private_endpoints=False), keyring) as sender:
        sub = WebPushSubscription("alice", "s", endpoint, "B" + "A" * 86, "A" * 22, keyring.current.key_id)
        sub.p256dh, sub.auth = _valid_keys()
        result = await sender.send(sub, b"x", urgency="high", ttl=60)
    assert result.outcome == "refused" and result.attempts == 0


async def test_standin_accepted_only_with_allow_private(standin, keyring) -> None:
    ss = standin.new_subscription()
    sub = subscription(ss, keyring)
    async with WebPushSender(make_cfg(allow_private_endpoints=False), keyring) as strict:
        assert (await strict.send(sub, b"x", urgency="high", ttl=60)).outcome == "refused"
    async with WebPushSender(make_cfg(allow_private_endpoints=True), keyring) as lax:
        assert (await lax.send(sub, b"x", urgency="high", ttl=60)).outcome == "ok"
    assert len(standin.records_for(ss)) == 1


async def test_dns_rebinding_refused_at_connect_time(keyring) -> None:
    """The check sees a public address, the connection-time lookup a loopback one."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])

    async def rebinding_gai(host, port, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)) for addr in next(answers)]

    resolver = PinnedResolver(getaddrinfo=rebinding_gai, pin_ttl=0.0)  # pin expires at once
    async with WebPushSender(make_cfg(allow_private_endpoints=False), keyring, resolver=resolver) as sender:
        sub = WebPushSubscription("alice", "s", "https://rebind.test/push", "", "", keyring.current.key_id)
        sub.p256dh, sub.auth = _valid_keys()
        result = await sender.send(sub, b"x", urgency="high", ttl=60)
    assert result.outcome == "refused"
    assert result.attempts == 1


async def test_rotation_old_key_keeps_signing(standin, sender, keyring) -> None:
    old = keyring.current
    new = await keyring.rotate()
    a, b, c = standin.new_subscription(), standin.new_subscription(), standin.new_subscription()
    assert (await sender.send(subscription(a, keyring, old.key_id), b"a", urgency="high", ttl=60)).ok
    assert (await sender.send(subscription(b, keyring, new.key_id), b"b", urgency="high", ttl=60)).ok
    assert (await sender.send(subscription(c, keyring, "ffffffffffffffff"), b"c", urgency="high", ttl=60)).ok
    (ra,), (rb,), (rc,) = [await standin.wait_for(s, 1) for s in (a, b, c)]
    assert ra.problems == rb.problems == rc.problems == []
    assert ra.vapid_key == old.public_key_b64
    assert rb.vapid_key == new.public_key_b64
    assert rc.vapid_key == new.public_key_b64  # unknown key id: the current key


def _valid_keys() -> tuple[str, str]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = (
        ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    return (
        base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        base64.urlsafe_b64encode(b"0123456789abcdef").rstrip(b"=").decode(),
    )


async def test_standin_accepts_an_independent_sender_and_flags_bad_requests(standin, keyring) -> None:
    """The stand-in's checks, validated with pywebpush (another implementation) and broken requests."""
    import aiohttp
    from pywebpush import webpush

    ss = standin.new_subscription()
    info = {"endpoint": ss.endpoint, "keys": {"p256dh": ss.p256dh, "auth": ss.auth}}
    await asyncio.to_thread(
        webpush,
        info,
        data=b"from pywebpush",
        vapid_private_key=str(keyring.current.path),
        vapid_claims={"sub": "mailto:x@example.org"},
        ttl=30,
    )
    (good,) = await standin.wait_for(ss, 1)
    assert good.problems == [] and good.plaintext == b"from pywebpush"

    # Wrong aud, no Content-Encoding / TTL, a body that does not decrypt.
    wrong_aud = keyring.current.sign_header("https://elsewhere.example/", "mailto:x@example.org")
    # A token signed by one key but presented with another key.
    old = keyring.current
    new = await keyring.rotate()
    token = old.sign_header(standin.base_url, "mailto:x@example.org").split(",k=")[0]
    forged = f"{token},k={new.public_key_b64}"
    async with aiohttp.ClientSession() as http:
        for auth in (wrong_aud, forged):
            async with http.post(ss.endpoint, data=b"\0" * 100, headers={"Authorization": auth}) as resp:
                assert resp.status == 201
    bad_aud, bad_sig = standin.records_for(ss)[1:]
    assert bad_aud.plaintext is None
    joined = " | ".join(bad_aud.problems)
    assert "Content-Encoding" in joined and "TTL" in joined and "aud" in joined and "decryption failed" in joined
    assert any("signature does not verify" in p for p in bad_sig.problems)
