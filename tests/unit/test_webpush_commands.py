"""The WEBPUSH command handlers with a real SqliteStore, real VAPID keys, the real sender and the stand-in.

Only the client session is a fake (it collects the untagged lines).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pushproxy.extensions.webpush.process import SILENCED_FOR_SESSION, WebPushProcess
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription
from pushproxy.imap.parse import Atom, Command
from tests.support.push_standin import Answer, PushStandin
from tests.support.webpush_env import (
    FakeContext,
    WebPushEnv,
    close_env,
    eventually,
    make_env,
    metric_value,
    sha256,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def standin() -> Iterator[PushStandin]:
    with PushStandin() as s:
        yield s


@pytest.fixture
async def env(tmp_path: Path, standin: PushStandin) -> AsyncIterator[WebPushEnv]:
    e = await make_env(tmp_path, standin)
    yield e
    await close_env(e)


def webpush_line(sub_id: str, endpoint: str, state: str) -> bytes:
    return f'WEBPUSH {sub_id} "{endpoint}" {state}'.encode()


# --- capability and GETVAPID -------------------------------------------------------------


async def test_extension_declaration(env: WebPushEnv) -> None:
    assert env.ext.name == "webpush"
    assert env.ext.capabilities == (b"WEBPUSH",)
    assert env.ext.pre_auth_capabilities == ()
    assert set(env.ext.commands) == {"GETVAPID", "WEBPUSH", "ACKWEBPUSH", "LWEBPUSH", "SILWEBPUSH"}


async def test_getvapid(env: WebPushEnv) -> None:
    ctx = FakeContext()
    reply, lines = await env.run("GETVAPID", ctx)
    assert (reply.status, reply.text) == ("OK", "GETVAPID completed")
    key = env.keyring.current.public_key_b64
    assert lines == [b"VAPID " + key.encode()]
    assert len(key) == 87 and key.startswith("B")
    reply, lines = await env.run("GETVAPID extra", ctx)
    assert reply.status == "BAD" and lines == []


async def test_commands_need_an_account(env: WebPushEnv) -> None:
    ctx = FakeContext(account=None)
    for line in ("WEBPUSH a NIL", "ACKWEBPUSH tok", "LWEBPUSH", "SILWEBPUSH a"):
        reply, _ = await env.run(line, ctx)
        assert reply.status == "BAD"


# --- WEBPUSH create and the verification push ---------------------------------------------


async def test_create_answers_vapid_and_webpush_nil_then_sends_exactly_one_ack_push(env: WebPushEnv) -> None:
    ss = env.standin.new_subscription()
    ctx = FakeContext()
    sent_before = metric_value("pushproxy_webpush_verifications_total", {"result": "sent"})
    reply, lines = await env.subscribe(ctx, "sub-1", ss)
    assert (reply.status, reply.text) == ("OK", "WEBPUSH completed")
    assert lines == [b"VAPID " + env.keyring.current.public_key_b64.encode(), webpush_line("sub-1", ss.endpoint, "NIL")]

    await env.standin.wait_for(ss, 1)
    await env.settle()  # the verification push (and any second one) has been answered
    records = env.standin.records_for(ss)
    assert len(records) == 1
    push = records[0]
    assert push.problems == []
    assert push.headers["Urgency"] == "high"
    # Changed with issue 13: the verification push lives as long as the subscription
    # waits for its ACK (webpush.ack_expiry, 24 h by default), not 300 s.
    assert env.config.webpush.ack_ttl is None
    assert push.headers["TTL"] == str(int(env.config.webpush.ack_expiry))
    assert push.vapid_key == env.keyring.current.public_key_b64
    token = env.last_token(ss)
    assert len(token) >= 22  # >= 128 bits of base64url

    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "sub-1")
    assert sub is not None and not sub.active
    assert sub.ack_token_hash == sha256(token)  # only the hash is stored
    assert sub.ack_expires == pytest.approx(env.clock.now + env.config.webpush.ack_expiry)
    assert sub.vapid_key_id == env.keyring.current.key_id
    assert env.registrations == [("alice", "sess-1")]
    await env.settle()
    assert metric_value("pushproxy_webpush_verifications_total", {"result": "sent"}) == sent_before + 1


async def test_ok_does_not_wait_for_the_push_service(env: WebPushEnv) -> None:
    ss = env.standin.new_subscription()
    env.standin.program(ss, Answer.hanging(30))
    ctx = FakeContext()
    reply, _ = await env.subscribe(ctx, "slow", ss, wait=False)
    assert reply.status == "OK"
    # The verification push is still in flight (the stand-in holds it) after the OK.
    records = await env.standin.wait_for(ss, 1, accepted_only=False)
    assert records[0].answered is None
    assert any(not t.done() for t in env.ext.handlers._background)
    assert (await env.store.queries(WebPushQueries).get_subscription("alice", "slow")) is not None


async def test_missing_auth_is_bad_with_that_reason(env: WebPushEnv) -> None:
    ss = env.standin.new_subscription()
    reply, lines = await env.run(f'WEBPUSH s "{ss.endpoint}" {ss.p256dh}', FakeContext())
    assert reply.status == "BAD" and "auth" in reply.text and lines == []
    assert await env.store.queries(WebPushQueries).count_subscriptions("alice") == 0


async def test_malformed_keys_are_bad(env: WebPushEnv) -> None:
    ss = env.standin.new_subscription()
    reply, _ = await env.run(f'WEBPUSH s "{ss.endpoint}" {ss.p256dh[:-4]} {ss.auth}', FakeContext())
    assert reply.status == "BAD"
    assert env.standin.records == []


async def test_update_with_a_changed_field_deactivates_and_needs_a_new_ack(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    await env.activate(ctx, "s", ss)
    ss2 = env.standin.new_subscription()  # new endpoint and keys under the same id
    reply, lines = await env.subscribe(ctx, "s", ss2)
    assert reply.status == "OK"
    assert lines[1] == webpush_line("s", ss2.endpoint, "NIL")
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and not sub.active and sub.endpoint == ss2.endpoint
    token = env.last_token(ss2)
    reply, lines = await env.run(f"ACKWEBPUSH s {token}", ctx)
    assert reply.status == "OK" and lines == [webpush_line("s", ss2.endpoint, "0")]


async def test_changing_only_the_auth_secret_deactivates(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    await env.activate(ctx, "s", ss)
    other_auth = env.standin.new_subscription().auth
    reply, _ = await env.run(f'WEBPUSH s "{ss.endpoint}" {ss.p256dh} {other_auth}', ctx)
    assert reply.status == "OK"
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and not sub.active and sub.auth == other_auth


async def test_resending_an_active_subscription_unchanged_keeps_it_active_without_push(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    await env.activate(ctx, "s", ss)
    pushes = len(env.standin.records_for(ss))
    reply, lines = await env.run(f'WEBPUSH s "{ss.endpoint}" {ss.p256dh} {ss.auth}', ctx)
    assert reply.status == "OK"
    assert lines == [b"VAPID " + env.keyring.current.public_key_b64.encode(), webpush_line("s", ss.endpoint, "0")]
    await env.settle()
    assert len(env.standin.records_for(ss)) == pushes
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and sub.active


async def test_resending_an_unacknowledged_subscription_unchanged_sends_no_new_push(env: WebPushEnv) -> None:
    # Changed with issue 9 item 5 (this test used to assert that an identical WEBPUSH
    # issues a new token and push): repeating an identical WEBPUSH no longer resends
    # the verification push; the token already sent stays valid.
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    await env.subscribe(ctx, "s", ss)
    first = env.last_token(ss)
    for _ in range(3):
        reply, lines = await env.subscribe(ctx, "s", ss, wait=False)
        assert reply.status == "OK"
        assert lines == [b"VAPID " + env.keyring.current.public_key_b64.encode(), webpush_line("s", ss.endpoint, "NIL")]
    await env.settle()
    assert len(env.standin.records_for(ss)) == 1
    reply, _ = await env.run(f"ACKWEBPUSH {first}", ctx)
    assert reply.status == "OK"


async def test_a_changed_unacknowledged_subscription_gets_a_new_token(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss, other = env.standin.new_subscription(), env.standin.new_subscription()
    await env.subscribe(ctx, "s", ss)
    first = env.last_token(ss)
    await env.subscribe(ctx, "s", other)  # another endpoint and keys: a new version
    second = env.last_token(other)
    assert first != second
    reply, _ = await env.run(f"ACKWEBPUSH {first}", ctx)
    assert reply.status == "NO"  # bound to the version it was sent for
    reply, _ = await env.run(f"ACKWEBPUSH {second}", ctx)
    assert reply.status == "OK"


async def test_an_undelivered_verification_push_is_sent_again_on_an_identical_webpush(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    env.standin.program(ss, Answer.status(400))
    await env.subscribe(ctx, "s", ss, wait=False)
    await env.settle()
    assert len(env.standin.records_for(ss, accepted_only=False)) == 1
    await env.subscribe(ctx, "s", ss)  # the first push was refused: this one is sent
    reply, _ = await env.run(f"ACKWEBPUSH {env.last_token(ss)}", ctx)
    assert reply.status == "OK"


# --- verification-push amplification (issue 9 item 5) -------------------------------------------


async def test_verification_pushes_per_endpoint_are_bounded(tmp_path: Path, standin: PushStandin) -> None:
    """Regression: one session could make the proxy POST ~1,300 verification pushes a minute to one URL."""
    env = await make_env(tmp_path, standin, verification_per_endpoint_per_hour=5)
    try:
        ctx = FakeContext()
        target = standin.new_subscription()
        limited_before = metric_value("pushproxy_webpush_verifications_total", {"result": "rate_limited"})
        statuses = []
        for i in range(12):
            # Alternate ids so that every command is a new version (not an identical repeat).
            reply, lines = await env.subscribe(ctx, f"s{i % 2}-{i}", target, wait=False)
            statuses.append((reply.status, reply.code))
            if reply.status == "NO":
                assert lines == [] and "endpoint" in reply.text
            else:
                await env.run(f"WEBPUSH s{i % 2}-{i} NIL", ctx)  # stay under the subscription limit
        await env.settle()
        assert statuses == [("OK", None)] * 5 + [("NO", "LIMIT")] * 7
        assert len(standin.records_for(target)) == 5
        assert metric_value("pushproxy_webpush_verifications_total", {"result": "rate_limited"}) == limited_before + 7
        # Another account is refused for that endpoint too (the bound is the endpoint's) ...
        reply, _ = await env.subscribe(FakeContext("bob", "b"), "x", target, wait=False)
        assert (reply.status, reply.code) == ("NO", "LIMIT")
        # ... and other endpoints are still served.
        reply, _ = await env.subscribe(ctx, "fresh", standin.new_subscription())
        assert reply.status == "OK"
    finally:
        await close_env(env)


async def test_verification_pushes_per_account_are_bounded(tmp_path: Path, standin: PushStandin) -> None:
    env = await make_env(tmp_path, standin, verification_per_account_per_hour=3, max_subscriptions_per_account=50)
    try:
        ctx = FakeContext()
        targets = [standin.new_subscription() for _ in range(5)]
        replies = [(await env.subscribe(ctx, f"s{i}", t, wait=False))[0] for i, t in enumerate(targets)]
        assert [(r.status, r.code) for r in replies] == [("OK", None)] * 3 + [("NO", "LIMIT")] * 2
        assert "account" in replies[-1].text
        assert (
            await env.store.queries(WebPushQueries).get_subscription("alice", "s4") is None
        )  # nothing stored when refused
        await env.settle()
        assert sum(len(standin.records_for(t)) for t in targets) == 3
        reply, _ = await env.subscribe(FakeContext("bob", "b"), "s", targets[4])  # bob has his own budget
        assert reply.status == "OK"
    finally:
        await close_env(env)


async def test_key_rotation_then_webpush_deactivates_and_reacks_under_the_new_key(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    sub = await env.activate(ctx, "s", ss)
    old_key = env.keyring.current
    assert sub.vapid_key_id == old_key.key_id
    new_key = await env.keyring.rotate()
    reply, lines = await env.subscribe(ctx, "s", ss)
    assert reply.status == "OK"
    assert lines == [b"VAPID " + new_key.public_key_b64.encode(), webpush_line("s", ss.endpoint, "NIL")]
    sub2 = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub2 is not None and not sub2.active
    assert env.standin.records_for(ss)[-1].vapid_key == new_key.public_key_b64
    reply, _ = await env.run(f"ACKWEBPUSH {env.last_token(ss)}", ctx)
    assert reply.status == "OK"
    sub3 = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub3 is not None and sub3.active and sub3.vapid_key_id == new_key.key_id


# --- delete -----------------------------------------------------------------------------------


async def test_delete_and_delete_unknown(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    await env.activate(ctx, "s", ss)
    env.registrations.clear()
    reply, lines = await env.run("WEBPUSH s NIL", ctx)
    assert (reply.status, lines) == ("OK", [])
    assert await env.store.queries(WebPushQueries).get_subscription("alice", "s") is None
    assert env.registrations == [("alice", "sess-1")]
    reply, lines = await env.run("WEBPUSH never-seen NIL", ctx)
    assert (reply.status, lines) == ("OK", [])


# --- ACKWEBPUSH -----------------------------------------------------------------------------------


async def test_ack_activates_once(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    await env.subscribe(ctx, "s", ss)
    token = env.last_token(ss)
    env.registrations.clear()
    acked_before = metric_value("pushproxy_webpush_verifications_total", {"result": "acknowledged"})
    reply, lines = await env.run(f"ACKWEBPUSH {token}", ctx)
    assert (reply.status, reply.text) == ("OK", "ACKWEBPUSH completed")
    assert lines == [webpush_line("s", ss.endpoint, "0")]
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and sub.active and sub.ack_token_hash is None and sub.ack_expires is None
    assert sub.vapid_key_id == env.keyring.current.key_id
    assert env.registrations == [("alice", "sess-1")]
    assert metric_value("pushproxy_webpush_verifications_total", {"result": "acknowledged"}) == acked_before + 1
    reply, lines = await env.run(f"ACKWEBPUSH {token}", ctx)  # used
    assert reply.status == "NO" and lines == []


async def test_ack_with_id_form(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    await env.subscribe(ctx, "s", ss)
    token = env.last_token(ss)
    reply, _ = await env.run(f"ACKWEBPUSH other {token}", ctx)
    assert reply.status == "NO"
    reply, lines = await env.run(f"ACKWEBPUSH s {token}", ctx)
    assert reply.status == "OK" and lines == [webpush_line("s", ss.endpoint, "0")]


async def test_ack_unknown_expired_and_other_accounts_token(env: WebPushEnv) -> None:
    alice, bob = FakeContext("alice", "a1"), FakeContext("bob", "b1")
    ss = env.standin.new_subscription()
    await env.subscribe(alice, "s", ss)
    token = env.last_token(ss)
    reply, _ = await env.run("ACKWEBPUSH AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", alice)
    assert reply.status == "NO"
    reply, _ = await env.run(f"ACKWEBPUSH {token}", bob)
    assert reply.status == "NO"
    env.clock.advance(env.config.webpush.ack_expiry + 1)
    reply, _ = await env.run(f"ACKWEBPUSH {token}", alice)
    assert reply.status == "NO" and "expired" in reply.text
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and not sub.active


async def test_ack_verification_410_deletes_the_subscription(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    env.standin.program(ss, Answer.status(410))
    reply, _ = await env.subscribe(ctx, "s", ss, wait=False)
    assert reply.status == "OK"
    await env.standin.wait_for(ss, 1, accepted_only=False)
    await env.settle()
    assert await env.store.queries(WebPushQueries).get_subscription("alice", "s") is None


# --- limit and refused endpoints ---------------------------------------------------------------------


async def test_limit_counts_unacknowledged_but_not_expired(tmp_path: Path, standin: PushStandin) -> None:
    env = await make_env(tmp_path, standin, max_subscriptions_per_account=3)
    try:
        ctx = FakeContext()
        subs = [standin.new_subscription() for _ in range(4)]
        await env.activate(ctx, "s0", subs[0])
        for i in (1, 2):
            reply, _ = await env.subscribe(ctx, f"s{i}", subs[i])  # unacknowledged: they count
            assert reply.status == "OK"
        reply, lines = await env.subscribe(ctx, "s3", subs[3], wait=False)
        assert (reply.status, reply.code) == ("NO", "LIMIT") and lines == []
        assert standin.records_for(subs[3]) == []
        # Updating an existing one is not a new subscription (sent unchanged: no new push).
        reply, _ = await env.subscribe(ctx, "s2", subs[2], wait=False)
        assert reply.status == "OK"
        # Another account has its own limit.
        reply, _ = await env.subscribe(FakeContext("bob", "b"), "s3", subs[3])
        assert reply.status == "OK"
        # Once the unacknowledged ones expire, there is room again.
        env.clock.advance(env.config.webpush.ack_expiry + 1)
        expired_before = metric_value("pushproxy_webpush_verifications_total", {"result": "expired"})
        reply, _ = await env.subscribe(ctx, "s3", subs[3])
        assert reply.status == "OK"
        assert metric_value("pushproxy_webpush_verifications_total", {"result": "expired"}) == expired_before + 2
        assert {s.sub_id for s in await env.store.queries(WebPushQueries).subscriptions_for_account("alice")} == {
            "s0",
            "s3",
        }
    finally:
        await close_env(env)


async def test_default_limit_is_16(env: WebPushEnv) -> None:
    ctx = FakeContext()
    for i in range(16):
        reply, _ = await env.subscribe(ctx, f"s{i}", env.standin.new_subscription(), wait=False)
        assert reply.status == "OK"
    reply, _ = await env.subscribe(ctx, "s16", env.standin.new_subscription(), wait=False)
    assert (reply.status, reply.code) == ("NO", "LIMIT")


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://127.0.0.1/push/x",
        "https://10.0.0.1/push/x",
        "https://[::ffff:127.0.0.1]/push/x",
        "https://[::1]:8443/push/x",
        "https://169.254.169.254/latest",
        "https://localhost/push/x",
        "http://push.example.net/push/x",
        "ftp://push.example.net/x",
        "not a url",
        "https://user:pw@push.example.net/x",
        "https://push.exämple.net/x",
    ],
)
async def test_refused_endpoints_get_no_without_details(tmp_path: Path, standin: PushStandin, endpoint: str) -> None:
    env = await make_env(tmp_path, standin, allow_private_endpoints=False)
    try:
        ss = standin.new_subscription()
        reply, lines = await env.run(f'WEBPUSH s "{endpoint}" {ss.p256dh} {ss.auth}', FakeContext())
        assert reply.status == "NO" and reply.code is None, reply
        assert reply.text.startswith("Endpoint refused: ")
        assert "127.0.0.1" not in reply.text and "push.example" not in reply.text and "169.254" not in reply.text
        assert lines == []
        assert await env.store.queries(WebPushQueries).count_subscriptions("alice") == 0
        assert env.registrations == []
    finally:
        await close_env(env)


# --- LWEBPUSH -----------------------------------------------------------------------------------------


async def test_lwebpush_lists_states_but_never_keys(env: WebPushEnv) -> None:
    alice = FakeContext()
    a, b = env.standin.new_subscription(), env.standin.new_subscription()
    await env.activate(alice, "active-one", a)
    await env.subscribe(alice, "waiting", b)
    await env.subscribe(FakeContext("bob", "b1"), "bobs", env.standin.new_subscription())
    expected = [webpush_line("active-one", a.endpoint, "0"), webpush_line("waiting", b.endpoint, "NIL")]
    for line in ("LWEBPUSH", 'LWEBPUSH "*"'):
        reply, lines = await env.run(line, alice)
        assert (reply.status, reply.text) == ("OK", "LWEBPUSH completed")
        assert sorted(lines) == sorted(expected)
    # "LWEBPUSH *": the wildcard atom (built directly: see the report about the parser).
    reply, lines = await env.run_command(Command(b"t", "LWEBPUSH", [Atom("*")]), alice)
    assert reply.status == "OK" and sorted(lines) == sorted(expected)
    reply, lines = await env.run("LWEBPUSH waiting", alice)
    assert lines == [webpush_line("waiting", b.endpoint, "NIL")]
    reply, lines = await env.run("LWEBPUSH bobs", alice)
    assert (reply.status, lines) == ("OK", [])
    _, lines = await env.run("LWEBPUSH", alice)
    everything = b"".join(lines)
    for secret in (a.p256dh, a.auth, b.p256dh, b.auth):
        assert secret.encode() not in everything


async def test_lwebpush_hides_expired_unacknowledged(env: WebPushEnv) -> None:
    ctx = FakeContext()
    await env.subscribe(ctx, "waiting", env.standin.new_subscription())
    env.clock.advance(env.config.webpush.ack_expiry + 1)
    reply, lines = await env.run("LWEBPUSH", ctx)
    assert (reply.status, lines) == ("OK", [])


# --- SILWEBPUSH -----------------------------------------------------------------------------------------


async def test_silence_until_the_connection_ends(env: WebPushEnv) -> None:
    ctx, other = FakeContext(session_id="s-one"), FakeContext(session_id="s-two")
    ss = env.standin.new_subscription()
    await env.activate(ctx, "s", ss)
    reply, lines = await env.run("SILWEBPUSH s", ctx)
    assert (reply.status, reply.text) == ("OK", "SILWEBPUSH completed")
    assert lines == [webpush_line("s", ss.endpoint, str(SILENCED_FOR_SESSION))]
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and sub.silenced_session == env.delivery.process.session_silence_key("s-one")
    _, lines = await env.run("LWEBPUSH", other)  # seen from another connection too
    assert lines == [webpush_line("s", ss.endpoint, "4294967295")]
    await env.ext.session_closed(other)  # not the silencing connection
    _, lines = await env.run("LWEBPUSH s", other)
    assert lines == [webpush_line("s", ss.endpoint, "4294967295")]
    await env.ext.session_closed(ctx)
    _, lines = await env.run("LWEBPUSH s", other)
    assert lines == [webpush_line("s", ss.endpoint, "0")]


async def test_silence_for_seconds_and_lifting(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    await env.activate(ctx, "s", ss)
    reply, lines = await env.run("SILWEBPUSH s 100", ctx)
    assert reply.status == "OK" and lines == [webpush_line("s", ss.endpoint, "100")]
    env.clock.advance(40)
    _, lines = await env.run("LWEBPUSH s", ctx)
    assert lines == [webpush_line("s", ss.endpoint, "60")]
    reply, lines = await env.run("SILWEBPUSH s 0", ctx)
    assert reply.status == "OK" and lines == [webpush_line("s", ss.endpoint, "0")]
    await env.run("SILWEBPUSH s 10", ctx)
    env.clock.advance(10)
    _, lines = await env.run("LWEBPUSH s", ctx)
    assert lines == [webpush_line("s", ss.endpoint, "0")]


async def test_silence_for_seconds_replaces_a_connection_silence(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    await env.activate(ctx, "s", ss)
    await env.run("SILWEBPUSH s", ctx)
    _, lines = await env.run("SILWEBPUSH s 30", ctx)
    assert lines == [webpush_line("s", ss.endpoint, "30")]
    await env.ext.session_closed(ctx)
    _, lines = await env.run("LWEBPUSH s", ctx)
    assert lines == [webpush_line("s", ss.endpoint, "30")]


async def test_silence_unknown_and_inactive(env: WebPushEnv) -> None:
    ctx = FakeContext()
    reply, _ = await env.run("SILWEBPUSH nope", ctx)
    assert reply.status == "NO"
    ss = env.standin.new_subscription()
    await env.subscribe(ctx, "waiting", ss)
    reply, lines = await env.run("SILWEBPUSH waiting 60", ctx)
    assert reply.status == "OK" and lines == [webpush_line("waiting", ss.endpoint, "NIL")]
    reply, _ = await env.run("SILWEBPUSH waiting -1", ctx)
    assert reply.status == "BAD"


async def test_a_silence_of_an_earlier_process_does_not_count(env: WebPushEnv) -> None:
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    sub = await env.activate(ctx, "s", ss)
    sub.silenced_session = "0123456789abcdef:sess-1"
    assert not sub.silenced_session.startswith(env.delivery.process.instance_id)
    await env.store.queries(WebPushQueries).put_subscription(sub)
    _, lines = await env.run("LWEBPUSH s", ctx)
    assert lines == [webpush_line("s", ss.endpoint, "0")]


async def test_processes_share_neither_silences_nor_locks(env: WebPushEnv) -> None:
    # Instance id and account locks are the process object's (made in the extension's start),
    # not module globals: a second process object in the same interpreter is another proxy.
    ctx = FakeContext(session_id="s-one")
    ss = env.standin.new_subscription()
    await env.activate(ctx, "s", ss)
    await env.run("SILWEBPUSH s", ctx)
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None
    mine, other = env.delivery.process, WebPushProcess()
    assert env.ext.handlers.process is mine
    assert mine.silence_remaining(sub, env.clock()) == SILENCED_FOR_SESSION
    assert other.instance_id != mine.instance_id
    assert other.silence_remaining(sub, env.clock()) == 0
    assert mine.account_lock("alice") is mine.account_lock("alice")
    assert other.account_lock("alice") is not mine.account_lock("alice")
    assert WebPushProcess("fixed").session_silence_key("s-1") == "fixed:s-1"


# --- maintenance ------------------------------------------------------------------------------------------


async def test_sweep_deletes_expired_and_sets_the_gauge(env: WebPushEnv) -> None:
    alice, bob = FakeContext(), FakeContext("bob", "b")
    await env.activate(alice, "on", env.standin.new_subscription())
    await env.subscribe(alice, "waiting", env.standin.new_subscription())
    await env.subscribe(bob, "waiting", env.standin.new_subscription())
    await env.activate(bob, "quiet", env.standin.new_subscription())
    await env.run("SILWEBPUSH quiet 300", bob)
    await env.ext.handlers.sweep()
    gauge = {
        s: metric_value("pushproxy_webpush_subscriptions", {"state": s}) for s in ("inactive", "active", "silenced")
    }
    assert gauge == {"inactive": 2, "active": 1, "silenced": 1}
    env.registrations.clear()
    env.clock.advance(env.config.webpush.ack_expiry + 1)
    assert await env.ext.handlers.sweep() == 2
    remaining = await env.store.queries(WebPushQueries).list_subscriptions()
    assert sorted((s.account, s.sub_id) for s in remaining) == [("alice", "on"), ("bob", "quiet")]
    assert sorted(env.registrations) == [("alice", None), ("bob", None)]
    assert metric_value("pushproxy_webpush_subscriptions", {"state": "inactive"}) == 0


async def test_a_failing_sweep_is_one_line_and_one_count_and_the_next_one_runs(
    env: WebPushEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The maintenance loop's policy (the extensions' Housekeeping): no traceback, the loop goes on."""
    handlers = env.ext.handlers
    sweeps = 0

    async def broken() -> int:
        nonlocal sweeps
        sweeps += 1
        raise RuntimeError("a bug with a secret https://push.example.net/secret in its text")

    before = metric_value("pushproxy_extension_errors_total", {"extension": "webpush", "hook": "housekeeping"})
    handlers.sweep = broken  # type: ignore[method-assign]
    handlers._sweep_interval = 0.01
    task = asyncio.ensure_future(handlers._maintain())
    try:
        await eventually(lambda: sweeps >= 3, what="three sweeps")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    counted = metric_value("pushproxy_extension_errors_total", {"extension": "webpush", "hook": "housekeeping"})
    assert counted - before >= 3
    lines = [r for r in caplog.records if "housekeeping failed" in r.getMessage()]
    assert len(lines) >= 3 and all(r.exc_info is None for r in lines)
    assert not any("secret" in r.getMessage() for r in caplog.records)


async def test_close_stops_background_work(env: WebPushEnv) -> None:
    ss = env.standin.new_subscription()
    env.standin.program(ss, Answer.hanging(30))
    await env.subscribe(FakeContext(), "s", ss, wait=False)
    await env.standin.wait_for(ss, 1, accepted_only=False)
    await env.ext.stop()  # the extension stops its handlers' background work
    await eventually(lambda: not env.ext.handlers._background, what="background tasks to end")


async def test_store_row_is_a_plain_subscription(env: WebPushEnv) -> None:
    ss = env.standin.new_subscription()
    await env.subscribe(FakeContext(), "s", ss)
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert isinstance(sub, WebPushSubscription)
    assert (sub.endpoint, sub.p256dh, sub.auth) == (ss.endpoint, ss.p256dh, ss.auth)
    assert sub.want_changes is False and sub.failures == 0


async def test_any_astring_id_works_end_to_end(env: WebPushEnv) -> None:
    """Issue 13: ids are any astring up to 256 bytes; responses quote those that are not atoms."""
    ctx = FakeContext()
    ss = env.standin.new_subscription()
    reply, lines = await env.run(f'WEBPUSH "my phone (2)" "{ss.endpoint}" {ss.p256dh} {ss.auth}', ctx)
    assert reply.status == "OK"
    assert lines[1] == f'WEBPUSH "my phone (2)" "{ss.endpoint}" NIL'.encode()
    await env.standin.wait_for(ss, 1)
    reply, lines = await env.run(f'ACKWEBPUSH "my phone (2)" {env.last_token(ss)}', ctx)
    assert reply.status == "OK" and lines == [f'WEBPUSH "my phone (2)" "{ss.endpoint}" 0'.encode()]
    reply, lines = await env.run('LWEBPUSH "my phone (2)"', ctx)
    assert lines == [f'WEBPUSH "my phone (2)" "{ss.endpoint}" 0'.encode()]
    reply, _ = await env.run(b'WEBPUSH "' + b"x" * 257 + b'" NIL', ctx)
    assert reply.status == "BAD"
    # Non-ASCII: accepted, sent back as a literal (no UTF8=ACCEPT needed to read it).
    other = env.standin.new_subscription()
    reply, lines = await env.run(f'WEBPUSH "téléphone" "{other.endpoint}" {other.p256dh} {other.auth}', ctx)
    assert reply.status == "OK" and lines[1].startswith(b"WEBPUSH {11}\r\nt\xc3\xa9l\xc3\xa9phone ")
