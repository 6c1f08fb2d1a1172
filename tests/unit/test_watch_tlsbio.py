"""pushproxy.watch.tlsbio: the watchers' TLS, with session resumption, as strict as the loop's own TLS.

Real TLS servers on loopback (asyncio's, in this process), real handshakes:
a session is offered only to the server it came from (host, port, server
name) through the context it was verified with; a server that does not
resume gets a full, verified handshake; a server with a certificate the
context does not trust is refused even when a session for its address is
cached; a refused handshake drops the cached session.  On the standard loop
(pytest-asyncio's) and on uvloop (the default loop).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop

from pushproxy.watch import tlsbio
from pushproxy.watch.tlsbio import SessionCache, connect_tls, start_tls
from tests.support.certs import ApnsTestCerts, make_apns_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ApnsTestCerts:
    return make_apns_certs(tmp_path_factory.mktemp("tlsbio-certs"))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> ApnsTestCerts:
    """Another PKI: a server certificate for localhost that the first CA did not sign."""
    return make_apns_certs(tmp_path_factory.mktemp("tlsbio-foreign"))


class Server:
    """A TLS server that greets and records, per connection, whether the handshake resumed a session."""

    def __init__(self, cert: Path, key: Path, *, starttls: bool = False) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.starttls = starttls
        self.resumed: list[bool] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._held: list[asyncio.StreamWriter] = []

    async def open(self, port: int = 0) -> Server:
        tls = None if self.starttls else self.ctx
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=tls, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.append(writer)
        if self.starttls:
            writer.write(b"* OK plain\r\n")
            await reader.readline()
            writer.write(b"a OK begin TLS\r\n")
            await writer.drain()
            await writer.start_tls(self.ctx)
        obj = writer.get_extra_info("ssl_object")
        self.resumed.append(bool(obj.session_reused))
        writer.write(b"* OK ready\r\n")
        await writer.drain()

    async def close(self) -> None:
        for writer in self._held:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Greeted(asyncio.Protocol):
    def __init__(self) -> None:
        self.lines = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.lines.done():
            self.lines.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lines.done():
            self.lines.set_exception(ConnectionResetError("lost"))


def client_context(certs: ApnsTestCerts) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def connect(
    port: int, ctx: ssl.SSLContext, server_name: str = "localhost"
) -> tuple[tlsbio.TLSBioTransport, bool]:
    """One implicit-TLS connection; (transport, whether the client saw its handshake resume)."""
    app = Greeted()
    tls = await asyncio.wait_for(connect_tls(app, "127.0.0.1", port, ctx, server_name), 10)
    assert await asyncio.wait_for(app.lines, 10) == b"* OK ready\r\n"
    return tls, bool(tls.get_extra_info("ssl_object").session_reused)


@pytest.fixture
async def server(certs: ApnsTestCerts) -> AsyncIterator[Server]:
    srv = await Server(certs.server_cert, certs.server_key).open()
    yield srv
    await srv.close()


async def test_later_handshakes_resume_and_certificate_is_known(server: Server, certs: ApnsTestCerts) -> None:
    ctx = client_context(certs)
    first, reused = await connect(server.port, ctx)
    assert not reused
    later = [await connect(server.port, ctx) for _ in range(3)]
    assert [r for _, r in later] == [True, True, True]
    assert server.resumed == [False, True, True, True]
    # The server's certificate, verified in the first handshake, is the resumed connections' too.
    assert later[-1][0].get_extra_info("peercert")["subject"] == first.get_extra_info("peercert")["subject"]
    for tls, _ in [(first, False), *later]:
        tls.close()


async def test_session_is_not_offered_to_another_port_name_or_context(server: Server, certs: ApnsTestCerts) -> None:
    ctx = client_context(certs)
    await connect(server.port, ctx)
    other = await Server(certs.server_cert, certs.server_key).open()
    try:
        _, reused = await connect(other.port, ctx)  # same host and name, another port
        assert not reused and other.resumed == [False]
    finally:
        await other.close()
    # Same address and port, another server name (the certificate names 127.0.0.1 too).
    _, reused = await connect(server.port, ctx, server_name="127.0.0.1")
    assert not reused
    # Same server, another context (e.g. after a configuration reload): its own handshake.
    _, reused = await connect(server.port, client_context(certs))
    assert not reused
    assert server.resumed == [False, False, False]
    _, reused = await connect(server.port, ctx)  # the first context's session is still there
    assert reused


async def test_server_refusing_resumption_gets_a_full_handshake(server: Server, certs: ApnsTestCerts) -> None:
    ctx = client_context(certs)
    await connect(server.port, ctx)
    await server.close()
    # The same port, a server with other ticket keys: it cannot resume the cached session.
    fresh = await Server(certs.server_cert, certs.server_key).open(server.port)
    try:
        _, reused = await connect(fresh.port, ctx)
        assert not reused and fresh.resumed == [False]
        _, reused = await connect(fresh.port, ctx)  # the new session replaced the refused one
        assert reused and fresh.resumed == [False, True]
    finally:
        await fresh.close()


async def test_untrusted_server_is_refused_despite_a_cached_session(
    server: Server, certs: ApnsTestCerts, foreign: ApnsTestCerts
) -> None:
    ctx = client_context(certs)
    await connect(server.port, ctx)
    key = ("127.0.0.1", server.port, "localhost")
    assert SessionCache.get(ctx, key) is not None
    await server.close()
    impostor = await Server(foreign.server_cert, foreign.server_key).open(server.port)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(impostor.port, ctx)
        assert SessionCache.get(ctx, key) is None  # a failed handshake drops the session
    finally:
        await impostor.close()


async def test_wrong_name_is_refused_on_a_full_handshake(server: Server, certs: ApnsTestCerts) -> None:
    ctx = client_context(certs)
    await connect(server.port, ctx)
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(server.port, ctx, server_name="not-the-server.example")


async def test_session_is_taken_once_a_refresh_period(
    server: Server, certs: ApnsTestCerts, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = client_context(certs)
    key = ("127.0.0.1", server.port, "localhost")
    await connect(server.port, ctx)
    first = SessionCache.get(ctx, key)
    await connect(server.port, ctx)
    assert SessionCache.get(ctx, key) is first  # resumed, fresh enough: not taken again
    monkeypatch.setattr(SessionCache, "REFRESH", 0.0)
    _, reused = await connect(server.port, ctx)
    assert reused and SessionCache.get(ctx, key) is not first


async def test_a_herd_opened_before_any_session_gives_the_cache_one(
    server: Server, certs: ApnsTestCerts, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[object] = []
    put = SessionCache.put
    monkeypatch.setattr(SessionCache, "put", classmethod(lambda cls, *a: (taken.append(a), put(*a))))
    ctx = client_context(certs)
    herd = await asyncio.gather(*(connect(server.port, ctx) for _ in range(5)))
    assert [reused for _, reused in herd] == [False] * 5
    assert len(taken) == 1  # the first to finish; the others found it there
    _, reused = await connect(server.port, ctx)
    assert reused and len(taken) == 1


async def test_starttls_resumes_too(certs: ApnsTestCerts) -> None:
    srv = await Server(certs.server_cert, certs.server_key, starttls=True).open()
    ctx = client_context(certs)
    try:
        for _ in range(2):
            app = Greeted()
            loop = asyncio.get_running_loop()
            raw, _ = await loop.create_connection(lambda: app, "127.0.0.1", srv.port)  # noqa: B023
            assert await asyncio.wait_for(app.lines, 10) == b"* OK plain\r\n"
            app.lines = loop.create_future()
            raw.write(b"a STARTTLS\r\n")
            assert await asyncio.wait_for(app.lines, 10) == b"a OK begin TLS\r\n"
            app.lines = loop.create_future()
            key = ("127.0.0.1", srv.port, "localhost")
            tls = await asyncio.wait_for(start_tls(raw, app, ctx, "localhost", key), 10)
            assert await asyncio.wait_for(app.lines, 10) == b"* OK ready\r\n"
            tls.close()
        assert srv.resumed == [False, True]
    finally:
        await srv.close()


def test_on_uvloop(certs: ApnsTestCerts, foreign: ApnsTestCerts) -> None:
    """The same on uvloop (its TCP transport below): resumed, refused, untrusted."""

    async def scenario() -> None:
        ctx = client_context(certs)
        srv = await Server(certs.server_cert, certs.server_key).open()
        assert [(await connect(srv.port, ctx))[1] for _ in range(2)] == [False, True]
        await srv.close()
        fresh = await Server(certs.server_cert, certs.server_key).open(srv.port)
        assert [(await connect(srv.port, ctx))[1] for _ in range(2)] == [False, True]
        await fresh.close()
        impostor = await Server(foreign.server_cert, foreign.server_key).open(srv.port)
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(srv.port, ctx)
        finally:
            await impostor.close()
        await test_starttls_resumes_too(certs)

    uvloop.run(scenario())
