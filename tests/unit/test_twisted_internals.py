"""What pushproxy/proxy/transport.py (the Twisted adapter) assumes of Twisted's internals, one test each.

The assumptions are listed in that module's docstring; pyproject.toml pins the
Twisted range they were checked against.  An upgrade that breaks one fails the
test named after it here, not a production path.  The checks run on real
loopback connections in a fresh interpreter (tests/support/twisted_probe.py):
the asyncio reactor can be installed once per process.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import make_apns_certs

ROOT = Path(__file__).resolve().parents[2]

ASSUMPTIONS = [
    "asyncio_reactor_loop",
    "certificate_options_context_is_cached",
    "tcp_transport_classes",
    "tcp_idle_write_state",
    "tcp_socket_and_tls_flag",
    "tcp_reads_buffersize_bytes",
    "filedescriptor_write_queues",
    "fast_write_sends_at_once",
    "starttls_sets_tls_and_protocol",
    "starttls_bypass_has_connection",
    "tls_aggregator_buffer",
    "tls_write_is_unbuffered",
    "tls_app_data_is_the_protocol",
    "tls_peer",
    "certificate_options_context_is_shared",
    "unregister_producer_after_close",
    "implicit_tls_transport",
    "probe_completed",
]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    certs = make_apns_certs(tmp_path_factory.mktemp("certs"))
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.twisted_probe", str(certs.server_cert), str(certs.server_key)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("assumption", ASSUMPTIONS)
def test_twisted_assumption(probe: dict[str, Any], assumption: str) -> None:
    assert assumption in probe, f"not checked (the probe stopped before it): {probe.get('probe_completed')}"
    passed, detail = probe[assumption]
    assert passed, detail or "the check was false"


def test_every_check_of_the_probe_is_named_here(probe: dict[str, Any]) -> None:
    assert sorted(probe) == sorted(ASSUMPTIONS)


# --- proxy/listener.py's GuardedPort (a tcp.Port subclass): what it assumes of the accept loop ---------


def test_port_accepts_through_its_socket_attribute() -> None:
    """GuardedPort replaces ``Port.socket`` with its accept guard after startListening."""
    from twisted.internet import tcp

    assert "self.socket" in inspect.getsource(tcp.Port.doRead)
    assert "listener.accept()" in inspect.getsource(tcp._accept)


def test_eagain_from_accept_ends_the_accept_loop_quietly() -> None:
    from twisted.internet import tcp

    source = inspect.getsource(tcp._accept)
    assert "EAGAIN" in source and "return" in source.split("EAGAIN", 1)[1].split("elif", 1)[0]


def test_port_constructor_and_listen_ssl_shape() -> None:
    from twisted.internet import posixbase, tcp

    assert list(inspect.signature(tcp.Port.__init__).parameters)[1:] == [
        "port",
        "factory",
        "backlog",
        "interface",
        "reactor",
    ]
    assert "TLSMemoryBIOFactory(contextFactory, False, factory)" in inspect.getsource(
        posixbase.PosixReactorBase.listenSSL
    )


# --- proxy/transport.py's interpose (the upstream leg's TLS layer, proxy/upstream_tls.py) ---------------


def test_tcp_connection_delivers_to_its_protocol_attribute() -> None:
    """``interpose`` swaps a connected transport's ``protocol``: reads and the loss must look it up each time."""
    from twisted.internet import tcp

    assert "self.protocol.dataReceived" in inspect.getsource(tcp.Connection._dataReceived)
    assert "self.protocol" in inspect.getsource(tcp.Connection.connectionLost)
