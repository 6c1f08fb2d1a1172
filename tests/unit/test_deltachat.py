"""The Delta Chat extension in process: METADATA parsing, the claim hook, the handlers, the notifier.

The real core, Dovecot and the gateway stand-in are in
tests/integration/test_deltachat_core.py; here a real SqliteStore and a
loopback aiohttp gateway, nothing faked but the client session.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from pushproxy.config import Config
from pushproxy.events import MessageInfo, NewMail
from pushproxy.extensions.base import Claim, Extension, Reply, SessionContext
from pushproxy.extensions.deltachat import commands
from pushproxy.extensions.deltachat.addon import DeltaChat, _from_account
from pushproxy.extensions.deltachat.notifier import DeltaChatNotifier
from pushproxy.extensions.deltachat.settings import DeltaChatConfig
from pushproxy.imap.envelope import envelope_from_fields
from pushproxy.imap.metadata import (
    ends_in_literal,
    first_line_entries,
    parse_getmetadata,
    parse_metadata_response,
    parse_setmetadata,
    setmetadata_command,
)
from pushproxy.imap.parse import Command, ParseError, StatusResponse, parse_command
from pushproxy.store import SqliteStore, StoreUnavailable, Vault
from tests.support.extension_host import ExtensionHost
from tests.support.sessions import FakeIO, new_session, settle
from tests.support.waiting import async_assert_quiet, async_wait_for

TOKEN = "openpgp:" + "A" * 120


# --- the sans-IO METADATA core --------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "mailbox", "entries", "complete"),
    [
        (b'a SETMETADATA "INBOX" (/private/devicetoken "openpgp:x")\r\n', "INBOX", ("/private/devicetoken",), True),
        (b"a SETMETADATA INBOX (/Private/DeviceToken {12+}\r\n", "INBOX", ("/private/devicetoken",), False),
        (b'a SETMETADATA "" (/shared/comment "c" /private/devicetoken NIL)\r\n', "", ("/shared/comment",
                                                                                  "/private/devicetoken"), True),
        (b"a SETMETADATA INBOX (/shared/comment {3}\r\n", "INBOX", ("/shared/comment",), False),
        (b'a GETMETADATA (MAXSIZE 9) "" (/shared/comment /shared/admin)\r\n', "", ("/shared/comment",
                                                                                "/shared/admin"), True),
        (b"a GETMETADATA INBOX /private/devicetoken\r\n", "INBOX", ("/private/devicetoken",), True),
        (b"a SETMETADATA {5}\r\n", None, (), False),
    ],
)  # fmt: skip
def test_first_line_names_the_entries_before_any_literal(line, mailbox, entries, complete) -> None:
    first = first_line_entries(line)
    assert first is not None
    assert (first.mailbox, first.entries, first.complete) == (mailbox, entries, complete)


def test_setmetadata_forms_and_refusals() -> None:
    literal = parse_command(b'a SETMETADATA "INBOX" (/private/devicetoken {5+}\r\nabc\r\n)\r\n')
    assert parse_setmetadata(literal.args).entries == (("/private/devicetoken", b"abc\r\n"),)
    nil = parse_command(b"a SETMETADATA INBOX (/private/devicetoken NIL)\r\n")
    assert parse_setmetadata(nil.args).entries == (("/private/devicetoken", None),)
    for bad in (b"a SETMETADATA INBOX (/private/devicetoken)", b"a SETMETADATA INBOX (/other x)",
                b"a SETMETADATA INBOX /private/x y", b'a SETMETADATA INBOX (/private/a* "x")'):  # fmt: skip
        with pytest.raises(ParseError):
            parse_setmetadata(parse_command(bad + b"\r\n").args)
    get = parse_getmetadata(parse_command(b'a GETMETADATA (DEPTH infinity) "" (/shared)\r\n').args)
    assert (get.mailbox, get.entries, get.depth) == ("", ("/shared",), "infinity")
    assert setmetadata_command(b"INBOX", [("/shared/a", b"x\r\n")]) == b'SETMETADATA INBOX ("/shared/a" {3+}\r\nx\r\n)'
    assert parse_metadata_response(b'* METADATA "" (/shared/Comment {1}\r\nx /shared/admin NIL)\r\n') == (
        "",
        ("/shared/comment", "/shared/admin"),
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_metadata_readers_never_fail_on_hostile_bytes(data: bytes) -> None:
    for head in (b"a SETMETADATA ", b"a GETMETADATA "):
        first_line_entries(head + data)
        ends_in_literal(head + data)
        try:
            cmd = parse_command(head + data + b"\r\n")
        except ParseError:
            continue
        for parse in (parse_setmetadata, parse_getmetadata):
            try:
                parse(cmd.args)
            except ParseError:
                pass
    parse_metadata_response(b"* METADATA " + data)


def test_first_line_reader_is_linear() -> None:
    # 100k entries on one line: bounded by MAX_ENTRIES, never quadratic.
    line = b"a GETMETADATA INBOX (" + b"/shared/x " * 100_000 + b")\r\n"
    first = first_line_entries(line)
    assert first is not None and len(first.entries) == 100


# --- the claim hook (core): a relayed command taken over only when its first line says so ---
class Claiming(Extension):
    def __init__(self) -> None:
        super().__init__(name="claiming", claims={"SETMETADATA": Claim(self.wants, self.handle)})
        self.seen: list[Command] = []

    def wants(self, line: bytes, ctx: SessionContext) -> bool:
        first = first_line_entries(line)
        return first is not None and "/private/devicetoken" in first.entries

    async def handle(self, cmd: Command, ctx: SessionContext) -> Reply:
        self.seen.append(cmd)
        return Reply("OK", "claimed")


async def test_a_claimed_command_is_answered_the_others_relayed_unchanged() -> None:
    io, ext = FakeIO(), Claiming()
    s = new_session(io, [ext])
    s.upstream_data(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")
    s.client_data(b'a0 SETMETADATA INBOX (/private/devicetoken "t")\r\n')  # before login: relayed
    s.upstream_data(b"a0 NO not logged in\r\n")
    s.client_data(b"a1 LOGIN alice pw\r\n")
    s.upstream_data(b"a1 OK Logged in\r\n")
    before = bytes(io.upstream)
    s.client_data(b'a2 SETMETADATA INBOX (/shared/comment "x")\r\n')
    s.client_data(b"a3 SETMETADATA INBOX (/private/devicetoken {5}\r\n")
    assert bytes(io.upstream)[len(before) :] == b'a2 SETMETADATA INBOX (/shared/comment "x")\r\n'
    s.upstream_data(b"a2 OK done\r\n")
    await settle()
    assert b"+ " in bytes(io.client)  # the continuation for the claimed command's literal
    s.client_data(b"zzz\r\n)\r\n")
    await settle()
    assert b"a3 OK claimed" in bytes(io.client)
    assert [parse_setmetadata(c.args).entries for c in ext.seen] == [(("/private/devicetoken", b"zzz\r\n"),)]
    assert b"zzz" not in bytes(io.upstream)  # the token never went upstream


# --- the handlers, with a real store -------------------------------------------------------
class Ctx:
    def __init__(self, caps: frozenset[str] = frozenset({"IMAP4REV1", "METADATA", "LITERAL+"})) -> None:
        self.session_id = "sess"
        self.account = "alice"
        self.login = "alice"
        self.upstream_capabilities = caps
        self.untagged: list[bytes] = []
        self.upstream: list[bytes] = []
        self.answers: list[tuple[list[bytes], bytes]] = []

    def reply_untagged(self, payload: bytes) -> None:
        self.untagged.append(payload)

    async def upstream_command(self, command: bytes, timeout: float = 30.0) -> tuple[list[bytes], StatusResponse]:
        self.upstream.append(command)
        untagged, status = self.answers.pop(0) if self.answers else ([], b"OK")
        return untagged, StatusResponse(b"PPX1", status, None, -1, -1)


@pytest.fixture
async def ext(tmp_path: Path) -> AsyncIterator[DeltaChat]:
    store = SqliteStore(tmp_path / "state" / "pushproxy.db", Vault.generate())
    await store.open()
    config = Config(deltachat={"enabled": True, "max_tokens_per_account": 2, "max_smtp_recipients": 50})
    e = DeltaChat()
    assert e.configure(config)
    e.attach(ExtensionHost(store, config))  # type: ignore[arg-type]
    yield e
    await store.close()


async def run(ext: DeltaChat, line: bytes, ctx: Ctx) -> Reply:
    cmd = parse_command(line)
    claim = ext.claims[cmd.name]
    assert claim.wants(line, ctx)  # type: ignore[arg-type]
    return await claim.handler(cmd, ctx)  # type: ignore[arg-type]


async def test_set_renew_delete_and_cap(ext: DeltaChat, tmp_path: Path) -> None:
    ctx = Ctx()
    quoted = b'a SETMETADATA "INBOX" (/private/devicetoken "' + TOKEN.encode() + b'")\r\n'
    assert (await run(ext, quoted, ctx)).status == "OK"
    first = await ext.tokens.list_tokens("alice")
    assert [t.token for t in first] == [TOKEN]
    await asyncio.sleep(0.01)
    literal = b"a SETMETADATA INBOX (/private/devicetoken {%d+}\r\n%s)\r\n" % (len(TOKEN), TOKEN.encode())
    assert (await run(ext, literal, ctx)).status == "OK"
    (renewed,) = await ext.tokens.list_tokens("alice")
    assert renewed.last_registered > first[0].last_registered == renewed.first_registered  # expiry refreshed
    assert not any(b"devicetoken" in c for c in ctx.upstream)  # only the baseline STATUS went upstream
    # Encrypted at rest: the database file never holds the token.
    with sqlite3.connect(tmp_path / "state" / "pushproxy.db") as db:
        rows = db.execute("SELECT token, token_hash FROM deltachat_tokens").fetchall()
    assert rows and all(TOKEN.encode() not in bytes(r[0]) + bytes(r[1]) for r in rows)
    # The per-account limit evicts the least recently set.
    for n in (1, 2):
        await run(ext, b'a SETMETADATA INBOX (/private/devicetoken "openpgp:other%d")\r\n' % n, ctx)
    assert {t.token for t in await ext.tokens.list_tokens("alice")} == {"openpgp:other1", "openpgp:other2"}
    assert (await run(ext, b"a SETMETADATA INBOX (/private/devicetoken NIL)\r\n", ctx)).status == "OK"
    assert await ext.tokens.list_tokens("alice") == []


@pytest.mark.parametrize(
    ("value", "status", "code"),
    [(b'"' + b"x" * 5000 + b'"', "NO", "METADATA MAXSIZE 4096"), (b'"two words"', "NO", None), (b'""', "NO", None)],
)
async def test_bad_tokens_are_refused(ext: DeltaChat, value: bytes, status: str, code: str | None) -> None:
    reply = await run(ext, b"a SETMETADATA INBOX (/private/devicetoken " + value + b")\r\n", Ctx())
    assert (reply.status, reply.code) == (status, code)
    assert await ext.tokens.list_tokens() == []


async def test_without_upstream_metadata_the_proxy_answers(ext: DeltaChat) -> None:
    ctx = Ctx(frozenset({"IMAP4REV1"}))
    reply = await run(ext, b'a SETMETADATA INBOX (/shared/comment "x")\r\n', ctx)
    assert reply.status == "NO" and ctx.upstream == []
    reply = await run(ext, b'a GETMETADATA "" (/shared/comment /shared/vendor/deltachat/maxsmtprecipients)\r\n', ctx)
    assert reply.status == "OK"
    assert ctx.untagged == [b'METADATA "" ("/shared/vendor/deltachat/maxsmtprecipients" "50")']


async def test_with_upstream_metadata_answers_are_relayed_and_completed(ext: DeltaChat) -> None:
    ctx = Ctx()
    get = b'a GETMETADATA "" (/shared/comment /shared/vendor/deltachat/maxsmtprecipients)\r\n'
    ctx.answers.append(([b'* METADATA "" (/shared/comment "hi")\r\n'], b"OK"))
    assert (await run(ext, get, ctx)).status == "OK"
    assert ctx.untagged == [b'METADATA "" (/shared/comment "hi")', b'METADATA "" ('
                            b'"/shared/vendor/deltachat/maxsmtprecipients" "50")']  # fmt: skip
    # Upstream's own value is never hidden or doubled.
    ctx = Ctx()
    ctx.answers.append(([b'* METADATA "" (/shared/vendor/deltachat/maxsmtprecipients "7")\r\n'], b"OK"))
    await run(ext, get, ctx)
    assert ctx.untagged == [b'METADATA "" (/shared/vendor/deltachat/maxsmtprecipients "7")']
    # Other entries of a claimed SETMETADATA go upstream first; upstream's NO sets nothing.
    ctx = Ctx()
    ctx.answers.append(([], b"NO"))
    both = b'a SETMETADATA INBOX (/private/devicetoken "openpgp:t" /private/comment "c")\r\n'
    assert (await run(ext, both, ctx)).status == "NO"
    assert ctx.upstream == [b'SETMETADATA INBOX ("/private/comment" "c")']
    assert await ext.tokens.list_tokens() == []
    # Not claimed: a SETMETADATA without the token, a GETMETADATA of other entries.
    assert not ext.claims["SETMETADATA"].wants(b'a SETMETADATA INBOX (/shared/x "y")\r\n', Ctx())  # type: ignore
    assert not ext.claims["GETMETADATA"].wants(b'a GETMETADATA "" /shared/comment\r\n', Ctx())  # type: ignore


async def test_an_upstream_that_named_no_capabilities_at_login_is_asked(ext: DeltaChat) -> None:
    """No [CAPABILITY] in the login's OK: the claim answers, but asks upstream before hiding its METADATA."""
    ctx = Ctx(frozenset())
    ctx.answers.append(([b"* CAPABILITY IMAP4rev1 METADATA\r\n"], b"OK"))
    ctx.answers.append(([b'* METADATA "" (/shared/comment "upstream\'s")\r\n'], b"OK"))
    assert (await run(ext, b'a GETMETADATA "" /shared/comment\r\n', ctx)).status == "OK"
    assert ctx.upstream == [b"CAPABILITY", b'GETMETADATA "" ("/shared/comment")']
    assert ctx.untagged == [b'METADATA "" (/shared/comment "upstream\'s")']
    ctx = Ctx(frozenset())
    ctx.answers.append(([b"* CAPABILITY IMAP4rev1\r\n"], b"OK"))
    assert (await run(ext, b'a GETMETADATA "" /shared/comment\r\n', ctx)).status == "OK"
    assert ctx.upstream == [b"CAPABILITY"] and ctx.untagged == []


def test_own_messages_are_recognised() -> None:
    def message(sender: str) -> MessageInfo:
        return MessageInfo(1, envelope=envelope_from_fields(None, "s", sender, None))

    assert _from_account(message("Bob <bob@localhost>"), "bob")
    assert _from_account(message("bob@example.org"), "bob@example.org")
    assert not _from_account(message("carol@example.org"), "bob")
    assert not _from_account(MessageInfo(1), "bob")


# --- the notifier, against a loopback gateway ---------------------------------------------
class Gateway:
    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.answers: list[int | str] = []

    async def notify(self, request: web.Request) -> web.Response:
        self.bodies.append((await request.read()).decode())
        answer = self.answers.pop(0) if self.answers else 200
        if answer == "hang":
            await asyncio.sleep(5)
            answer = 200
        return web.Response(status=int(answer), headers={"Retry-After": "0"} if answer == 429 else {})


@pytest.fixture
async def gateway(unused_tcp_port: int) -> AsyncIterator[tuple[Gateway, str]]:
    gw = Gateway()
    app = web.Application()
    app.router.add_post("/notify", gw.notify)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    yield gw, f"http://127.0.0.1:{unused_tcp_port}/notify"
    await runner.cleanup()


async def _notifier(url: str, gone: list[Any], **cfg: Any) -> DeltaChatNotifier:
    settings = {"notify_url": url, "coalesce": 0.05, "retry_base": 0.05, "retry_max_delay": 0.1, "timeout": 1} | cfg

    async def on_gone(token: str, token_id: str, posted_at: float) -> None:
        gone.append(token)

    n = DeltaChatNotifier(DeltaChatConfig(**settings), on_gone)
    await n.start()
    return n


async def test_bursts_coalesce_per_token_and_410_calls_back(gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    gone: list[str] = []
    n = await _notifier(url, gone)
    try:
        for _ in range(5):
            n.notify("t1", "id1")
        n.notify("t2", "id2")
        await n.flush()
        assert sorted(gw.bodies) == ["t1", "t2"]
        gw.answers = [429, 503, 200]
        n.notify("t1", "id1")
        await n.flush()
        assert gw.bodies[2:] == ["t1"] * 3  # retried after 429 and 503
        gw.answers = [410]
        n.notify("t3", "id3")
        await n.flush()
        assert gone == ["t3"]
        gw.answers = [400]
        n.notify("t4", "id4")
        await n.flush()  # dropped, not retried
        assert gw.bodies.count("t4") == 1
    finally:
        await n.close()


async def test_the_queue_gauge_counts_tokens_with_a_post_to_come(gateway: tuple[Gateway, str]) -> None:
    """pushproxy_push_queue{service="deltachat"} (the dashboard's queue): tokens waiting, then none."""
    from pushproxy.metrics import REGISTRY

    def queue() -> float | None:
        return REGISTRY.get_sample_value("pushproxy_push_queue", {"service": "deltachat"})

    _, url = gateway
    n = await _notifier(url, [], coalesce=0.2)  # no await between the notifies and the count below
    try:
        assert queue() == 0
        n.notify("t1", "id1")
        n.notify("t1", "id1")
        n.notify("t2", "id2")
        assert queue() == 2
        await n.flush()
        assert queue() == 0
    finally:
        await n.close()
    assert queue() == 0


async def test_retries_stop_at_the_deadline_and_timeouts_retry(gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    n = await _notifier(url, [], retry_deadline=0.3, timeout=0.2)
    try:
        gw.answers = [500] * 100
        n.notify("t1", "id1")
        await asyncio.wait_for(n.flush(), 5)
        attempts = gw.bodies.count("t1")
        assert 2 <= attempts < 20  # backed off, then dropped
        gw.answers = ["hang"]
        n.notify("t2", "id2")
        await asyncio.wait_for(n.flush(), 5)
        assert gw.bodies.count("t2") == 2  # the timed-out attempt, then the retry
    finally:
        await n.close()


async def test_new_mail_for_the_account_reaches_its_tokens(ext: DeltaChat, gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    await ext.tokens.set_token("alice", TOKEN)
    ext.cfg = DeltaChatConfig(notify_url=url, coalesce=0)
    await ext.start()
    try:
        carol = MessageInfo(5, envelope=envelope_from_fields(None, "s", "carol@example.org", None))
        own = MessageInfo(6, envelope=envelope_from_fields(None, "s", "alice@localhost", None))
        await ext.on_event(NewMail("alice", "INBOX", (own,)))
        await ext.on_event(NewMail("alice", "Notes", (carol,)))
        await ext.on_event(NewMail("bob", "INBOX", (carol,)))
        await ext.flush()
        await async_assert_quiet(lambda: gw.bodies == [], 0.1)
        await ext.on_event(NewMail("alice", "INBOX", (carol,)))
        await ext.flush()
        await async_wait_for(lambda: gw.bodies == [TOKEN])
        assert await ext.watched_mailboxes("alice") is not None and await ext.watched_mailboxes("bob") is None
    finally:
        await ext.stop()


async def test_new_mail_while_the_store_is_away_reaches_the_tokens_read_before(
    ext: DeltaChat, gateway: tuple[Gateway, str]
) -> None:
    """The sender reads the tokens through the store's registration view (pushproxy.store.regview),
    as the APNs and Web Push senders do: the store away, the tokens read last go out at once;
    an account never read raises StoreUnavailable (the extension manager retries the event)."""
    gw, url = gateway
    store = ext.core.store
    await ext.tokens.set_token("alice", TOKEN)
    assert await ext.watched_mailboxes("alice") is not None  # the watcher's start reads the tokens
    await ext.tokens.set_token("alice", "openpgp:second")  # this node's write is a change notice
    ext.cfg = DeltaChatConfig(notify_url=url, coalesce=0)
    await ext.start()
    carol = MessageInfo(5, envelope=envelope_from_fields(None, "s", "carol@example.org", None))
    try:
        await ext.on_event(NewMail("alice", "INBOX", (carol,)))  # read again: both tokens
        await ext.flush()
        assert sorted(gw.bodies) == sorted([TOKEN, "openpgp:second"])
        await store.close()
        store.health.failed(StoreUnavailable("gone"))
        await ext.on_event(NewMail("alice", "INBOX", (carol,)))  # no store, no wait
        await ext.flush()
        assert sorted(gw.bodies[2:]) == sorted([TOKEN, "openpgp:second"])
        with pytest.raises(StoreUnavailable):
            await ext.on_event(NewMail("bob", "INBOX", (carol,)))
    finally:
        await ext.stop()
        await store.open()


@pytest.mark.parametrize(
    ("line", "claimed"),
    [
        (b'a SETMETADATA INBOX (/shared/comment "x")\r\n', False),  # no token, no literal: relayed
        (b'a SETMETADATA INBOX (/private/devicetoken "x")\r\n', True),
        (b"a SETMETADATA INBOX (/private/devicetoken {5+}\r\n", True),
        (b"a SETMETADATA {5}\r\n", True),  # the mailbox a literal: the token may follow
        (b"a SETMETADATA INBOX ({20+}\r\n", True),  # an entry name a literal
        (b"a SETMETADATA INBOX (/shared/comment {3}\r\n", True),  # a value a literal, more may follow
        (b"a SETMETADATA INBOX {21}\r\n", True),  # malformed, with a literal: answered BAD here
        (b"a SETMETADATA INBOX (/bad* {5}\r\n", True),
        (b"a SETMETADATA INBOX (/bad* x)\r\n", False),  # malformed, no literal: upstream says BAD
    ],
)
def test_setmetadata_is_claimed_whenever_the_token_may_follow_a_literal(line: bytes, claimed: bool) -> None:
    assert commands.wants_setmetadata(line, Ctx()) is claimed  # type: ignore[arg-type]
    without_metadata = Ctx(frozenset({"IMAP4REV1"}))
    assert commands.wants_setmetadata(line, without_metadata)  # type: ignore[arg-type]  # all answered here


async def test_a_claimed_command_without_the_token_sets_its_entries_upstream(ext: DeltaChat) -> None:
    ctx = Ctx()
    ctx.answers = [([b"* 4 EXISTS\r\n"], b"OK")]
    first, rest = b"a SETMETADATA INBOX (/shared/comment {5+}\r\n", b"hello)\r\n"
    assert commands.wants_setmetadata(first, ctx)  # type: ignore[arg-type]
    assert (await ext.setmetadata(parse_command(first + rest), ctx)).status == "OK"  # type: ignore[arg-type]
    assert ctx.upstream == [b'SETMETADATA INBOX ("/shared/comment" "hello")']
    assert ctx.untagged == [b"4 EXISTS"]  # what upstream said meanwhile reaches the client
    assert await ext.tokens.list_tokens() == []
