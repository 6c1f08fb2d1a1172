"""Hostile-client regressions of the session state machine (issue 9), no sockets."""

from __future__ import annotations

import base64

from tests.support.sessions import make, settle


async def test_duplicate_tag_login_after_login_keeps_the_first_identity() -> None:
    s, io, sink, _ = make()
    s.client_data(b"a LOGIN alice alicepw\r\na LOGIN bob anything\r\n")
    # Only the first LOGIN goes upstream; the second waits for its outcome.
    assert bytes(io.upstream) == b"a LOGIN alice alicepw\r\n"
    s.upstream_data(b"a OK Logged in\r\n")
    await settle()
    assert s.account == "alice" and sink.logins == [("alice", "alice", "alicepw")]
    assert b"bob" not in bytes(io.upstream)
    out = bytes(io.client)
    assert out.index(b"a OK Logged in") < out.index(b"a BAD")


async def test_login_after_plain_command_with_the_same_tag_waits_for_it() -> None:
    s, io, sink, _ = make()
    s.client_data(b"a NOOP\r\na LOGIN bob anything\r\n")
    assert bytes(io.upstream) == b"a NOOP\r\n"
    s.upstream_data(b"a OK NOOP completed\r\n")  # must not count as the LOGIN's OK
    await settle()
    assert not s.authenticated and s.account is None
    assert bytes(io.upstream) == b"a NOOP\r\na LOGIN bob anything\r\n"
    s.upstream_data(b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    await settle()
    assert not s.authenticated and sink.logins == []


async def test_two_pipelined_logins_one_at_a_time() -> None:
    s, io, sink, _ = make()
    s.client_data(b"a1 LOGIN alice wrong\r\na2 LOGIN bob bobpw\r\n")
    assert bytes(io.upstream) == b"a1 LOGIN alice wrong\r\n"
    s.upstream_data(b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    await settle()
    assert bytes(io.upstream).endswith(b"a2 LOGIN bob bobpw\r\n")
    s.upstream_data(b"a2 OK Logged in\r\n")
    await settle()
    assert s.account == "bob" and sink.logins == [("bob", "bob", "bobpw")]


async def test_authenticate_interleaved_with_login() -> None:
    s, io, sink, _ = make()
    s.client_data(b"a1 AUTHENTICATE PLAIN\r\na2 LOGIN bob bobpw\r\n")
    assert bytes(io.upstream) == b"a1 AUTHENTICATE PLAIN\r\n"
    s.upstream_data(b"+ \r\n")
    # The line after "+" is the SASL response, whatever it looks like.
    assert bytes(io.upstream).endswith(b"a2 LOGIN bob bobpw\r\n")
    s.upstream_data(b"a1 BAD Invalid base64 data in continued response\r\n")
    await settle()
    assert not s.authenticated and sink.logins == []
    s.client_data(b"a3 AUTHENTICATE PLAIN\r\n")
    s.upstream_data(b"+ \r\n")
    s.client_data(base64.b64encode(b"\0alice\0alicepw") + b"\r\na4 LOGIN bob bobpw\r\n")
    s.upstream_data(b"a3 OK Logged in\r\n")
    await settle()
    assert s.account == "alice" and sink.logins == [("alice", "alice", "alicepw")]
    assert bytes(io.client).count(b"a4 BAD") == 1
    assert b"a4" not in bytes(io.upstream)


async def test_tagged_response_with_a_foreign_tag_during_login_closes() -> None:
    s, io, sink, _ = make()
    s.client_data(b"a LOGIN alice pw\r\n")
    s.upstream_data(b"zz OK Logged in\r\n")
    await settle()
    assert io.closed and not s.authenticated and sink.logins == []


async def test_invalid_tag_gets_bad_from_the_proxy_and_later_local_answers_flow() -> None:
    s, io, _, ext = make()
    s.client_data(b"a0 LOGIN alice pw\r\n")
    s.upstream_data(b"a0 OK Logged in\r\n")
    io.upstream.clear()
    s.client_data(b"\xe9 NOOP\r\nb+ NOOP\r\na1 XECHO hi\r\n")
    await settle()
    out = bytes(io.client)
    assert out.count(b"* BAD Invalid tag") == 1 and out.count(b"* BAD") == 2
    assert b"a1 OK XECHO done" in out and ext.seen
    assert bytes(io.upstream) == b""


async def test_huge_literal_count_gets_bye_not_an_exception() -> None:
    s, io, _, _ = make()
    s.client_data(b"x LOGIN {99999999999999999999}\r\n")
    assert b"* BYE" in bytes(io.client) and io.closed


async def test_capabilities_inside_the_login_exchange_describe_its_outcome() -> None:
    s, io, _, _ = make()
    s.client_data(b"a1 LOGIN alice pw\r\n")
    s.upstream_data(b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN\r\n")
    s.upstream_data(b"a1 OK Logged in\r\n")
    await settle()
    out = bytes(io.client)
    cap = out[out.index(b"* CAPABILITY") :].split(b"\r\n")[0]
    assert b"XECHO" in cap and out.index(b"* CAPABILITY") < out.index(b"a1 OK")
    s2, io2, _, _ = make()
    s2.client_data(b"a1 LOGIN alice wrong\r\n")
    s2.upstream_data(b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN\r\na1 NO Authentication failed.\r\n")
    await settle()
    out2 = bytes(io2.client)
    cap2 = out2[out2.index(b"* CAPABILITY") :].split(b"\r\n")[0]
    assert b"XECHO" not in cap2 and b"AUTH=PLAIN" in cap2
