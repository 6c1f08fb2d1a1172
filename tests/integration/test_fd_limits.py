"""File descriptors: the proxy raises its soft limit, warns when the configuration needs more,
and on EMFILE answers ``* BYE [UNAVAILABLE]`` and pauses accepting instead of resetting clients.

The real ``pushproxy serve`` runs under a low ``RLIMIT_NOFILE`` (set for the
child only) in front of a fake upstream in another process.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushproxy.proxy.listener import BYE_UNAVAILABLE as BYE
from tests.support.fake_upstream import FakeUpstreamProcess
from tests.support.proxy import ProxyProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def upstream() -> Iterator[FakeUpstreamProcess]:
    up = FakeUpstreamProcess("none")
    yield up
    up.close()


_MADE: dict[Path, list[ProxyProcess]] = {}


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pp-fd-"))
    yield path
    for proxy in _MADE.pop(path, []):
        proxy.kill()
    shutil.rmtree(path, ignore_errors=True)


def _plain_proxy(workdir: Path, upstream: FakeUpstreamProcess, nofile: tuple[int, int], **session: int) -> ProxyProcess:
    config = {
        "upstream": {"host": "127.0.0.1", "port": upstream.port, "security": "none"},
        "session": {"allow_plaintext_auth": True, **session},
        "log": {"level": "info"},
    }
    proxy = ProxyProcess(workdir, config, nofile=nofile)
    _MADE.setdefault(workdir, []).append(proxy)  # killed at teardown, whatever the test did
    return proxy


def test_the_soft_limit_is_raised_to_the_hard_limit(workdir: Path, upstream: FakeUpstreamProcess) -> None:
    proxy = _plain_proxy(workdir, upstream, (256, 4096), max_connections=1000).start()
    proxy.wait_log("file descriptors: at most 4096 (raised from 256)")
    # 1,000 sessions x 2 + the fixed part fit into 4,096: no warning.
    assert "file descriptor limit" not in proxy.log_text()
    assert proxy.stop() == 0


def test_a_limit_below_what_the_config_needs_is_one_warning(workdir: Path, upstream: FakeUpstreamProcess) -> None:
    proxy = _plain_proxy(workdir, upstream, (512, 512)).start()  # max_connections 5,000 by default
    proxy.wait_log("file descriptor limit 512 is below the 10128 this configuration may need")
    warnings = [line for line in proxy.log_text().splitlines() if "file descriptor limit" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], warnings
    assert "at least 10128" in warnings[0]
    assert proxy.stop() == 0


def _first_line(sock: socket.socket) -> bytes:
    """The proxy's first line; b"" when the connection was closed, b"reset", or b"?" on a timeout."""
    try:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data
    except TimeoutError:
        return b"?"
    except ConnectionResetError:
        return b"reset"


def test_out_of_descriptors_the_listener_says_bye_and_pauses(workdir: Path, upstream: FakeUpstreamProcess) -> None:
    limit = 160
    proxy = _plain_proxy(workdir, upstream, (limit, limit), max_connections=1000, max_connections_per_ip=1000).start()
    held: list[socket.socket] = []
    answers: dict[bytes, int] = {}
    try:
        # Each session holds one descriptor (two once its upstream is open): far more clients
        # than descriptors.  Each reads what the proxy says first.
        for _ in range(limit + 40):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=1.5)
            held.append(sock)
            line = _first_line(sock)
            kind = b"listener BYE" if line == BYE else line[:4]
            answers[kind] = answers.get(kind, 0) + 1
            if answers.get(b"listener BYE", 0) >= 2:
                break
        print(f"\nfirst lines: {answers}")
        assert answers.get(b"* OK", 0) >= 50, answers
        assert answers.get(b"listener BYE", 0) >= 1, answers
        assert answers.get(b"reset", 0) == 0, answers  # never a bare reset
        proxy.wait_log("out of file descriptors (EMFILE) accepting on port")
    finally:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
    # The sessions ended: the listener accepts again (after its pause) and greets.

    def greeted() -> bool:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=3) as sock:
            return _first_line(sock).startswith(b"* OK")

    wait_for(greeted, 15, lambda: proxy.log_tail())
    # (The admin listener had no descriptor either: the metric is read now.)
    refused = proxy.metric("pushproxy_connections_refused_total", {"reason": "fd_limit"})
    # One refusal per pause (a second each), not one per reactor pass: counted, not timed.
    assert 1 <= refused <= 2 + len(held) - answers[b"* OK"], refused
    warnings = [line for line in proxy.log_text().splitlines() if "out of file descriptors" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], warnings  # one line per episode
    assert proxy.stop() == 0
    assert "Traceback" not in proxy.log_text()
