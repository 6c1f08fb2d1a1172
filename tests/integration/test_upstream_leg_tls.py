"""The sessions' upstream leg (proxy/upstream_tls.py): resumed toward the upstream, a wrong certificate refused.

The real ``serve`` process in front of the fake upstream (another process),
implicit TLS and STARTTLS; the upstream counts its handshakes and the
resumed ones.
"""

from __future__ import annotations

import imaplib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import ApnsTestCerts, make_apns_certs
from tests.support.fake_upstream import FakeUpstreamProcess
from tests.support.proxy import ProxyProcess


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ApnsTestCerts:
    return make_apns_certs(tmp_path_factory.mktemp("upstream-leg-certs"))


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pp-upleg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(workdir: Path, upstream: FakeUpstreamProcess, upstream_cfg: dict[str, Any]) -> ProxyProcess:
    cfg = {"host": "127.0.0.1", "port": upstream.port, "security": upstream.security, **upstream_cfg}
    return ProxyProcess(workdir, {"upstream": cfg}).start()


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_sessions_resume_their_upstream_tls(certs: ApnsTestCerts, workdir: Path, security: str) -> None:
    upstream = FakeUpstreamProcess(security, cert=certs.server_cert, key=certs.server_key)
    proxy = None
    try:
        proxy = _run(workdir, upstream, {"ca_file": str(certs.ca_cert), "server_name": "localhost"})
        before = upstream.stats()
        for i in range(4):
            m = proxy.imap()
            assert m.login(f"user{i}", "pw")[0] == "OK"
            assert m.select("INBOX", readonly=True)[0] == "OK"
            m.logout()
        after = upstream.stats()
        assert after["handshakes"] - before["handshakes"] == 4
        # The first session may do a full handshake (unless the start-up probe left a session); the others resume.
        assert after["resumed"] - before["resumed"] >= 3
    finally:
        if proxy is not None:
            proxy.stop()
        upstream.close()


@pytest.mark.parametrize(
    ("security", "upstream_cfg"),
    [
        ("tls", {"server_name": "not-the-upstream.example"}),  # the certificate names localhost only
        ("starttls", {"server_name": "not-the-upstream.example"}),
        ("tls", {"server_name": "localhost"}),  # no ca_file: the test CA is not among the system's roots
    ],
    ids=["tls-wrong-name", "starttls-wrong-name", "tls-unknown-ca"],
)
def test_a_wrong_upstream_certificate_is_refused(
    certs: ApnsTestCerts, workdir: Path, security: str, upstream_cfg: dict[str, Any]
) -> None:
    upstream = FakeUpstreamProcess(security, cert=certs.server_cert, key=certs.server_key)
    proxy = None
    try:
        if "ca_file" not in upstream_cfg and upstream_cfg["server_name"] != "localhost":
            upstream_cfg = {**upstream_cfg, "ca_file": str(certs.ca_cert)}
        proxy = _run(workdir, upstream, upstream_cfg)
        before = upstream.stats()["logins"]
        with pytest.raises((imaplib.IMAP4.error, imaplib.IMAP4.abort, OSError)):
            m = proxy.imap()
            m.login("user1", "pw")
        assert upstream.stats()["logins"] == before  # no credentials went over the unverified connection
        assert "Traceback" not in proxy.log_text()
    finally:
        if proxy is not None:
            proxy.stop()
        upstream.close()
