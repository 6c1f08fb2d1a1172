"""A TCP tap between the proxy and its upstream: forwards both ways and records what each side sent.

Lets a test compare what the client got with what upstream said on the very
same connection, instead of with a separate run (upstreams need not answer
pipelined commands in the same order twice).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class TappedConnection:
    to_upstream: bytearray = field(default_factory=bytearray)  # what the proxy sent
    from_upstream: bytearray = field(default_factory=bytearray)  # what upstream answered
    done: threading.Event = field(default_factory=threading.Event)  # both directions closed


class Tap:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self._upstream = (host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self.connections: list[TappedConnection] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return  # closed
            up = socket.create_connection(self._upstream, timeout=10)
            conn = TappedConnection()
            with self._lock:
                self.connections.append(conn)
            pumps = [
                threading.Thread(target=_pump, args=(down, up, conn.to_upstream), daemon=True),
                threading.Thread(target=_pump, args=(up, down, conn.from_upstream), daemon=True),
            ]
            for pump in pumps:
                pump.start()
            threading.Thread(target=_join, args=(pumps, conn.done, down, up), daemon=True).start()

    def connection_with(self, needle: bytes, timeout: float = 10.0) -> TappedConnection:
        """The first connection on which the proxy sent ``needle``, once both its directions ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [c for c in self.connections if needle in c.to_upstream]
            if found:
                assert found[0].done.wait(max(0.0, deadline - time.monotonic())), "tapped connection still open"
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no tapped connection sent {needle!r}")

    def close(self) -> None:
        self._listener.close()


def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
    try:
        while chunk := src.recv(65536):
            record += chunk
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _join(pumps: list[threading.Thread], done: threading.Event, *socks: socket.socket) -> None:
    for pump in pumps:
        pump.join()
    for s in socks:
        s.close()
    done.set()
