"""XAPPLEPUSHSERVICE test set-up shared by the integration tests: the APNs stand-in and its
certificates (pytest fixtures ``certs``, ``apns``), the proxy's ``apns`` config section, a raw
IMAP client, registration, and the device tokens as stored.

Test modules re-export the fixtures by assignment (``certs, apns = apns_env.certs, apns_env.apns``).
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushproxy.extensions.xapplepush.store import token_aad
from pushproxy.store import Vault
from tests.support.apns_standin import ApnsStandin
from tests.support.certs import ApnsTestCerts, make_apns_certs

ACCOUNT_ID = "0715A26B-CA09-4730-A419-793000CA982E"
TOKEN_A = "2918390218931890821908309283098109381029309829018310983092892829"
TOKEN_B = "aaaa390218931890821908309283098109381029309829018310983092890000"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ApnsTestCerts:
    return make_apns_certs(tmp_path_factory.mktemp("apns-certs"))


@pytest.fixture
def apns(certs: ApnsTestCerts) -> Iterator[ApnsStandin]:
    standin = ApnsStandin(certs.server_cert, certs.server_key, client_ca=certs.ca_cert)
    standin.start()
    yield standin
    standin.stop()


def apns_config(certs: ApnsTestCerts, standin: ApnsStandin, **extra: object) -> dict[str, object]:
    return {
        "enabled": True,
        "cert_file": str(certs.client_cert),
        "key_file": str(certs.client_key),
        "endpoint": standin.endpoint,
        "ca_file": str(certs.ca_cert),
        "debounce": 0.3,
        **extra,
    }


class RawClient:
    """A minimal IMAP client that shows exactly what the proxy sends."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.greeting = self.read_until(b"\r\n")

    def read_until(self, needle: bytes) -> bytes:
        while needle not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed; have {self.buf!r}")
            self.buf += chunk
        end = self.buf.index(needle) + len(needle)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def command(self, tag: bytes, text: bytes) -> bytes:
        self.sock.sendall(tag + b" " + text + b"\r\n")
        return self._tagged(tag)

    def _tagged(self, tag: bytes) -> bytes:
        out = b""
        while True:
            line = self.read_until(b"\r\n")
            out += line
            if line.startswith(tag + b" "):
                return out

    def close(self) -> None:
        self.sock.close()


def register(client: RawClient, tag: bytes, token: str = TOKEN_A, mailboxes: bytes = b'("INBOX")') -> bytes:
    cmd = (
        b'XAPPLEPUSHSERVICE "aps-version" "2" "aps-account-id" "' + ACCOUNT_ID.encode() + b'" '
        b'"aps-device-token" "' + token.encode() + b'" "aps-subtopic" "com.apple.mobilemail" '
        b'"mailboxes" ' + mailboxes
    )
    return client.command(tag, cmd)


def devices_in_store(db: Path) -> list[tuple[str, str, str]]:
    """(account, aps_account_id, device token) as stored; tokens are encrypted at rest with the vault key."""
    vault = Vault.load_or_create(db.parent / "vault.key")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT account, aps_account_id, device_token FROM apns_devices").fetchall()
    out = []
    for account, aps, blob in rows:
        assert isinstance(blob, bytes)  # never the token in clear
        out.append((account, aps, vault.decrypt(blob, token_aad(account, aps)).decode()))
    return out
