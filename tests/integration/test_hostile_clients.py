"""Hostile clients against the proxy in front of a real Dovecot (issue 9)."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

from tests.support import apns_env
from tests.support.apns_env import TOKEN_A, TOKEN_B, RawClient, apns_config, register
from tests.support.apns_standin import ApnsStandin
from tests.support.certs import ApnsTestCerts
from tests.support.dovecot import Dovecot, make_message
from tests.support.waiting import wait_for

# the shared pytest fixtures (tests/support/apns_env.py)
certs, apns = apns_env.certs, apns_env.apns


def _credential_row(db: Path, account: str) -> tuple[object, ...] | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT * FROM credentials WHERE account = ?", (account,)).fetchone()
    return tuple(row) if row is not None else None


def _wait_credential(db: Path, account: str, timeout: float = 10) -> tuple[object, ...]:
    wait_for(lambda: _credential_row(db, account) is not None, timeout, f"a stored credential for {account}")
    row = _credential_row(db, account)
    assert row is not None
    return row


def test_duplicate_tag_takeover_leaves_alice_alice(
    dovecot: Dovecot,
    proxy_factory,
    apns: ApnsStandin,
    certs: ApnsTestCerts,
) -> None:
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns))
    db = proxy.base_dir / "pushproxy.db"
    bob = RawClient(proxy.port)
    assert b"b1 OK" in bob.command(b"b1", b"LOGIN bob bobpw")
    assert b"b2 OK" in register(bob, b"b2", token=TOKEN_B)
    bob_credential = _wait_credential(db, "bob")

    attacker = RawClient(proxy.port)
    attacker.sock.sendall(b"a LOGIN alice alicepw\r\na LOGIN bob anything\r\n")
    answer = attacker.read_until(b"a BAD")
    assert b"a OK" in answer
    # Still alice: the registration lands on alice, bob's stays as it was.
    assert b"a OK" in register(attacker, b"a", token=TOKEN_A)
    proxy.wait_log("authenticated as alice")
    assert "authenticated as bob" not in proxy.log_text().split("authenticated as alice", 1)[1]
    assert _credential_row(db, "bob") == bob_credential

    dovecot.deliver("bob", make_message("for bob"))
    req = apns.wait_for(1, timeout=15)[0]
    assert req.path == f"/3/device/{TOKEN_B}"
    dovecot.deliver("alice", make_message("for alice"))
    paths = {r.path for r in apns.wait_for(2, timeout=15)}
    assert paths == {f"/3/device/{TOKEN_B}", f"/3/device/{TOKEN_A}"}
    attacker.close()
    bob.close()


def test_login_rules_against_dovecot(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot)
    c = RawClient(proxy.port)
    # Two pipelined LOGINs: one at a time; the second runs in the state the first ends in.
    c.sock.sendall(b"a1 LOGIN alice wrong\r\na2 LOGIN bob bobpw\r\na3 LOGIN alice alicepw\r\n")
    out = c.read_until(b"a3 ")
    out += c.read_until(b"\r\n")
    assert b"a1 NO" in out and b"a2 OK" in out and b"a3 BAD" in out
    proxy.wait_log("authenticated as bob")
    assert "authenticated as alice" not in proxy.log_text()
    c.close()

    # AUTHENTICATE interleaved with LOGIN: the line after "+" is the SASL answer.
    c = RawClient(proxy.port)
    c.sock.sendall(b"x1 AUTHENTICATE PLAIN\r\nx2 LOGIN bob bobpw\r\n")
    out = c.read_until(b"x1 ")
    out += c.read_until(b"\r\n")
    assert b"x1 OK" not in out
    blob = base64.b64encode(b"\0alice\0alicepw")
    c.sock.sendall(b"x3 AUTHENTICATE PLAIN " + blob + b"\r\nx4 LOGIN bob bobpw\r\n")
    out = c.read_until(b"x4 ")
    out += c.read_until(b"\r\n")
    assert b"x3 OK" in out and b"x4 BAD" in out
    assert b"x5 OK" in c.command(b"x5", b"NOOP")
    c.close()


def test_invalid_tags_and_huge_literals(dovecot: Dovecot, proxy_factory) -> None:
    proxy = proxy_factory(dovecot)
    c = RawClient(proxy.port)
    assert b"a1 OK" in c.command(b"a1", b"LOGIN alice alicepw")
    # Dovecot answers these with an untagged BAD: the proxy must answer them itself.
    for bad in (b"\xe9 NOOP\r\n", b"x] NOOP\r\n", b"t" * 1000 + b" NOOP\r\n"):
        c.sock.sendall(bad)
        assert c.read_until(b"\r\n").startswith(b"* BAD")
    # A locally answered command after it is answered (it used to hang).
    assert b"a2 BAD" in c.command(b"a2", b"STARTTLS")
    assert b"a3 OK" in c.command(b"a3", b"NOOP")
    c.close()

    # Before login Dovecot also refuses long tags (over ~126 bytes) with an untagged BAD.
    c = RawClient(proxy.port)
    c.sock.sendall(b"t" * 200 + b" NOOP\r\n")
    assert c.read_until(b"\r\n").startswith(b"* BAD")
    assert b"p1 BAD" in c.command(b"p1", b"STARTTLS")
    c.close()

    c = RawClient(proxy.port)
    c.sock.sendall(b"x LOGIN {99999999999999999999}\r\n")
    assert c.read_until(b"\r\n").startswith(b"* BYE")
    assert c.sock.recv(100) == b""
    c.close()


def test_duplicate_tag_takeover_cannot_reach_bobs_webpush_subscriptions(dovecot: Dovecot, proxy_factory) -> None:
    from tests.support.push_standin import PushStandin
    from tests.support.webpush_proxy import (
        RawImap,
        start_proxy,
        subscribe_and_ack,
        wait_pushes,
        wait_until,
    )

    with PushStandin() as standin:
        proxy = start_proxy(proxy_factory, dovecot)
        bob = RawImap(proxy.port)
        bob.login("bob", "bobpw")
        ss = subscribe_and_ack(bob, standin, "bobsub")
        listed = bob.ok("LWEBPUSH *")
        db = proxy.base_dir / "pushproxy.db"
        wait_until(lambda: _credential_row(db, "bob") is not None, what="bob's credential")
        bob_credential = _credential_row(db, "bob")

        attacker = RawClient(proxy.port)
        attacker.sock.sendall(b"a LOGIN alice alicepw\r\na LOGIN bob anything\r\n")
        assert b"a BAD" in attacker.read_until(b"a BAD")
        seen = attacker.command(b"l1", b"LWEBPUSH *")
        assert b"bobsub" not in seen and ss.endpoint.encode() not in seen
        attacker.close()

        assert bob.ok("LWEBPUSH *") == listed  # untouched
        assert _credential_row(db, "bob") == bob_credential
        before = len(standin.records_for(ss))
        dovecot.deliver("bob", make_message("still for bob"))
        wait_pushes(standin, ss, before + 1, timeout=20)
        bob.close()


def test_capabilities_inside_the_login_response_are_the_authenticated_ones(dovecot: Dovecot, proxy_factory) -> None:
    # This Dovecot puts them in the tagged OK's code; an untagged "* CAPABILITY" inside
    # the exchange (other servers) is covered by the session unit tests.
    from tests.support.webpush_proxy import start_proxy

    proxy = start_proxy(proxy_factory, dovecot)
    c = RawClient(proxy.port)
    assert b"WEBPUSH" not in c.command(b"c1", b"CAPABILITY")  # like imaplib at connect
    answer = c.command(b"a1", b"LOGIN alice alicepw")
    caps = [line for line in answer.split(b"\r\n") if b"CAPABILITY" in line]
    assert caps and all(b"WEBPUSH" in line for line in caps), answer
    assert b"WEBPUSH" in c.command(b"c2", b"CAPABILITY")
    c.close()
