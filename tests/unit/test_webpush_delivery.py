"""WebPushDelivery: mail events to subscriptions, against the stand-in push service and a real store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pushproxy.events import Expunge, FlagChange, MessageInfo, NewMail
from pushproxy.extensions.webpush.payload import MAX_PLAINTEXT
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription
from pushproxy.imap.envelope import envelope_from_fields
from tests.support.push_standin import Answer, PushStandin, StandinSubscription
from tests.support.webpush_env import FakeContext, WebPushEnv, close_env, make_env, metric_value

pytestmark = pytest.mark.timeout(60)

ENVELOPE = envelope_from_fields(
    "Mon, 7 Feb 1994 21:52:25 -0800", "afternoon meeting", "Fred <fred@example.org>", "<x@y>"
)


@pytest.fixture
def standin() -> Iterator[PushStandin]:
    with PushStandin() as s:
        yield s


@pytest.fixture
async def env(tmp_path: Path, standin: PushStandin) -> AsyncIterator[WebPushEnv]:
    e = await make_env(tmp_path, standin, retry_budget=1)
    yield e
    await close_env(e)


async def active(env: WebPushEnv, sub_id: str, account: str = "alice") -> tuple[StandinSubscription, int]:
    """An acknowledged subscription; (stand-in subscription, pushes it has received so far)."""
    ss = env.standin.new_subscription()
    await env.activate(FakeContext(account, f"sess-{account}"), sub_id, ss)
    await env.settle()
    return ss, len(env.standin.records_for(ss))


def new_mail(*uids: int, mailbox: str = "INBOX", account: str = "alice", envelope: bytes | None = ENVELOPE) -> NewMail:
    return NewMail(account, mailbox, tuple(MessageInfo(uid, (), envelope) for uid in uids))


async def test_new_mail_goes_to_active_subscriptions(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    await env.delivery.deliver(new_mail(4392))
    records = env.standin.records_for(ss)
    assert len(records) == n + 1
    push = records[-1]
    assert push.problems == []
    assert push.plaintext == b'* SELECT "INBOX"\r\n* 4392 UIDFETCH (FLAGS () ENVELOPE ' + ENVELOPE + b")\r\n"
    assert push.headers["Urgency"] == "high"
    assert push.headers["TTL"] == str(env.config.webpush.ttl)
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and sub.last_success is not None and sub.failures == 0


async def test_inbox_matches_case_insensitively_other_mailboxes_are_not_watched(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    await env.delivery.deliver(new_mail(1, mailbox="Archive"))
    assert len(env.standin.records_for(ss)) == n
    await env.delivery.deliver(new_mail(2, mailbox="inbox"))
    assert len(env.standin.records_for(ss)) == n + 1


async def test_an_unacknowledged_subscription_never_gets_mail(env: WebPushEnv) -> None:
    ss = env.standin.new_subscription()
    await env.subscribe(FakeContext(), "waiting", ss)
    await env.settle()
    assert len(env.standin.records_for(ss)) == 1  # the verification push only
    await env.delivery.deliver(new_mail(7))
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "waiting")
    assert sub is not None
    sub.want_changes = True
    await env.store.queries(WebPushQueries).put_subscription(sub)
    await env.delivery.deliver(Expunge("alice", "INBOX", (7,)))
    await env.delivery.deliver(FlagChange("alice", "INBOX", ((7, ("\\Seen",)),)))
    await env.delivery.flush()
    records = env.standin.records_for(ss)
    assert len(records) == 1 and records[0].plaintext is not None
    assert records[0].plaintext.startswith(b"* ACKWEBPUSH ")


async def test_other_accounts_subscriptions_get_nothing(env: WebPushEnv) -> None:
    bobs, n = await active(env, "s", account="bob")
    await env.delivery.deliver(new_mail(1))
    assert len(env.standin.records_for(bobs)) == n


async def test_silenced_subscriptions_get_nothing_and_nothing_is_queued(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    ctx = FakeContext("alice", "sess-alice")
    await env.run("SILWEBPUSH s 60", ctx)
    await env.delivery.deliver(new_mail(1))
    assert len(env.standin.records_for(ss)) == n
    env.clock.advance(61)
    await env.delivery.deliver(new_mail(2))
    records = env.standin.records_for(ss)
    assert len(records) == n + 1 and records[-1].plaintext is not None
    assert b"* 2 UIDFETCH" in records[-1].plaintext and b"* 1 UIDFETCH" not in records[-1].plaintext
    await env.run("SILWEBPUSH s", ctx)  # until this connection ends
    await env.delivery.deliver(new_mail(3))
    assert len(env.standin.records_for(ss)) == n + 1
    await env.ext.session_closed(ctx)
    await env.delivery.deliver(new_mail(4))
    assert len(env.standin.records_for(ss)) == n + 2


async def test_changes_go_to_every_active_subscription_coalesced(env: WebPushEnv) -> None:
    # Changed with issue 13: expunges and flag changes used to reach only subscriptions
    # with want_changes (which nothing could set); the draft pushes every change to
    # every active subscription.  A burst is coalesced into one push here.
    plain, n_plain = await active(env, "plain")
    other, n_other = await active(env, "other")
    await env.delivery.deliver(FlagChange("alice", "INBOX", ((3, ("\\Seen",)), (10, ("\\Seen",)))))
    await env.delivery.deliver(Expunge("alice", "INBOX", (3, 4, 5, 9)))
    await env.delivery.deliver(FlagChange("alice", "INBOX", ((10, ("\\Seen", "$Junk")),)))
    await env.delivery.flush()
    for ss, n in ((plain, n_plain), (other, n_other)):
        records = env.standin.records_for(ss)[n:]
        assert [r.plaintext for r in records] == [
            b'* SELECT "INBOX"\r\n* VANISHED 3:5,9\r\n* 10 UIDFETCH (FLAGS (\\Seen $Junk))\r\n',
        ]
        assert all(r.headers["Urgency"] == "normal" and r.problems == [] for r in records)


async def test_a_burst_is_pushed_once_it_is_quiet_without_flush(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    env.delivery.quiet = 0.05
    await env.delivery.deliver(Expunge("alice", "INBOX", (1,)))
    await env.delivery.deliver(Expunge("alice", "INBOX", (2,)))
    assert len(env.standin.records_for(ss)) == n  # still coalescing
    (push,) = (await env.standin.wait_for(ss, n + 1))[n:]
    assert push.plaintext == b'* SELECT "INBOX"\r\n* VANISHED 1:2\r\n'


async def test_the_queue_gauge_counts_bursts_waiting(env: WebPushEnv) -> None:
    """pushproxy_push_queue{service="webpush"} (the dashboard's queue): bursts waiting to be sent, then none."""
    await active(env, "s")
    assert metric_value("pushproxy_push_queue", {"service": "webpush"}) == 0
    await env.delivery.deliver(Expunge("alice", "INBOX", (1,)))
    await env.delivery.deliver(Expunge("alice", "INBOX", (2,)))
    await env.delivery.deliver(Expunge("alice", "Archive", (7,)))
    assert metric_value("pushproxy_push_queue", {"service": "webpush"}) == 1  # INBOX's burst (Archive is not pushed)
    await env.delivery.flush()
    assert metric_value("pushproxy_push_queue", {"service": "webpush"}) == 0


async def test_pending_changes_go_out_before_new_mail(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    await env.delivery.deliver(Expunge("alice", "INBOX", (1,)))
    await env.delivery.deliver(new_mail(5))
    records = env.standin.records_for(ss)[n:]
    assert [r.plaintext.split(b"\r\n")[1][:12] for r in records if r.plaintext] == [b"* VANISHED 1", b"* 5 UIDFETCH"]


def apply_push(model: dict[int, tuple[str, ...]], plaintext: bytes, mailbox: bytes = b'"INBOX"') -> None:
    """A client's local model of a mailbox (UID -> flags), updated from one push."""
    lines = plaintext.split(b"\r\n")
    assert lines[0] == b"* SELECT " + mailbox and lines[-1] == b""
    for line in lines[1:-1]:
        if line.startswith(b"* VANISHED "):
            for part in line[len(b"* VANISHED ") :].split(b","):
                lo, _, hi = part.partition(b":")
                for uid in range(int(lo), int(hi or lo) + 1):
                    model.pop(uid, None)
        else:
            head, _, rest = line.partition(b" UIDFETCH (FLAGS (")
            flags = rest[: rest.index(b")")].decode()
            model[int(head[2:])] = tuple(flags.split()) if flags else ()


async def test_500_changes_become_a_bounded_number_of_pushes_that_rebuild_the_state(env: WebPushEnv) -> None:
    """Bound: a burst in one mailbox takes at most MAX_CHANGE_PUSHES (8) pushes, else one SYNC."""
    ss, n = await active(env, "s")
    model = {uid: () for uid in range(1, 1001)}
    upstream = dict(model)
    for uid in range(1, 1001, 2):  # 500 messages moved away, one event each
        del upstream[uid]
        await env.delivery.deliver(Expunge("alice", "INBOX", (uid,)))
    for uid in range(2, 1001, 2):  # then 500 marked read, one event each
        upstream[uid] = ("\\Seen",)
        await env.delivery.deliver(FlagChange("alice", "INBOX", ((uid, ("\\Seen",)),)))
    await env.delivery.flush()
    pushes = env.standin.records_for(ss)[n:]
    assert 1 <= len(pushes) <= 8
    for push in pushes:
        assert push.problems == [] and push.plaintext is not None and len(push.plaintext) <= MAX_PLAINTEXT
        apply_push(model, push.plaintext)
    assert model == upstream


@pytest.mark.parametrize("count", [20, 200])
async def test_a_burst_of_new_mail_arrives_per_message_within_the_bound(env: WebPushEnv, count: int) -> None:
    """Bound: a batch of new mail in one mailbox takes at most MAX_NEW_MAIL_PUSHES (8) pushes, else one SYNC."""
    ss, n = await active(env, "s")
    messages = tuple(
        MessageInfo(uid, (), envelope_from_fields(None, f"catch-up {uid}", f"<s{uid}@example.org>", None))
        for uid in range(500, 500 + count)
    )
    await env.delivery.deliver(NewMail("alice", "INBOX", messages))
    pushes = env.standin.records_for(ss)[n:]
    assert 1 <= len(pushes) <= 8, len(pushes)
    uids: list[int] = []
    for push in pushes:  # decrypted by the stand-in, on its own
        assert push.problems == [] and push.plaintext is not None and len(push.plaintext) <= MAX_PLAINTEXT
        assert push.headers["Urgency"] == "high" and b"* SYNC" not in push.plaintext
        lines = push.plaintext.split(b"\r\n")
        assert lines[0] == b'* SELECT "INBOX"' and lines[-1] == b""
        uids += [int(line.split(b" ")[1]) for line in lines[1:-1]]
        if count == 20:
            assert all(b" ENVELOPE (" in line for line in lines[1:-1])
    assert uids == [m.uid for m in messages]


async def test_a_burst_too_big_for_the_bound_is_one_sync(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    await env.delivery.deliver(FlagChange("alice", "INBOX", tuple((uid, ("\\Seen",)) for uid in range(1, 2001))))
    await env.delivery.flush()
    (push,) = env.standin.records_for(ss)[n:]
    assert push.plaintext == b'* SELECT "INBOX"\r\n* SYNC\r\n'


async def test_huge_envelope_falls_back_within_the_limit(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    # Changed with issue 13: an envelope that does not fit gave SYNC (was FLAGS only); changed
    # again with issue 20: the compact FLAGS form comes before SYNC (webpush-imap.md "What is pushed").
    before = metric_value("pushproxy_webpush_payload_fallbacks_total", {"level": "flags"})
    huge = envelope_from_fields(None, "x" * 5000, None, None)
    await env.delivery.deliver(new_mail(12, envelope=huge))
    push = env.standin.records_for(ss)[n]
    assert push.plaintext == b'* SELECT "INBOX"\r\n* 12 UIDFETCH (FLAGS ())\r\n'
    assert len(push.plaintext) <= MAX_PLAINTEXT
    assert metric_value("pushproxy_webpush_payload_fallbacks_total", {"level": "flags"}) == before + 1


async def test_413_resends_as_sync(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    env.standin.program(ss, Answer.status(413))
    before = metric_value("pushproxy_webpush_payload_fallbacks_total", {"level": "sync"})
    await env.delivery.deliver(new_mail(5))
    records = env.standin.records_for(ss)[n:]
    assert [r.answered for r in records] == [413, 201]
    assert records[1].plaintext == b'* SELECT "INBOX"\r\n* SYNC\r\n'
    assert metric_value("pushproxy_webpush_payload_fallbacks_total", {"level": "sync"}) == before + 1


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_deletes_the_subscription(env: WebPushEnv, status: int) -> None:
    ss, _ = await active(env, "s")
    env.standin.program(ss, Answer.status(status))
    await env.delivery.deliver(new_mail(1))
    assert await env.store.queries(WebPushQueries).get_subscription("alice", "s") is None


@pytest.mark.parametrize("status", [401, 403])
async def test_vapid_rejected_deactivates(env: WebPushEnv, status: int) -> None:
    ss, n = await active(env, "s")
    env.standin.program(ss, Answer.status(status))
    await env.delivery.deliver(new_mail(1))
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and not sub.active and sub.ack_token_hash is None
    assert sub.ack_expires == pytest.approx(env.clock.now + env.config.webpush.ack_expiry)
    await env.delivery.deliver(new_mail(2))
    assert len(env.standin.records_for(ss)) == n + 1  # nothing more goes to it
    _, lines = await env.run("LWEBPUSH s", FakeContext())
    assert lines[0].endswith(b" NIL")


async def test_429_is_retried(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    env.standin.program(ss, Answer.status(429, retry_after="0"))
    await env.delivery.deliver(new_mail(1))
    records = env.standin.records_for(ss)[n:]
    assert [r.answered for r in records] == [429, 201]
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and sub.failures == 0


async def test_failures_are_counted_and_reset(env: WebPushEnv) -> None:
    ss, _ = await active(env, "s")
    env.standin.program(ss, Answer.status(500), Answer.status(500), Answer.status(400))
    await env.delivery.deliver(new_mail(1))  # 500, 500: retry budget (1) spent
    await env.delivery.deliver(new_mail(2))  # 400: dropped
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and sub.failures == 2 and sub.active
    await env.delivery.deliver(new_mail(3))
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and sub.failures == 0


async def test_a_redirect_is_not_followed(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    env.standin.program(ss, Answer.redirecting())
    await env.delivery.deliver(new_mail(1))
    assert env.standin.redirect_hits == []
    assert [r.answered for r in env.standin.records_for(ss)[n:]] == [307]


async def test_a_slow_endpoint_does_not_delay_the_others(env: WebPushEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pushproxy")
    slow, n_slow = await active(env, "slow")
    fast, n_fast = await active(env, "fast")
    env.standin.program(slow, Answer.hanging(30))
    task = asyncio.ensure_future(env.delivery.deliver(new_mail(1)))
    await env.standin.wait_for(fast, n_fast + 1)
    # Both requests are sent at once: the slow one may reach the stand-in after the fast one was served.
    slow_records = (await env.standin.wait_for(slow, n_slow + 1, accepted_only=False))[n_slow:]
    # The fast one is served while the slow one's request is still held open.
    assert len(slow_records) == 1 and slow_records[0].answered is None
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # The push still held (shielded from the cancel) ends at shutdown: closing the sender cuts it,
    # with one line, never a traceback, and no failure counted against the subscription.
    await env.sender.close()
    await env.delivery.flush()
    assert "push not sent, shutting down" in caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "slow")
    assert sub is not None and sub.failures == 0


async def test_answer_about_a_replaced_subscription_is_ignored(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    # Held for a second (then 503), then 410 on the retry: "delete" -- but about the old endpoint.
    env.standin.program(ss, Answer.hanging(1.0), Answer.status(410))
    task = asyncio.ensure_future(env.delivery.deliver(new_mail(1)))
    await env.standin.wait_for(ss, n + 1, accepted_only=False)
    replacement = env.standin.new_subscription()
    await env.subscribe(FakeContext(), "s", replacement)  # replaced while the push hangs
    await task
    assert [r.answered for r in env.standin.records_for(ss)[n:]] == [None, 410]  # None: held, then 503
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert sub is not None and sub.endpoint == replacement.endpoint and sub.failures == 0


async def test_empty_events_push_nothing(env: WebPushEnv) -> None:
    ss, n = await active(env, "s")
    sub = await env.store.queries(WebPushQueries).get_subscription("alice", "s")
    assert isinstance(sub, WebPushSubscription)
    await env.delivery.deliver(Expunge("alice", "INBOX", ()))
    await env.delivery.deliver(FlagChange("alice", "INBOX", ()))
    await env.delivery.flush()
    assert len(env.standin.records_for(ss)) == n
