"""Check, in a fresh interpreter, what pushproxy/proxy/transport.py assumes of Twisted's internals.

``python -m tests.support.twisted_probe CERT KEY`` installs the asyncio reactor,
makes real loopback connections (plain TCP, STARTTLS, implicit TLS) and prints
one JSON object: check name -> [passed, detail].  Run by
tests/unit/test_twisted_internals.py (a fresh process because the reactor can be
installed once per interpreter).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import asyncioreactor

LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)
asyncioreactor.install(LOOP)

from twisted.internet import protocol, reactor, ssl, tcp  # noqa: E402
from twisted.internet.abstract import FileDescriptor  # noqa: E402
from twisted.protocols.tls import TLSMemoryBIOProtocol  # noqa: E402

from pushproxy.proxy import transport as tx  # noqa: E402
from pushproxy.proxy.tls import server_tls_options  # noqa: E402

checks: dict[str, list[Any]] = {}


def check(name: str, fn: Callable[[], object]) -> None:
    try:
        checks[name] = [bool(fn()), ""]
    except Exception as exc:
        checks[name] = [False, f"{type(exc).__name__}: {exc}"]


class Peer(protocol.Protocol):
    def __init__(self, made: list[Peer]) -> None:
        self.received = b""
        self.made = made

    def connectionMade(self) -> None:
        self.made.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class Factory(protocol.Factory):
    noisy = False

    def __init__(self) -> None:
        self.made: list[Peer] = []

    def buildProtocol(self, addr: object) -> Peer:
        return Peer(self.made)


class ClientFactory(Factory, protocol.ClientFactory):
    pass


async def until(pred: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


async def stop(port: Any) -> None:
    d = port.stopListening()
    if d is not None:
        await d.asFuture(LOOP)


def idle_write_state(t: Any) -> bool:
    return (
        t._tempDataLen == 0 and t.dataBuffer == b"" and t.connected and not t.disconnecting and not t._writeDisconnected
    )


async def plain_and_starttls(server_options: Any) -> None:
    servers, clients = Factory(), ClientFactory()
    port = reactor.listenTCP(0, servers, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.connectTCP("127.0.0.1", port.getHost().port, clients)  # type: ignore[attr-defined]
    await until(lambda: servers.made and clients.made)
    server, client = servers.made[0], clients.made[0]
    st, ct = server.transport, client.transport
    check("tcp_transport_classes", lambda: type(st) is tcp.Server and type(ct) is tcp.Client)
    check("tcp_idle_write_state", lambda: idle_write_state(st) and idle_write_state(ct))
    check(
        "tcp_socket_and_tls_flag",
        lambda: callable(st.socket.send) and callable(st.socket.sendmsg) and st.TLS is False,  # type: ignore[union-attr]
    )
    tx.tune(st)
    check(
        "tcp_reads_buffersize_bytes",
        lambda: "self.bufferSize" in inspect.getsource(tcp.Connection.doRead) and st.bufferSize == tx.READ_SIZE,  # type: ignore[union-attr]
    )
    FileDescriptor.write(st, b"q")  # type: ignore[arg-type]
    check("filedescriptor_write_queues", lambda: st._tempDataLen == 1)  # type: ignore[union-attr]
    await until(lambda: client.received == b"q")
    tx.write(st, b"now")
    check("fast_write_sends_at_once", lambda: idle_write_state(st))
    await until(lambda: client.received == b"qnow")
    tx.write_sequence(st, [b"a", memoryview(b"b"), b"c"])
    await until(lambda: client.received == b"qnowabc")

    client_options = ssl.CertificateOptions(verify=False)
    st.startTLS(server_options)  # type: ignore[union-attr]
    ct.startTLS(client_options)  # type: ignore[union-attr]
    tls = tx.tls_layer(st)
    check("starttls_sets_tls_and_protocol", lambda: st.TLS is True and isinstance(tls, TLSMemoryBIOProtocol))  # type: ignore[union-attr]
    check("starttls_bypass_has_connection", lambda: tls.transport._connection is st)
    tx.write(ct, b"hello")
    await until(lambda: server.received == b"hello")
    aggregator = tls.__dict__.get("_aggregator")
    check("tls_aggregator_buffer", lambda: aggregator is not None and not aggregator._buffer)
    check("tls_write_is_unbuffered", lambda: callable(TLSMemoryBIOProtocol.write))
    tx.write(st, b"over tls")
    await until(lambda: client.received == b"qnowabcover tls")
    handle = tls.getHandle()
    check("tls_app_data_is_the_protocol", lambda: handle.get_app_data() is tls)
    check("tls_peer", lambda: tx.tls_peer(handle) == f"127.0.0.1:{ct.getHost().port}")  # type: ignore[union-attr]
    check("certificate_options_context_is_shared", lambda: handle.get_context() is server_options.getContext())
    ct.registerProducer(st, True)  # type: ignore[union-attr]
    st.registerProducer(ct, True)  # type: ignore[union-attr]
    tx.unregister_producer(ct)  # as the connection does before closing (else loseConnection waits)
    tx.unregister_producer(st)
    ct.loseConnection()  # type: ignore[union-attr]
    st.loseConnection()  # type: ignore[union-attr]
    await until(lambda: not st.connected and not ct.connected)  # type: ignore[union-attr]
    check("unregister_producer_after_close", lambda: tx.unregister_producer(st) is None)
    await stop(port)


async def implicit_tls(server_options: Any) -> None:
    servers, clients = Factory(), ClientFactory()
    port = reactor.listenSSL(0, servers, server_options, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.connectSSL("127.0.0.1", port.getHost().port, clients, ssl.CertificateOptions(verify=False))  # type: ignore[attr-defined]
    await until(lambda: servers.made and clients.made)
    server, client = servers.made[0], clients.made[0]
    st = server.transport
    check(
        "implicit_tls_transport",
        lambda: isinstance(st, TLSMemoryBIOProtocol) and type(st.transport) is tcp.Server and st.transport.TLS is False,
    )
    tx.write(st, b"hi")
    await until(lambda: client.received == b"hi")
    st.loseConnection()  # type: ignore[union-attr]
    await stop(port)


async def main(cert: Path, key: Path) -> None:
    check("asyncio_reactor_loop", lambda: tx.asyncio_loop_of(reactor) is LOOP)
    options = server_tls_options(cert, key)
    check("certificate_options_context_is_cached", lambda: options.getContext() is options.getContext())
    async with asyncio.timeout(30):
        await plain_and_starttls(options)
        await implicit_tls(options)


if __name__ == "__main__":
    try:
        LOOP.run_until_complete(main(Path(sys.argv[1]), Path(sys.argv[2])))
    except Exception as exc:  # the checks made so far are still reported
        checks["probe_completed"] = [False, f"{type(exc).__name__}: {exc}"]
    else:
        checks["probe_completed"] = [True, ""]
    print(json.dumps(checks))
