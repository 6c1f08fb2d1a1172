"""The Twisted adapter: every use of Twisted's internals is in this module, and only here.

Writing to transports without a detour through the next loop iteration:
Twisted's TCP transports never send in ``write()``: they queue the bytes,
register the socket for writability and send on the next reactor iteration
(two extra trips through the asyncio reactor's reader/writer bookkeeping per
write).  Its TLS transports add an aggregator on top that copies every write
and flushes it from a ``callLater(0)``.  A proxy writes exactly once per
received chunk, so neither helps it: :func:`write` sends at once when the
transport has nothing queued, hands any remainder to Twisted (which then
applies its usual buffering and producer back-pressure), and gives TLS
transports the bytes without the aggregator.

Anything unusual (a closing transport, bytes already queued, a transport type
we do not know) takes Twisted's ordinary ``write()``, so correctness never
depends on the fast path.

What this module assumes of Twisted (pyproject.toml pins the range; each
assumption is checked directly by ``tests/unit/test_twisted_internals.py``, so an
upgrade that breaks one fails a test named after it):

- plain TCP transports are ``tcp.Server`` / ``tcp.Client``, with ``socket``,
  ``bufferSize`` (read by ``doRead``), ``TLS`` (set by ``startTLS``) and the
  ``FileDescriptor`` write state ``_tempDataLen``, ``dataBuffer``,
  ``connected``, ``disconnecting``, ``_writeDisconnected``;
  ``FileDescriptor.write`` queues bytes;
- a TCP transport delivers to whatever its ``protocol`` attribute holds (:func:`interpose`);
- after ``startTLS`` the transport's ``protocol`` is the ``TLSMemoryBIOProtocol``
  (:func:`tls_layer`), whose ``transport`` is a ``_BypassTLS`` with ``_connection``;
  an implicit-TLS listener hands the protocol a ``TLSMemoryBIOProtocol`` over a
  plain ``tcp.Server``;
- a ``TLSMemoryBIOProtocol`` keeps its write aggregator in ``_aggregator``, with
  ``_buffer`` empty when idle, and ``TLSMemoryBIOProtocol.write`` writes unbuffered;
- ``unregisterProducer`` on a closed TLS transport may raise AttributeError
  (:func:`unregister_producer`);
- the asyncio reactor keeps its loop in ``_asyncioEventloop`` (:func:`asyncio_loop_of`);
- ``CertificateOptions.getContext()`` returns the one context every connection
  uses, and a TLS connection's app data is its ``TLSMemoryBIOProtocol``
  (:func:`set_alpn_selector`, :func:`tls_peer`).

The one other place that leans on Twisted's internals is ``listener.py``'s
listening port (a ``tcp.Port`` subclass: how its accept loop reads
``self.socket`` and ends on ``EAGAIN``); the same test file checks those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = [
    "READ_SIZE",
    "Outbox",
    "asyncio_loop_of",
    "gather_tls_reads",
    "interpose",
    "send_ciphertext",
    "set_alpn_selector",
    "tls_layer",
    "tls_peer",
    "tune",
    "unregister_producer",
    "write",
    "write_sequence",
]

# Bytes asked of the kernel per read.  Twisted's default is 64 KiB; bulk FETCH
# moves fewer, larger chunks with more (measured in bench/passthrough.py).
READ_SIZE = 1 << 18

_PLAIN = (tcp.Server, tcp.Client)
_BATCH = 1 << 16  # gathered bytes sent as one write at most (measured best for TLS bulk)
_DIRECT_CIPHERTEXT_MAX = 4096  # larger TLS records wait for Twisted's write on the next iteration
_tls_write = TLSMemoryBIOProtocol.write  # the unbuffered write (no aggregator)


def tune(transport: Any) -> None:
    """Per-connection settings: keep-alive and the read size."""
    transport.setTcpKeepAlive(True)
    base = transport.transport if isinstance(transport, TLSMemoryBIOProtocol) else transport
    if isinstance(base, _PLAIN):
        base.bufferSize = READ_SIZE


def write(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport`` now if it can take it, else queue it as Twisted does."""
    cls = transport.__class__
    if cls in _PLAIN:
        if transport.TLS:
            if transport.connected:
                _write_tls(transport.protocol, data)
            return
        _send_plain(transport, data)
        return
    if isinstance(transport, TLSMemoryBIOProtocol):
        _write_tls(transport, data)
        return
    transport.write(data)


def write_sequence(transport: Any, parts: Sequence[bytes | memoryview]) -> None:
    """Write several buffers in order; plain TCP sends them with one ``sendmsg`` (no join)."""
    if len(parts) == 1 and type(parts[0]) is bytes:
        write(transport, parts[0])
        return
    if transport.__class__ in _PLAIN and not transport.TLS and _can_send_now(transport):
        try:
            sent = transport.socket.sendmsg(parts)
        except OSError:
            sent = 0
        rest = _after(parts, sent)
        if rest:
            transport.write(rest)
        return
    write(transport, b"".join(parts))


def _after(parts: Sequence[bytes | memoryview], sent: int) -> bytes:
    """The bytes of ``parts`` after the first ``sent`` (rare: the kernel buffer was full)."""
    for i, part in enumerate(parts):
        n = len(part)
        if sent < n:
            return b"".join([memoryview(part)[sent:], *parts[i + 1 :]])
        sent -= n
    return b""


def _can_send_now(transport: Any) -> bool:
    """A plain TCP transport with nothing queued in Twisted that is open for writing."""
    return (
        not transport._tempDataLen
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    )


def _send_plain(transport: Any, data: bytes) -> None:
    """Send on a plain TCP transport now if nothing is queued; queue the rest in Twisted."""
    if _can_send_now(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN or a dead socket: Twisted's write path finds out which
        if sent == len(data):
            return
        if sent:
            data = data[sent:]
    FileDescriptor.write(transport, data)


def send_ciphertext(transport: Any, data: bytes) -> None:
    """Ciphertext: a short record (a command's answer) goes at once; bulk records queue.

    The TLS layer hands over one record per 16 KiB of data; sending each at
    once would make a bulk transfer one small send (and one wake-up of the
    reader) per record, where Twisted's next-iteration write sends them all
    in one go.
    """
    if len(data) <= _DIRECT_CIPHERTEXT_MAX:
        _send_plain(transport, data)
    else:
        FileDescriptor.write(transport, data)


def _direct_ciphertext(tls: TLSMemoryBIOProtocol) -> None:
    """Let the TLS layer's own short writes (the ciphertext) take the immediate path too.

    The TLS protocol writes to ``tls.transport``: the TCP transport itself
    (implicit TLS listener) or Twisted's ``_BypassTLS`` around it (after
    ``startTLS``); either way an instance attribute replaces that one
    ``write``, and only the TLS layer writes there.
    """
    tls.__dict__["_pp_direct"] = True
    lower: Any = tls.transport
    base = getattr(lower, "_connection", lower)
    if base.__class__ in _PLAIN and (lower is not base or not base.TLS):
        setattr(lower, "write", partial(send_ciphertext, base))  # noqa: B010 (an instance attribute, on purpose)


def _write_tls(tls: TLSMemoryBIOProtocol, data: bytes) -> None:
    if "_pp_direct" not in tls.__dict__:
        _direct_ciphertext(tls)
    aggregator = tls.__dict__.get("_aggregator")
    if aggregator is None or getattr(aggregator, "_buffer", True):
        # Not the aggregating transport we know, or it holds earlier bytes: keep the order.
        tls.write(data)
        return
    _tls_write(tls, data)


class Outbox:
    """The writes to one transport, gathered while received data is processed.

    A chunk of pipelined commands becomes one ``sendmsg`` of the untouched
    frames instead of one write per frame; behind TLS, the records of one
    socket read (Dovecot writes small ones) become one TLS write instead of
    one per record.  Gathering nests (a TLS read delivers several chunks);
    outside it every write goes out at once.
    """

    __slots__ = ("_depth", "_parts", "_size", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._parts: list[bytes] = []
        self._size = 0
        self._depth = 0

    def attach(self, transport: Any) -> None:
        """The transport is connected now (an upstream connection is made after its outbox)."""
        self.transport = transport

    def gather(self) -> None:
        self._depth += 1

    def write(self, data: bytes) -> None:
        if self._depth:
            self._parts.append(data)
            self._size += len(data)
            if self._size >= _BATCH:
                self.send_now()  # a bounded batch: TLS encrypts and sends while reading goes on
        else:
            write(self.transport, data)

    def flush(self) -> None:
        """End one :meth:`gather`; the outermost one sends what was gathered."""
        if self._depth:
            self._depth -= 1
        if not self._depth:
            self.send_now()

    def send_now(self) -> None:
        """Send what was gathered so far (before STARTTLS, before closing)."""
        parts = self._parts
        if parts:
            self._parts = []
            self._size = 0
            if len(parts) == 1:
                write(self.transport, parts[0])
            else:
                write_sequence(self.transport, parts)


def gather_tls_reads(tls: Any, outbox: Outbox) -> None:
    """Gather ``outbox`` over each socket read of TLS protocol ``tls`` (all its records)."""
    if not isinstance(tls, TLSMemoryBIOProtocol) or "_pp_gathers" in tls.__dict__:
        return
    tls.__dict__["_pp_gathers"] = True
    inner = tls.dataReceived

    def data_received(data: bytes) -> None:
        outbox.gather()
        try:
            inner(data)
        finally:
            outbox.flush()

    setattr(tls, "dataReceived", data_received)  # noqa: B010 (an instance attribute, on purpose)


def interpose(tcp_transport: Any, layer: Any, app: Any) -> None:
    """Put ``layer`` between Twisted TCP transport ``tcp_transport`` and its protocol ``app``.

    What Twisted's own ``startTLS`` does with its TLS protocol: the TCP
    transport delivers to ``layer``, ``app`` writes to it (``upstream_tls.py``).
    """
    tcp_transport.protocol = layer
    app.transport = layer


def tls_layer(transport: Any) -> Any:
    """The TLS protocol ``startTLS`` put between ``transport`` and its protocol."""
    return transport.protocol


def unregister_producer(transport: Any) -> None:
    """Unregister the peer transport as producer (Twisted's TLS transport raises once closed)."""
    with contextlib.suppress(AttributeError):
        transport.unregisterProducer()


def asyncio_loop_of(reactor: Any) -> Any:
    """The event loop an installed reactor runs on; None when it is not the asyncio reactor."""
    return getattr(reactor, "_asyncioEventloop", None)


def set_alpn_selector(options: Any, select: Callable[[Any, list[bytes]], bytes]) -> None:
    """Make ``select`` the ALPN callback of every connection made with CertificateOptions ``options``."""
    # The context is made once and cached by the options; ours replaces Twisted's callback.
    options.getContext().set_alpn_select_callback(select)


def tls_peer(conn: Any) -> str:
    """``host:port`` of the peer of pyOpenSSL connection ``conn`` (its app data is Twisted's TLS protocol)."""
    peer = conn.get_app_data().transport.getPeer()
    return f"{peer.host}:{peer.port}"
