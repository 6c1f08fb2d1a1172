"""The session state machine driven directly, with a fake IO (no sockets)."""

from __future__ import annotations

import asyncio
import base64

import pytest

from pushproxy.imap.capabilities import CapabilityPolicy, ConnectionFacts, rewrite_atoms
from tests.support.sessions import make, settle


async def test_greeting_capabilities_are_rewritten() -> None:
    _, io, _, _ = make()
    line = bytes(io.client)
    assert b"COMPRESS" not in line and b"CRAM-MD5" not in line and b"STARTTLS" not in line
    assert b"AUTH=PLAIN" in line and b"XECHO" not in line  # post-auth capability only after login


async def test_login_capture_with_literals_and_capability_after_login() -> None:
    s, io, sink, _ = make()
    s.client_data(b"a1 LOGIN {5}\r\n")
    assert bytes(io.upstream) == b"a1 LOGIN {5}\r\n"
    s.upstream_data(b"+ OK\r\n")
    s.client_data(b'Alice "pa ss\\"word"\r\n')
    s.upstream_data(b"a1 OK [CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE] Logged in\r\n")
    await settle()
    assert sink.logins == [("alice", "Alice", 'pa ss"word')]
    assert s.authenticated and s.account == "alice"
    assert b"a1 OK [CAPABILITY IMAP4rev1 IDLE XECHO] Logged in\r\n" in bytes(io.client)


async def test_failed_login_captures_nothing() -> None:
    s, _io, sink, _ = make()
    s.client_data(b"a1 LOGIN alice wrong\r\n")
    s.upstream_data(b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    await settle()
    assert sink.logins == [] and not s.authenticated


async def test_authenticate_plain_with_and_without_initial_response() -> None:
    s, _io, sink, _ = make()
    blob = base64.b64encode(b"\0bob\0bobpw")
    s.client_data(b"a1 AUTHENTICATE PLAIN\r\n")
    s.upstream_data(b"+ \r\n")
    s.client_data(blob + b"\r\n")
    s.upstream_data(b"a1 OK Logged in\r\n")
    await settle()
    assert sink.logins == [("bob", "bob", "bobpw")]
    s2, _, sink2, _ = make()
    s2.client_data(b"a1 AUTHENTICATE PLAIN " + blob + b"\r\n")
    s2.upstream_data(b"a1 OK Logged in\r\n")
    await settle()
    assert sink2.logins == [("bob", "bob", "bobpw")]


async def test_intercepted_command_waits_for_earlier_commands_and_holds_later_ones() -> None:
    s, io, _, ext = make()
    s.client_data(b"a0 LOGIN alice pw\r\n")
    s.upstream_data(b"a0 OK Logged in\r\n")
    io.upstream.clear()
    io.client.clear()
    s.client_data(b"a1 NOOP\r\na2 XECHO hello {3}\r\n")
    # a2 has a literal: the proxy asks for it itself, and a1 went upstream.
    assert bytes(io.upstream) == b"a1 NOOP\r\n"
    assert bytes(io.client) == b"+ Ready for literal data\r\n"
    s.client_data(b"abc\r\na3 NOOP\r\n")
    await settle()
    assert ext.seen == []  # a1 still has no answer
    assert b"a3" not in bytes(io.upstream)
    s.upstream_data(b"* 3 EXISTS\r\na1 OK NOOP done\r\n")
    await settle()
    out = bytes(io.client)
    assert out.index(b"a1 OK") < out.index(b"* XECHO hello abc") < out.index(b"a2 OK XECHO done")
    assert bytes(io.upstream).endswith(b"a3 NOOP\r\n")  # released after a2's answer


async def test_extension_commands_before_login_get_bad() -> None:
    s, io, _, ext = make()
    s.client_data(b"a1 XECHO x\r\n")
    await settle()
    assert b"a1 BAD" in bytes(io.client) and ext.seen == []
    assert bytes(io.upstream) == b""


async def test_plaintext_login_refused_without_tls() -> None:
    s, io, _, _ = make(plaintext_auth_allowed=False, starttls_offered=True)
    greeting = bytes(io.client)
    assert b"LOGINDISABLED" in greeting and b"STARTTLS" in greeting and b"AUTH=PLAIN" not in greeting
    s.client_data(b"a1 LOGIN alice pw\r\n")
    await settle()
    assert b"a1 NO [PRIVACYREQUIRED]" in bytes(io.client)
    assert bytes(io.upstream) == b""
    s.client_data(b"a2 STARTTLS\r\na3 LOGIN injected pw\r\n")
    await settle()
    assert io.tls_started and b"a2 OK" in bytes(io.client)
    assert b"injected" not in bytes(io.upstream)
    s.client_data(b"a4 LOGIN alice pw\r\n")
    assert bytes(io.upstream) == b"a4 LOGIN alice pw\r\n"


async def test_refused_sync_literal_cancels_and_stays_in_sync() -> None:
    s, io, _, _ = make()
    s.client_data(b"a0 LOGIN alice pw\r\n")
    s.upstream_data(b"a0 OK Logged in\r\n")
    s.client_data(b"a1 APPEND INBOX {999999999}\r\n")
    s.upstream_data(b"a1 NO [TOOBIG] Mail too large\r\n")
    s.client_data(b"a2 NOOP\r\n")
    assert bytes(io.upstream).endswith(b"a2 NOOP\r\n")


async def test_idle_done_is_continuation_not_a_command() -> None:
    s, io, _, _ext = make()
    s.client_data(b"a0 LOGIN alice pw\r\n")
    s.upstream_data(b"a0 OK Logged in\r\n")
    s.client_data(b"a1 IDLE\r\n")
    s.upstream_data(b"+ idling\r\n")
    assert s.in_idle
    s.client_data(b"DONE\r\n")
    s.upstream_data(b"a1 OK Idle completed.\r\n")
    assert not s.in_idle and b"DONE\r\n" in bytes(io.upstream)


async def test_own_upstream_command_is_swallowed() -> None:
    s, io, _, _ = make()
    s.client_data(b"a0 LOGIN alice pw\r\n")
    s.upstream_data(b"a0 OK Logged in\r\n")
    before = bytes(io.client)
    task = asyncio.ensure_future(s.upstream_command(b'LIST "" "*"', 5))
    await asyncio.sleep(0)
    assert bytes(io.upstream).endswith(b'PPX1 LIST "" "*"\r\n')
    s.upstream_data(b'* LIST () "/" {5}\r\nNotes\r\n* LIST () "/" INBOX\r\nPPX1 OK done\r\n')
    untagged, status = await task
    assert status.status == b"OK"
    assert untagged == [b'* LIST () "/" {5}\r\nNotes\r\n', b'* LIST () "/" INBOX\r\n']
    assert bytes(io.client) == before


@pytest.mark.parametrize(
    "facts,expect_in,expect_out",
    [
        (ConnectionFacts(authenticated=True), [b"XECHO", b"AUTH=PLAIN"], [b"COMPRESS=DEFLATE", b"STARTTLS"]),
        (ConnectionFacts(starttls_offered=True), [b"STARTTLS"], [b"XECHO", b"LOGINDISABLED"]),
        (ConnectionFacts(client_tls=True, starttls_offered=True), [b"AUTH=PLAIN"], [b"STARTTLS"]),
        (ConnectionFacts(plaintext_auth_allowed=False), [b"LOGINDISABLED"], [b"AUTH=PLAIN"]),
    ],
)
def test_capability_rules(facts: ConnectionFacts, expect_in: list[bytes], expect_out: list[bytes]) -> None:
    policy = CapabilityPolicy(add_post_auth=(b"XECHO",), restrict_sasl=True)
    atoms = rewrite_atoms(
        [b"IMAP4rev1", b"AUTH=PLAIN", b"AUTH=SCRAM-SHA-256", b"COMPRESS=DEFLATE", b"STARTTLS", b"IDLE"],
        policy,
        facts,
    )
    for a in expect_in:
        assert a in atoms
    for a in expect_out:
        assert a not in atoms
    assert b"AUTH=SCRAM-SHA-256" not in atoms and b"IDLE" in atoms
