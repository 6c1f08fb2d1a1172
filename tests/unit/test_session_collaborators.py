"""The session's collaborators (issue 21 point 2): the phase machine, credential capture, the client's output,
and the rule that no module writes another object's attributes.

The byte-level behaviour is pinned by test_session*.py and the integration tests; these pin the parts.
"""

from __future__ import annotations

import ast
import base64
from pathlib import Path

from pushproxy.proxy.capture import CredentialCapture
from pushproxy.proxy.output import ClientOutput
from pushproxy.proxy.phase import Phase
from pushproxy.proxy.session import Session
from tests.support.sessions import FakeIO, make, new_session, settle

PROXY = Path(__file__).resolve().parents[2] / "pushproxy" / "proxy"


async def test_the_phase_follows_the_exchange() -> None:
    fresh = new_session()
    assert fresh.phase is Phase.CONNECTING  # client bytes wait for upstream's greeting
    s, io, _, _ = make()
    assert s.phase is Phase.RELAYING
    s.client_data(b"a1 LOGIN alice pw\r\na2 NOOP\r\n")
    assert s.phase is Phase.AWAITING_LOGIN and io.paused  # a2 waits for the login's outcome
    s.upstream_data(b"a1 OK Logged in\r\n")
    assert s.phase is Phase.RELAYING and bytes(io.upstream).endswith(b"a2 NOOP\r\n")
    s.client_data(b"a3 XECHO hi\r\n")
    assert s.phase is Phase.AWAITING_DRAIN  # a2 is still in flight
    s.upstream_data(b"a2 OK done\r\n")
    assert s.phase is Phase.ANSWERING
    await settle()
    assert s.phase is Phase.RELAYING and bytes(io.client).endswith(b"a3 OK XECHO done\r\n")
    s.timeout("bye")
    assert s.phase is Phase.CLOSED and s.closed
    s.upstream_data(b"* OK [CAPABILITY IMAP4rev1] late\r\n")
    assert s.phase is Phase.CLOSED  # nothing reopens a closed session


async def test_a_failed_login_with_a_penalty_holds_the_client() -> None:
    from pushproxy.proxy.penalty import AuthPenalty

    io = FakeIO()
    s = new_session(io, client_ip="192.0.2.1", penalty=AuthPenalty(max_delay=0.05, reset_after=60))
    s.upstream_data(b"* OK hi\r\n")
    s.client_data(b"a1 LOGIN alice bad\r\n")
    s.upstream_data(b"a1 NO [AUTHENTICATIONFAILED] no\r\n")
    s.client_data(b"a2 LOGIN alice bad\r\n")
    s.upstream_data(b"a2 NO [AUTHENTICATIONFAILED] no\r\n")
    assert s.phase is Phase.PENALTY and not bytes(io.client).endswith(b"a2 NO [AUTHENTICATIONFAILED] no\r\n")
    await settle()
    assert s.phase is Phase.RELAYING and bytes(io.client).endswith(b"a2 NO [AUTHENTICATIONFAILED] no\r\n")


def test_credential_capture_keeps_only_the_login_in_flight() -> None:
    capture = CredentialCapture()
    capture.begin()
    capture.command(b"LOGIN", b"a1 LOGIN alice wrong")
    assert capture.settle(logged_in=False) is None and capture.login is None
    capture.begin()
    assert capture.settle(logged_in=True) is None  # nothing captured for this one (e.g. too long)
    capture.begin()
    capture.command(b"AUTHENTICATE", b"a2 AUTHENTICATE PLAIN")
    assert capture.sasl_waiting
    capture.sasl_response(base64.b64encode(b"\0Alice\0pw") + b"\r\n")
    assert not capture.sasl_waiting
    assert capture.settle(logged_in=True) == ("Alice", "pw")
    assert (capture.login, capture.account) == ("Alice", "alice")


def test_client_output_is_held_back_and_released_in_order() -> None:
    io = FakeIO()
    out = ClientOutput(io)
    out.lines.append(b"a\r\n")
    out.flush()
    out.hold_back()
    out.lines += [b"b\r\n", b"c\r\n"]
    out.flush()
    assert bytes(io.client) == b"a\r\n"
    out.release()
    assert bytes(io.client) == b"a\r\nb\r\nc\r\n" and out.delayed is None
    out.hold_back()
    out.lines.append(b"d\r\n")
    out.flush()
    out.lines.append(b"e\r\n")
    out.unhold()  # a BYE follows: what was held goes first
    out.flush()
    assert bytes(io.client).endswith(b"d\r\ne\r\n")


def test_session_exposes_its_parts_not_their_state() -> None:
    names = set(vars(new_session()))
    assert not {n for n in names if n.startswith("_cmd") or n in ("_held", "_held_by_login", "_idle", "_own")}
    parts = {"router", "responses", "ledger", "capture", "local", "own", "output", "handshake", "upstream_start"}
    assert parts <= names
    assert isinstance(Session.closed, property)


def _foreign_writes() -> dict[tuple[str, str], set[str]]:
    """(object expression, attribute) -> modules of pushproxy/proxy that assign it on something not ``self``."""
    writes: dict[tuple[str, str], set[str]] = {}
    for path in PROXY.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Attribute) and not (
                    isinstance(target.value, ast.Name) and target.value.id == "self"
                ):
                    writes.setdefault((ast.unparse(target.value), target.attr), set()).add(path.name)
    return writes


def test_no_module_writes_another_objects_attributes() -> None:
    # The connection facts are shared values: each field has one writer (the login rules, STARTTLS);
    # the Twisted adapter sets a Twisted transport's read size and puts the upstream leg's TLS layer
    # between the TCP transport and its protocol (as Twisted's own startTLS does).
    assert _foreign_writes() == {
        ("facts", "authenticated"): {"ledger.py"},
        ("self._facts", "client_tls"): {"local.py"},
        ("base", "bufferSize"): {"transport.py"},
        ("tcp_transport", "protocol"): {"transport.py"},
        ("app", "transport"): {"transport.py"},
    }
