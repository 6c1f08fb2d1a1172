"""The session driven directly (fake IO): upstream handshake, ordered local answers, handler faults.

Before, these paths were exercised only through a real Dovecot and a proxy process.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pushproxy.extensions.base import Extension, Reply, SessionContext
from pushproxy.imap.parse import Command
from pushproxy.proxy.session import Session, SessionSettings
from pushproxy.store.errors import STORE_FULL, StoreUnavailable
from tests.support.sessions import Echo, FakeIO, make, new_session, settle


class RecordingIO(FakeIO):
    def __init__(self) -> None:
        super().__init__()
        self.upstream_tls = False

    def start_upstream_tls(self) -> None:
        self.upstream_tls = True


def bare(**settings: Any) -> tuple[Session, RecordingIO, Echo]:
    """A session that has not seen the upstream greeting yet."""
    io, ext = RecordingIO(), Echo()
    return new_session(io, [ext], settings=SessionSettings(**settings)), io, ext


async def test_upstream_starttls_handshake_then_the_queued_client_command() -> None:
    s, io, _ = bare(upstream_security="starttls")
    s.upstream_data(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Dovecot ready.\r\n")
    assert bytes(io.upstream) == b"PP0 STARTTLS\r\n" and bytes(io.client) == b""
    s.client_data(b"a1 CAPABILITY\r\n")  # early: waits until upstream is ready
    assert io.paused and bytes(io.upstream) == b"PP0 STARTTLS\r\n"
    s.upstream_data(b"PP0 OK Begin TLS negotiation now.\r\n")
    assert io.upstream_tls and bytes(io.upstream).endswith(b"PP1 CAPABILITY\r\n")
    s.upstream_data(b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN AUTH=CRAM-MD5 COMPRESS=DEFLATE\r\nPP1 OK done\r\n")
    greeting = bytes(io.client)
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] Dovecot ready.\r\n"), greeting
    # The proxy's own handshake lines never reach the client; the client's command now goes up.
    assert b"PP0" not in greeting and b"PP1" not in greeting
    assert bytes(io.upstream).endswith(b"a1 CAPABILITY\r\n") and not io.paused
    s.upstream_data(b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN STARTTLS\r\na1 OK done\r\n")
    assert bytes(io.client).endswith(b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN\r\na1 OK done\r\n")


async def test_upstream_refusing_starttls_ends_the_session_with_bye() -> None:
    s, io, _ = bare(upstream_security="starttls")
    s.upstream_data(b"* OK hi\r\nPP0 NO not today\r\n")
    assert bytes(io.client) == b"* BYE [UNAVAILABLE] Upstream refused STARTTLS\r\n"
    assert io.closed and s.closed


async def test_upstream_bye_greeting_is_passed_on_and_closes() -> None:
    s, io, _ = bare()
    s.upstream_data(b"* BYE [UNAVAILABLE] Too many connections\r\n")
    assert bytes(io.client) == b"* BYE [UNAVAILABLE] Too many connections\r\n" and io.closed


async def test_upstream_gone_before_its_greeting() -> None:
    s, io, _ = bare()
    s.upstream_closed()
    assert bytes(io.client) == b"* BYE [UNAVAILABLE] Upstream server unavailable\r\n" and io.closed


async def test_preauth_greeting_authenticates_and_gets_post_login_capabilities() -> None:
    s, io, ext = bare()
    s.upstream_data(b"* PREAUTH [CAPABILITY IMAP4rev1 IDLE] Logged in as alice\r\n")
    assert s.authenticated
    assert bytes(io.client) == b"* PREAUTH [CAPABILITY IMAP4rev1 IDLE XECHO] Logged in as alice\r\n"
    s.client_data(b"a1 XECHO hi\r\n")  # extension commands need an authenticated session: it is one
    await settle()
    assert ext.seen and bytes(io.client).endswith(b"* XECHO hi\r\na1 OK XECHO done\r\n")
    s.client_data(b"a2 LOGIN bob pw\r\n")
    await settle()
    assert bytes(io.client).endswith(b"a2 BAD Already authenticated\r\n") and b"a2" not in bytes(io.upstream)


async def test_local_answers_come_in_command_order_between_forwarded_ones() -> None:
    s, io, _, ext = make()
    s.client_data(b"a0 LOGIN alice pw\r\n")
    s.upstream_data(b"a0 OK Logged in\r\n")
    await settle()
    io.upstream.clear()
    io.client.clear()
    s.client_data(b"a1 NOOP\r\na2 XECHO one\r\na3 NOOP\r\na4 XECHO two\r\na5 NOOP\r\n")
    assert bytes(io.upstream) == b"a1 NOOP\r\n"  # the rest waits behind a2
    await settle()
    assert ext.seen == []
    s.upstream_data(b"a1 OK done\r\n")
    await settle()
    assert [c.args for c in ext.seen] == [["one"]]
    assert bytes(io.upstream) == b"a1 NOOP\r\na3 NOOP\r\n"  # a4 waits for a3's answer
    s.upstream_data(b"a3 OK done\r\n")
    await settle()
    assert [c.args for c in ext.seen] == [["one"], ["two"]]
    assert bytes(io.upstream) == b"a1 NOOP\r\na3 NOOP\r\na5 NOOP\r\n"
    s.upstream_data(b"a5 OK done\r\n")
    out = bytes(io.client)
    order = [b"a1 OK", b"* XECHO one", b"a2 OK", b"a3 OK", b"* XECHO two", b"a4 OK", b"a5 OK"]
    positions = [out.index(part) for part in order]
    assert positions == sorted(positions), out


class Failing(Extension):
    def __init__(self) -> None:
        super().__init__(name="failing", commands={"XFAIL": self.handle})

    async def handle(self, cmd: Command, ctx: SessionContext) -> Reply:
        raise RuntimeError("store down")


async def test_a_failing_handler_gets_no_unavailable_and_the_stream_goes_on() -> None:
    io = FakeIO()
    s = new_session(io, [Failing()])
    s.upstream_data(b"* OK hi\r\n")
    s.client_data(b"a0 LOGIN alice pw\r\n")
    s.upstream_data(b"a0 OK Logged in\r\n")
    s.client_data(b"a1 XFAIL\r\na2 NOOP\r\n")
    await settle()
    assert bytes(io.client).endswith(b"a1 NO [UNAVAILABLE] Internal error in the proxy, please retry\r\n")
    assert bytes(io.upstream).endswith(b"a2 NOOP\r\n") and not s.closed


class StoreFull(Extension):
    def __init__(self) -> None:
        super().__init__(name="storefull", commands={"XREGISTER": self.handle})

    async def handle(self, cmd: Command, ctx: SessionContext) -> Reply:
        raise StoreUnavailable("SQLite: database or disk is full", STORE_FULL)


async def test_a_store_fault_is_answered_with_its_reason_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    io = FakeIO()
    s = new_session(io, [StoreFull()])
    s.upstream_data(b"* OK hi\r\n")
    s.client_data(b"a0 LOGIN alice pw\r\n")
    s.upstream_data(b"a0 OK Logged in\r\n")
    with caplog.at_level(logging.DEBUG):
        s.client_data(b"a1 XREGISTER\r\na2 NOOP\r\n")
        await settle()
    assert bytes(io.client).endswith(b"a1 NO [UNAVAILABLE] store full\r\n")
    assert bytes(io.upstream).endswith(b"a2 NOOP\r\n") and not s.closed
    assert not any(r.exc_info for r in caplog.records)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)  # the store logs the episode


async def test_client_starttls_refused_when_not_offered_or_already_tls() -> None:
    s, io, _, _ = make()
    s.client_data(b"a1 STARTTLS\r\n")
    await settle()
    assert bytes(io.client).endswith(b"a1 BAD STARTTLS is not available\r\n") and not io.tls_started
    io2 = FakeIO()
    s2 = new_session(io2, client_tls=True, settings=SessionSettings(starttls_offered=True))
    s2.upstream_data(b"* OK hi\r\n")
    s2.client_data(b"a1 STARTTLS\r\n")
    await settle()
    assert bytes(io2.client).endswith(b"a1 BAD TLS is already active\r\n") and not io2.tls_started
    assert b"STARTTLS" not in bytes(io.upstream) + bytes(io2.upstream)  # never relayed upstream
