"""The sans-IO parts of the edge: PROXY v2, connection limits, auth penalty, ID merging."""

from __future__ import annotations

import pytest

from pushproxy.imap.parse import ParseError
from pushproxy.proxy import proxyproto
from pushproxy.proxy.client_id import ClientAddress, merged_id_command
from pushproxy.proxy.limits import ConnectionLimiter
from pushproxy.proxy.penalty import AuthPenalty
from tests.support.sessions import Echo, FakeIO, make, new_session, settle

ADDR = ClientAddress("203.0.113.7", 40000, "198.51.100.1", 143, "s1")


@pytest.mark.parametrize(
    "client,server",
    [("203.0.113.7", "198.51.100.1"), ("2001:db8::1", "2001:db8::2"), ("203.0.113.7", "2001:db8::2")],
)
def test_proxy_v2_round_trip_any_chunking(client: str, server: str) -> None:
    header = proxyproto.build_header(client, 40000, server, 143)
    for cut in range(len(header)):
        assert proxyproto.parse_header(header[:cut]) is None
    address, used = proxyproto.parse_header(header + b"a1 NOOP\r\n")  # type: ignore[misc]
    assert used == len(header) and address is not None
    assert (address.client_ip, address.client_port, address.server_port) == (client, 40000, 143)


@pytest.mark.parametrize(
    "data",
    [
        b"a1 LOGIN x y\r\n",
        proxyproto.SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
        proxyproto.SIGNATURE + b"\x21\x11\xff\xff",
    ],
)
def test_proxy_v2_rejects_what_is_not_a_header(data: bytes) -> None:
    with pytest.raises(proxyproto.ProxyHeaderError):
        proxyproto.parse_header(data)


def test_proxy_v2_local_command_keeps_the_socket_address() -> None:
    local = proxyproto.SIGNATURE + b"\x20\x00\x00\x00"
    assert proxyproto.parse_header(local) == (None, 16)


def test_connection_limiter_total_and_per_ip() -> None:
    lim = ConnectionLimiter(max_total=3, max_per_ip=2)
    assert lim.admit("a") is None and lim.admit("a") is None
    assert lim.admit("a") == "per_ip"
    assert lim.admit("b") is None and lim.admit("c") == "total"
    lim.release("a")
    assert lim.admit("c") is None and lim.count("a") == 1


def test_auth_penalty_grows_per_ip_caps_and_forgets() -> None:
    now = [0.0]
    pen = AuthPenalty(max_delay=15, reset_after=300, max_entries=2, clock=lambda: now[0])
    delays = []
    for _ in range(6):
        delays.append(pen.delay("1.2.3.4"))
        pen.failed("1.2.3.4")
    assert delays == [0, 2, 4, 8, 15, 15]
    assert pen.delay("5.6.7.8") == 0  # another IP is not slowed
    now[0] += 301
    assert pen.delay("1.2.3.4") == 0
    for ip in ("a", "b", "c"):  # bounded table
        pen.failed(ip)
    assert pen.failures("a") == 0 and pen.failures("c") == 1


def test_client_id_is_merged_and_cannot_choose_the_address() -> None:
    out = merged_id_command(b'a ID ("name" "mutt" "x-originating-ip" "10.0.0.1" "os" NIL)\r\n', ADDR)
    assert out.startswith(b'a ID ("name" "mutt" "x-originating-ip" "203.0.113.7"')
    assert b"10.0.0.1" not in out and b"os" not in out and out.count(b"x-originating-ip") == 1
    assert merged_id_command(b'a ID ("x-originating-ip" "10.0.0.1")\r\n', None) == b"a ID NIL\r\n"
    assert b'"x-session-id" "s1"' in merged_id_command(b"a ID NIL\r\n", ADDR)
    with pytest.raises(ParseError):
        merged_id_command(b'a ID ("odd")\r\n', ADDR)


async def test_session_sends_the_client_address_before_the_first_login_and_swallows_its_answer() -> None:
    s, io, sink, _ = make(client_address=ADDR)
    s.client_data(b"a1 LOGIN alice pw\r\n")
    sent = bytes(io.upstream)
    assert sent.startswith(b'PPI1 ID ("x-originating-ip" "203.0.113.7"') and sent.endswith(b"a1 LOGIN alice pw\r\n")
    before = bytes(io.client)
    s.upstream_data(b'* ID ("name" "Dovecot")\r\nPPI1 OK ID completed.\r\n')
    assert bytes(io.client) == before  # the proxy's own exchange stays invisible
    s.upstream_data(b"a1 OK Logged in\r\n")
    await settle()
    assert s.account == "alice" and sink.logins
    # A client ID sent before login replaces the proxy's (one ID, merged).
    s2, io2, _, _ = make(client_address=ADDR)
    s2.client_data(b'i ID ("name" "mutt")\r\n')
    s2.upstream_data(b"* ID NIL\r\ni OK ID completed.\r\n")
    s2.client_data(b"a1 LOGIN alice pw\r\n")
    assert bytes(io2.upstream).count(b" ID (") == 1 and b"PPI" not in bytes(io2.upstream)
    assert b"i OK ID completed" in bytes(io2.client)


async def test_session_holds_back_a_failed_login_for_the_penalty() -> None:
    pen = AuthPenalty(max_delay=0.2, reset_after=60)
    pen.failed("192.0.2.1")  # one earlier failure: 0.2 s (capped)
    io = FakeIO()
    s = new_session(io, client_tls=True, client_ip="192.0.2.1", penalty=pen)
    s.upstream_data(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")
    s.client_data(b"a1 LOGIN alice wrong\r\na2 NOOP\r\n")
    s.upstream_data(b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    assert b"a1 NO" not in bytes(io.client) and b"a2" not in bytes(io.upstream)
    for _ in range(50):
        await settle()
        if b"a1 NO" in bytes(io.client):
            break
    assert b"a1 NO" in bytes(io.client) and bytes(io.upstream).endswith(b"a2 NOOP\r\n")
    assert pen.failures("192.0.2.1") == 2


async def test_lazy_upstream_greets_from_the_proxy_and_opens_upstream_at_the_first_command() -> None:
    io = FakeIO()
    s = new_session(io, [Echo()])
    s.greet([b"IMAP4rev1", b"AUTH=PLAIN", b"COMPRESS=DEFLATE"])
    assert bytes(io.client) == b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Proxy ready\r\n"
    assert not io.upstream_opened
    s.client_data(b"a1 CAPABILITY\r\n")
    assert io.upstream_opened and bytes(io.upstream) == b""
    s.upstream_data(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Dovecot ready.\r\n")
    assert bytes(io.upstream) == b"a1 CAPABILITY\r\n"
    assert bytes(io.client).count(b"* OK") == 1  # upstream's greeting is not shown twice


def test_upstream_handshake_steps() -> None:
    from pushproxy.proxy.handshake import Action, UpstreamHandshake

    hs = UpstreamHandshake("starttls")
    step = hs.line(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n")
    assert (step.action, step.data) == (Action.SEND, b"PP0 STARTTLS\r\n") and not hs.ready
    assert hs.line(b"* OK chatter\r\n").action is Action.NONE
    step = hs.line(b"PP0 OK Begin TLS\r\n")
    assert (step.action, step.data) == (Action.START_TLS_AND_SEND, b"PP1 CAPABILITY\r\n")
    assert hs.line(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n").action is Action.NONE
    step = hs.line(b"PP1 OK done\r\n")
    assert step.action is Action.READY and hs.ready
    assert step.data == b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Dovecot ready.\r\n"
    for security, greeting in (("starttls", b"* PREAUTH hi\r\n"), ("none", b"hello\r\n"), ("tls", b"a1 OK x\r\n")):
        assert UpstreamHandshake(security).line(greeting).action is Action.FATAL
    assert UpstreamHandshake("none").line(b"* BYE busy\r\n").action is Action.BYE
    step = UpstreamHandshake("none").line(b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n")
    assert step.action is Action.READY and step.preauth
