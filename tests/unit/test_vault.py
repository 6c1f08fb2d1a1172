"""The vault: AES-256-GCM blobs bound to their row, and the key file."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from pushproxy.store.vault import NONCE_SIZE, Vault, VaultError


def test_round_trip() -> None:
    vault = Vault.generate()
    blob = vault.encrypt(b"hunter2", b"credential\0alice")
    assert b"hunter2" not in blob
    assert vault.decrypt(blob, b"credential\0alice") == b"hunter2"


def test_empty_plaintext_round_trip() -> None:
    vault = Vault.generate()
    assert vault.decrypt(vault.encrypt(b"", b"aad"), b"aad") == b""


def test_blob_format_and_fresh_nonce() -> None:
    vault = Vault.generate()
    a = vault.encrypt(b"same", b"aad")
    b = vault.encrypt(b"same", b"aad")
    assert a[0] == 1
    assert len(a) == 1 + NONCE_SIZE + len(b"same") + 16
    assert a[1 : 1 + NONCE_SIZE] != b[1 : 1 + NONCE_SIZE]
    assert a != b


def test_wrong_key_fails() -> None:
    blob = Vault.generate().encrypt(b"secret", b"aad")
    with pytest.raises(VaultError):
        Vault.generate().decrypt(blob, b"aad")


def test_wrong_aad_fails() -> None:
    vault = Vault.generate()
    blob = vault.encrypt(b"secret", b"credential\0alice")
    with pytest.raises(VaultError):
        vault.decrypt(blob, b"credential\0bob")


@pytest.mark.parametrize("position", [0, 1, NONCE_SIZE + 1, -1])
def test_tampering_fails(position: int) -> None:
    vault = Vault.generate()
    blob = bytearray(vault.encrypt(b"secret", b"aad"))
    blob[position] ^= 0x01
    with pytest.raises(VaultError):
        vault.decrypt(bytes(blob), b"aad")


def test_truncated_blob_fails() -> None:
    vault = Vault.generate()
    blob = vault.encrypt(b"secret", b"aad")
    for cut in (0, 1, 1 + NONCE_SIZE, len(blob) - 1):
        with pytest.raises(VaultError):
            vault.decrypt(blob[:cut], b"aad")


def test_key_must_be_32_bytes() -> None:
    with pytest.raises(VaultError):
        Vault(b"x" * 16)


def test_repr_hides_key() -> None:
    key = os.urandom(32)
    assert key.hex() not in repr(Vault(key))
    assert base64.b64encode(key).decode() not in repr(Vault(key))


def test_key_file_created_0600_in_new_0700_dir(tmp_path: Path) -> None:
    path = tmp_path / "state" / "vault.key"
    vault = Vault.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    content = path.read_bytes()
    assert content.endswith(b"\n") and content.count(b"\n") == 1
    assert len(base64.b64decode(content.strip(), validate=True)) == 32
    # no temporary files left behind
    assert [p.name for p in path.parent.iterdir()] == ["vault.key"]
    # the same key is loaded again
    blob = vault.encrypt(b"x", b"aad")
    assert Vault.load_or_create(path).decrypt(blob, b"aad") == b"x"


def test_key_file_mode_is_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "vault.key"
        Vault.load_or_create(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_existing_key_file_is_used(tmp_path: Path) -> None:
    key = os.urandom(32)
    path = tmp_path / "vault.key"
    path.write_bytes(base64.b64encode(key) + b"\n")
    path.chmod(0o600)
    blob = Vault(key).encrypt(b"x", b"aad")
    assert Vault.load_or_create(path).decrypt(blob, b"aad") == b"x"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not base64 at all!\n",
        base64.b64encode(os.urandom(16)) + b"\n",  # valid base64, wrong length
        base64.b64encode(os.urandom(33)) + b"\n",
        base64.b64encode(os.urandom(32))[:-3] + b"\n",  # damaged
    ],
)
def test_bad_key_file_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "vault.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(VaultError, match=str(path)):
        Vault.load_or_create(path)
    assert path.read_bytes() == content  # never overwritten


def test_world_readable_key_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "vault.key"
    path.write_bytes(base64.b64encode(os.urandom(32)))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="pushproxy.store.vault"):
        Vault.load_or_create(path)
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


def test_private_key_file_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "vault.key"
    Vault.load_or_create(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pushproxy.store.vault"):
        Vault.load_or_create(path)
    assert not caplog.records


def test_unreadable_key_path_is_vault_error(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    path.mkdir()  # a directory where the key file should be
    with pytest.raises(VaultError):
        Vault.load_or_create(path)
