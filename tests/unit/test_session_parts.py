"""The sans-IO parts of a session on their own: upstream handshake, capability rewriting,
the command ledger (login rules), credential capture, the session's background tasks.

These rules were covered only through a real Dovecot (tests/integration/test_proxy_core.py,
test_hostile_clients.py); here each decision is pinned down directly and fast.
"""

from __future__ import annotations

import asyncio
import base64

import pytest

from pushproxy.imap.capabilities import CapabilityPolicy, ConnectionFacts
from pushproxy.imap.parse import StatusResponse, parse_status_response
from pushproxy.proxy.capture import capture_of, credentials_of
from pushproxy.proxy.handshake import (
    Action,
    UpstreamHandshake,
    UpstreamState,
    has_capability_code,
    rewrite_code,
    rewrite_untagged,
)
from pushproxy.proxy.ledger import CommandLedger
from tests.support.sessions import new_session

# --- upstream handshake ----------------------------------------------------------------------


@pytest.mark.parametrize("security", ["none", "tls"])
def test_handshake_without_starttls_is_ready_at_the_greeting(security: str) -> None:
    hs = UpstreamHandshake(security)
    greeting = b"* OK [CAPABILITY IMAP4rev1 IDLE] Dovecot ready.\r\n"
    step = hs.line(greeting)
    assert step.action is Action.READY and step.data == greeting and not step.preauth
    assert step.status is not None and step.status.status == b"OK"
    assert hs.ready and hs.state is UpstreamState.READY
    assert hs.line(b"* 3 EXISTS\r\n").action is Action.NONE  # once ready, lines are the relay's


def test_handshake_preauth_greeting_without_starttls() -> None:
    hs = UpstreamHandshake("none")
    step = hs.line(b"* PREAUTH [CAPABILITY IMAP4rev1] Logged in as alice\r\n")
    assert step.action is Action.READY and step.preauth


def test_handshake_starttls_then_capability_then_a_greeting_built_for_the_client() -> None:
    hs = UpstreamHandshake("starttls")
    step = hs.line(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Dovecot ready.\r\n")
    assert (step.action, step.data) == (Action.SEND, b"PP0 STARTTLS\r\n")
    assert hs.state is UpstreamState.STARTTLS and not hs.ready
    # untagged chatter and foreign tags before our answer change nothing
    assert hs.line(b"* OK still here\r\n").action is Action.NONE
    assert hs.line(b"a1 OK not ours\r\n").action is Action.NONE
    step = hs.line(b"PP0 OK Begin TLS negotiation now.\r\n")
    assert (step.action, step.data) == (Action.START_TLS_AND_SEND, b"PP1 CAPABILITY\r\n")
    assert hs.state is UpstreamState.CAPABILITY
    assert hs.line(b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN\r\n").action is Action.NONE
    assert hs.line(b"* OK chatter\r\n").action is Action.NONE
    step = hs.line(b"PP1 OK Capability completed.\r\n")
    assert step.action is Action.READY and hs.ready and not step.preauth
    # the client's greeting: the capabilities after TLS, the server's own greeting text
    assert step.data == b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] Dovecot ready.\r\n"
    assert step.status is not None and has_capability_code(step.status)


def test_handshake_starttls_greeting_text_without_a_code() -> None:
    hs = UpstreamHandshake("starttls")
    hs.line(b"* OK IMAP server ready\r\n")
    hs.line(b"PP0 OK go\r\n")
    hs.line(b"* CAPABILITY IMAP4rev1\r\n")
    assert hs.line(b"PP1 OK done\r\n").data == b"* OK [CAPABILITY IMAP4rev1] IMAP server ready\r\n"


@pytest.mark.parametrize(
    "lines,reason",
    [
        ([b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n"], "PREAUTH; STARTTLS impossible"),
        ([b"* OK hi\r\n", b"PP0 NO [ALERT] no TLS here\r\n"], "Upstream refused STARTTLS"),
        ([b"* OK hi\r\n", b"PP0 BAD what\r\n"], "Upstream refused STARTTLS"),
        ([b"* OK hi\r\n", b"PP0 OK go\r\n", b"PP1 NO nope\r\n"], "Upstream refused CAPABILITY"),
    ],
)
def test_handshake_starttls_failures_are_fatal(lines: list[bytes], reason: str) -> None:
    hs = UpstreamHandshake("starttls")
    steps = [hs.line(line) for line in lines]
    assert steps[-1].action is Action.FATAL and reason in steps[-1].text
    assert not hs.ready


@pytest.mark.parametrize(
    "greeting",
    [b"a1 OK tagged greeting\r\n", b"* NO go away\r\n", b"* 1 EXISTS\r\n", b"garbage\r\n", b"+ ready\r\n", b"\r\n"],
)
@pytest.mark.parametrize("security", ["none", "starttls"])
def test_handshake_invalid_greeting_is_fatal(greeting: bytes, security: str) -> None:
    step = UpstreamHandshake(security).line(greeting)
    assert step.action is Action.FATAL and "invalid greeting" in step.text


@pytest.mark.parametrize("security", ["none", "starttls"])
def test_handshake_bye_greeting_is_passed_on(security: str) -> None:
    line = b"* BYE [UNAVAILABLE] Server shutting down\r\n"
    step = UpstreamHandshake(security).line(line)
    assert (step.action, step.data) == (Action.BYE, line)


# --- capability rewriting in responses -------------------------------------------------------

POLICY = CapabilityPolicy(add_post_auth=(b"XAPPLEPUSHSERVICE",), restrict_sasl=True)


def test_rewrite_untagged_capability_data_and_codes() -> None:
    facts = ConnectionFacts(authenticated=True)
    data = rewrite_untagged(b"* CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE STARTTLS\r\n", POLICY, facts)
    assert data == b"* CAPABILITY IMAP4rev1 IDLE XAPPLEPUSHSERVICE\r\n"
    code = rewrite_untagged(b"* OK [CAPABILITY IMAP4rev1 AUTH=CRAM-MD5 AUTH=PLAIN] hi\r\n", POLICY, facts)
    assert code == b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN XAPPLEPUSHSERVICE] hi\r\n"
    # case-insensitive keyword
    assert b"COMPRESS" not in rewrite_untagged(b"* capability IMAP4rev1 COMPRESS=DEFLATE\r\n", POLICY, facts)


@pytest.mark.parametrize(
    "line",
    [
        b"* OK [ALERT] COMPRESS=DEFLATE is mentioned but not a capability\r\n",
        b"* 3 EXISTS\r\n",
        b'* LIST () "/" "CAPABILITY COMPRESS=DEFLATE"\r\n',
        b"* OK no code at all\r\n",
    ],
)
def test_rewrite_untagged_leaves_everything_else_byte_identical(line: bytes) -> None:
    assert rewrite_untagged(line, POLICY, ConnectionFacts(authenticated=True)) is line


def test_rewrite_code_of_a_tagged_status() -> None:
    line = b"a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] Logged in\r\n"
    status = parse_status_response(line)
    assert status is not None and has_capability_code(status)
    out = rewrite_code(line, status, POLICY, ConnectionFacts(authenticated=True))
    assert out == b"a1 OK [CAPABILITY IMAP4rev1 XAPPLEPUSHSERVICE] Logged in\r\n"
    plain = parse_status_response(b"a1 OK [READ-WRITE] done\r\n")
    assert plain is not None and not has_capability_code(plain)


# --- the command ledger: responses in order, one login, identity in one place ----------------


def status(line: bytes) -> StatusResponse:
    st = parse_status_response(line)
    assert st is not None
    return st


def test_ledger_matches_in_order_and_plain_commands_by_tag() -> None:
    ledger = CommandLedger()
    assert not ledger and ledger.match(b"a1") is None
    a1, a2, a3 = ledger.sent(b"a1"), ledger.sent(b"a2"), ledger.sent(b"a3")
    assert ledger and not ledger.special
    assert ledger.match(b"a2") is a2  # upstream answered a plain command out of order
    assert ledger.match(b"zz") is None  # nobody's tag: nothing taken off
    assert ledger.match(b"a1") is a1 and ledger.match(b"a3") is a3
    assert not ledger


def test_ledger_never_matches_a_login_or_own_command_out_of_order() -> None:
    ledger = CommandLedger()
    ledger.sent(b"a1")
    login = ledger.sent(b"a2", login=True)
    tag = ledger.next_own_tag(b"PPX")
    assert tag == b"PPX1" and ledger.next_own_tag(b"PPX") == b"PPX2"
    ledger.sent_own(tag)
    assert ledger.special and ledger.login is login and ledger.own_in_flight == 1
    # a response carrying the login's (client-chosen) tag, before a1's, is not the login's answer
    assert ledger.match(b"a2") is None and ledger.login is login
    assert ledger.match(tag) is None and ledger.own_in_flight == 1
    assert ledger.match(b"a1") is not None
    assert ledger.match(b"a2") is login and ledger.login is None
    assert ledger.special  # the own command is still in flight
    own = ledger.match(tag)
    assert own is not None and own.own and ledger.own_in_flight == 0 and not ledger.special


def test_ledger_one_login_at_a_time() -> None:
    ledger = CommandLedger()
    ledger.sent(b"a1", login=True)
    with pytest.raises(AssertionError, match="one login at a time"):
        ledger.sent(b"a2", login=True)


def test_identity_changes_only_on_an_ok_to_a_login_before_authentication() -> None:
    ledger = CommandLedger()
    facts = ConnectionFacts()
    plain = ledger.sent(b"a1")
    assert not CommandLedger.settle_login(plain, status(b"a1 OK done\r\n"), facts)
    login = ledger.sent(b"a2", login=True)
    assert not CommandLedger.settle_login(login, status(b"a2 NO [AUTHENTICATIONFAILED] no\r\n"), facts)
    assert not CommandLedger.settle_login(login, status(b"a2 BAD syntax\r\n"), facts)
    assert not facts.authenticated
    assert CommandLedger.settle_login(login, status(b"a2 OK Logged in\r\n"), facts)
    assert facts.authenticated
    again = CommandLedger().sent(b"a3", login=True)
    assert not CommandLedger.settle_login(again, status(b"a3 OK Logged in\r\n"), facts)  # already in


@pytest.mark.parametrize(
    "facts,expected",
    [
        (ConnectionFacts(authenticated=True), ("BAD", "Already authenticated", None)),
        (
            ConnectionFacts(plaintext_auth_allowed=False),
            ("NO", "Plaintext authentication disallowed on non-secure connections", "PRIVACYREQUIRED"),
        ),
        (ConnectionFacts(plaintext_auth_allowed=False, client_tls=True), None),
        (ConnectionFacts(), None),
    ],
)
def test_login_refusal_rules(facts: ConnectionFacts, expected: tuple[str, str, str | None] | None) -> None:
    reply = CommandLedger.login_refusal(facts)
    assert (None if reply is None else (reply.status, reply.text, reply.code)) == expected


# --- credential capture --------------------------------------------------------------------------


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def test_capture_of_login_and_authenticate_plain() -> None:
    assert capture_of(b"LOGIN", b"a1 LOGIN alice pw") == (("login", b"a1 LOGIN alice pw"), False)
    blob = b64(b"\0alice\0pw")
    assert capture_of(b"AUTHENTICATE", b"a1 AUTHENTICATE PLAIN " + blob) == (("sasl", blob), False)
    assert capture_of(b"AUTHENTICATE", b"a1 authenticate plain") == (("sasl", b""), True)  # response after "+"
    assert capture_of(b"AUTHENTICATE", b"a1 AUTHENTICATE CRAM-MD5") == (None, False)  # no reusable password
    assert capture_of(b"AUTHENTICATE", b"a1 AUTHENTICATE") == (None, False)
    assert capture_of(b"AUTHENTICATE", b'a1 AUTHENTICATE "unterminated') == (None, False)


@pytest.mark.parametrize(
    "capture,expected",
    [
        (("login", b"a1 LOGIN alice pw"), ("alice", "pw")),
        (("login", b'a1 LOGIN "Alice" "pa ss\\"word"'), ("Alice", 'pa ss"word')),
        (("login", b"a1 LOGIN {5}\r\nalice {2}\r\npw"), ("alice", "pw")),
        (("login", b"a1 LOGIN alice"), None),
        (("login", b"a1 LOGIN alice pw extra"), None),
        (("login", b'a1 LOGIN "alice'), None),
        (("sasl", b64(b"\0bob\0bobpw")), ("bob", "bobpw")),
        (("sasl", b64(b"bob\0bob\0bobpw")), ("bob", "bobpw")),  # authzid = authcid
        (("sasl", b64(b"admin\0bob\0bobpw")), None),  # acting for another user: no push credentials
        (("sasl", b64(b"\0bob")), None),
        (("sasl", b64(b"\0b\xffob\0pw")), None),
        (("sasl", b"=="), None),
        (("sasl", b"="), None),
        (("sasl", b""), None),
        (("sasl", b"not base64!"), None),
    ],
)
def test_credentials_of(capture: tuple[str, bytes], expected: tuple[str, str] | None) -> None:
    assert credentials_of(capture) == expected


# --- background work: every spawned task is the session's until it is done -----------------


async def test_a_spawned_task_is_kept_until_it_is_done() -> None:
    session = new_session()
    release = asyncio.Event()
    session.spawn(release.wait())  # e.g. telling the extensions of a command's OK
    await asyncio.sleep(0)
    assert len(session._background) == 1  # referenced: the loop alone would let it be collected
    release.set()
    await asyncio.sleep(0.01)
    assert not session._background
