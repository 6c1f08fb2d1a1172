"""A loopback TCP relay that a test can cut: packets vanish (blackhole) or connections are refused (down).

Between a proxy node and what it talks to (PostgreSQL, a push service):

- ``pass``: bytes are relayed both ways;
- ``blackhole``: nothing moves any more, in either direction, and nothing is
  refused or reset: the relay stops reading its sockets (what the peers send
  waits in the kernel's buffers, as unacknowledged segments would on a cut
  link) and new connections are accepted by the kernel but see no byte.
  When the link heals (``pass`` again) the data waiting moves on, as it would
  after TCP's retransmissions;
- ``down``: every relayed connection is reset and new ones are closed at
  once (a stopped service on a host that answers).

One thread, one selector; ``close()`` ends it.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Literal

Mode = Literal["pass", "blackhole", "down"]

_CHUNK = 65536


class TcpRelay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._mode: Mode = "pass"
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._pending: dict[socket.socket, bytes] = {}  # bytes read but not yet written to the peer
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._closed = False
        self.connections = 0  # accepted while passing (tests)
        self._thread = threading.Thread(target=self._run, name=f"relay-{self.port}", daemon=True)
        self._thread.start()

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode
        self._wake_w.send(b"x")

    def close(self) -> None:
        self._closed = True
        self._wake_w.send(b"x")
        self._thread.join(10)
        for sock in list(self._pairs):
            with contextlib.suppress(OSError):
                sock.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        last: Mode | None = None
        while not self._closed:
            mode = self._mode
            if mode != last:
                self._apply(mode)
                last = mode
            for key, _ in self._selector.select(timeout=0.5):
                sock = key.fileobj
                if sock is self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                elif sock is self._listener:
                    self._accept(mode)
                elif self._mode == "pass":
                    assert isinstance(sock, socket.socket)
                    self._relay(sock)
        self._selector.close()

    def _apply(self, mode: Mode) -> None:
        """Register what this mode reads: in a blackhole nothing but the wake-up socket."""
        for sock in [self._wake_r, self._listener, *self._pairs]:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        if mode == "down":
            for sock in list(self._pairs):
                self._drop(sock, reset=True)
        if mode != "blackhole":
            self._selector.register(self._listener, selectors.EVENT_READ)
        if mode == "pass":
            for sock in self._pairs:
                self._selector.register(sock, selectors.EVENT_READ)
            for sock in list(self._pending):
                self._flush(sock)

    def _accept(self, mode: Mode) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if mode == "down":
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pairs[client] = upstream
        self._pairs[upstream] = client
        self.connections += 1
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _relay(self, sock: socket.socket) -> None:
        peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        self._pending[peer] = self._pending.get(peer, b"") + data
        self._flush(peer)

    def _flush(self, sock: socket.socket) -> None:
        data = self._pending.pop(sock, b"")
        if not data:
            return
        sock.setblocking(True)  # loopback: the peer reads promptly; keeps the relay simple
        try:
            sock.settimeout(5)
            sock.sendall(data)
        except OSError:
            self._drop(sock)
            return
        finally:
            with contextlib.suppress(OSError):
                sock.setblocking(False)

    def _drop(self, sock: socket.socket, reset: bool = False) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            self._pending.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            if reset:
                _reset(s)
            else:
                with contextlib.suppress(OSError):
                    s.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a host whose service stopped answers."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.close()
