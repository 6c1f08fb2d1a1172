"""Encryption of secrets at rest: AES-256-GCM with a key kept outside the database.

A blob is ``version (1 byte) | nonce (12 bytes) | ciphertext + tag``.  The
associated data binds a blob to the row it belongs to (for example the
account of a stored password), so a blob copied into another row does not
decrypt.  Nonces are random; with 96-bit nonces that is safe far beyond the
number of records this store will ever encrypt under one key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_FORMAT_V1 = 1


class VaultError(Exception):
    """A key file is unusable, or a blob does not decrypt (wrong key, wrong row, tampered)."""


class Vault:
    """Encrypts and decrypts small secrets with one AES-256-GCM key.

    It also computes keyed hashes (HMAC-SHA256 under a key derived from the
    vault key with HKDF), for secrets that must stay searchable and unique
    without being stored in clear (APNs device tokens), and a fingerprint of
    the key, so that nodes sharing a database can tell they hold the same key.
    """

    __slots__ = ("_aead", "_mac_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise VaultError(f"a vault key is {KEY_SIZE} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._mac_key = HKDF(hashes.SHA256(), 32, salt=None, info=b"pushproxy vault keyed hash v1").derive(key)

    def __repr__(self) -> str:  # never show the key
        return "<Vault>"

    @classmethod
    def generate(cls) -> Vault:
        """A vault with a fresh random key that lives only in memory (tests, :memory: stores)."""
        return cls(AESGCM.generate_key(bit_length=KEY_SIZE * 8))

    @classmethod
    def load_or_create(cls, path: Path) -> Vault:
        """Read the base64 key in ``path``; create it (0600, atomically) when it does not exist."""
        try:
            return cls(_read_existing(path))
        except FileNotFoundError:
            return cls(_create_key_file(path))

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return bytes([_FORMAT_V1]) + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def keyed_hash(self, purpose: bytes, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data``; ``purpose`` separates the uses (same data, other purpose: other hash)."""
        return hmac.new(self._mac_key, purpose + b"\0" + data, hashlib.sha256).digest()

    def fingerprint(self) -> str:
        """A short public identifier of the key (it reveals nothing about the key)."""
        return self.keyed_hash(b"fingerprint", b"").hex()[:32]

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < 1 + NONCE_SIZE + TAG_SIZE:
            raise VaultError("encrypted record is truncated")
        if blob[0] != _FORMAT_V1:
            raise VaultError(f"encrypted record has unknown format version {blob[0]}")
        nonce = blob[1 : 1 + NONCE_SIZE]
        try:
            return self._aead.decrypt(nonce, blob[1 + NONCE_SIZE :], aad)
        except InvalidTag:
            raise VaultError(
                "encrypted record does not decrypt: wrong vault key, record moved to another row, or tampered"
            ) from None


def _read_existing(path: Path) -> bytes:
    """The key in an existing file; FileNotFoundError when there is none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise VaultError(f"cannot read vault key file {path}: {exc.strerror}") from exc
    _warn_if_exposed(path)
    return _parse_key(raw, path)


def _parse_key(raw: bytes, path: Path) -> bytes:
    hint = f"expected one line of base64 encoding {KEY_SIZE} random bytes (e.g. `head -c 32 /dev/urandom | base64`)"
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VaultError(f"vault key file {path} is not valid base64: {hint}") from None
    if len(key) != KEY_SIZE:
        raise VaultError(f"vault key file {path} holds {len(key)} bytes, not {KEY_SIZE}: {hint}")
    return key


def _warn_if_exposed(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "vault key file %s has mode %o: group/other can access it; run chmod 600 on it",
            path,
            stat.S_IMODE(mode),
        )


def _create_key_file(path: Path) -> bytes:
    """Write a new random key; if another process created the file first, use its key instead."""
    key = AESGCM.generate_key(bit_length=KEY_SIZE * 8)
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise VaultError(f"cannot create directory {parent} for the vault key: {exc.strerror}") from exc
    tmp = parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        # O_EXCL + mode 0600 at creation: the key is never readable by others, not even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, base64.b64encode(key) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish_no_clobber(tmp, path)
        _fsync_dir(parent)
    except FileExistsError:
        # Lost a race with another process starting at the same time: its key wins,
        # otherwise one of us would encrypt with a key that is then overwritten.
        log.info("vault key file %s appeared while creating it; using the existing key", path)
        return _read_existing(path)
    except OSError as exc:
        raise VaultError(f"cannot create vault key file {path}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.warning("created a new vault key in %s (mode 0600); back it up with the database", path)
    return key


def _publish_no_clobber(tmp: Path, path: Path) -> None:
    """Atomically give ``tmp`` the name ``path`` unless ``path`` exists (then FileExistsError)."""
    try:
        os.link(tmp, path)  # atomic and fails if the target exists
    except FileExistsError:
        raise
    except OSError:
        # File systems without hard links: os.replace is atomic too, but could
        # overwrite a key created in the last instant, so check first.
        if path.exists():
            raise FileExistsError(str(path)) from None
        os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
