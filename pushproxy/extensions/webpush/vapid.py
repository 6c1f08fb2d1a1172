"""VAPID (RFC 8292) keys: the keyring and ES256 JWT signing.

The current key is a PEM file at the configured path (``vapid_key_path(config)``),
generated on first start.  ``rotate()`` makes a new current key there and keeps
the old one as ``<stem>-<key_id>.pem`` next to it: subscriptions acknowledged
under the old key (``WebPushSubscription.vapid_key_id``) are still signed with it
until they are re-acknowledged.  Key metadata (never the key) is in the Store.

Signing is py_vapid's (``Vapid02.sign``, RFC 8292 ``vapid t=...,k=...``),
with claims built afresh for every request (py_vapid copies them; pywebpush's
own helper would mutate a shared dict).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yarl
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from pushproxy.config import ConfigError
from pushproxy.extensions.webpush.store import VapidKey

log = logging.getLogger(__name__)

DEFAULT_EXP_SECONDS = 12 * 3600  # RFC 8292: at most 24 h; push services reject more
_ARCHIVE_RE = re.compile(r"^(?P<stem>.+)-(?P<key_id>[0-9a-f]{16})$")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def endpoint_origin(endpoint: str | yarl.URL) -> str:
    """``scheme://host[:port]`` of a push endpoint, the JWT ``aud`` (default port omitted)."""
    url = endpoint if isinstance(endpoint, yarl.URL) else yarl.URL(endpoint)
    return str(url.origin())


@dataclass(frozen=True, slots=True, eq=False)
class VapidKeyPair:
    private_key: ec.EllipticCurvePrivateKey
    key_id: str  # first 16 hex chars of sha256(raw public point)
    public_key_raw: bytes  # 65-byte uncompressed P-256 point
    public_key_b64: str  # base64url without padding: 87 chars, starts with "B"
    path: Path
    signer: Vapid02 = field(repr=False)  # py_vapid, holding the same private key

    @classmethod
    def from_private_key(cls, private_key: ec.EllipticCurvePrivateKey, path: Path) -> VapidKeyPair:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError(f"{path}: a VAPID key must be a P-256 key")
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return cls(private_key, key_id_of(raw), raw, b64url(raw), path, _signer(private_key))

    def moved_to(self, path: Path) -> VapidKeyPair:
        """The same key, kept at another path (an archived key after a rotation)."""
        return VapidKeyPair(self.private_key, self.key_id, self.public_key_raw, self.public_key_b64, path, self.signer)

    def sign_header(self, endpoint: str | yarl.URL, subject: str, exp_seconds: int = DEFAULT_EXP_SECONDS) -> str:
        """The ``Authorization`` value for one request: ``vapid t=<jwt>,k=<key>``.

        Claims are built afresh on every call (``exp`` moves with the clock).
        Raises ``py_vapid.VapidException`` for claims py_vapid refuses (a
        ``sub`` that is not a mailto:/https: URI, an IPv6-literal ``aud``).
        """
        claims: dict[str, object] = {
            "aud": endpoint_origin(endpoint),
            "exp": int(time.time()) + int(exp_seconds),
            "sub": subject,
        }
        return str(self.signer.sign(claims)["Authorization"])


def _signer(private_key: ec.EllipticCurvePrivateKey) -> Vapid02:
    # "no-strict": py_vapid's own check of ``sub`` refuses https: URIs with a path,
    # which RFC 8292 allows; webpush.subject is validated by the config instead.
    return Vapid02(private_key=private_key, conf={"no-strict": True})


def key_id_of(public_point: bytes) -> str:
    return hashlib.sha256(public_point).hexdigest()[:16]


def archive_path(current_path: Path, key_id: str) -> Path:
    return current_path.with_name(f"{current_path.stem}-{key_id}{current_path.suffix or '.pem'}")


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically write a secret file with mode 0600 (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)  # mkstemp already uses 0600; say it explicitly
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_key_file(path: Path) -> VapidKeyPair:
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: a VAPID key must be an EC P-256 key")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("VAPID key file %s has mode %o; it should be 0600", path, mode)
    return VapidKeyPair.from_private_key(key, path)


def generate_key_file(path: Path) -> VapidKeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    write_private_file(path, _private_pem(key))
    return VapidKeyPair.from_private_key(key, path)


def _load_or_generate(path: Path) -> tuple[VapidKeyPair, bool]:
    if path.exists():
        return load_key_file(path), False
    return generate_key_file(path), True


def _load_old_keys(path: Path, current_id: str, known: dict[str, VapidKey]) -> dict[str, VapidKeyPair]:
    """Older keys: from the store's metadata and, should that be lost, from archive files."""
    candidates: dict[str, Path] = {}
    for meta in known.values():
        if meta.key_id != current_id:
            candidates[meta.key_id] = Path(meta.private_key_path)
    for file in path.parent.glob(f"{path.stem}-*{path.suffix}"):
        m = _ARCHIVE_RE.match(file.stem)
        if m and m.group("stem") == path.stem:
            candidates.setdefault(m.group("key_id"), file)
    keys: dict[str, VapidKeyPair] = {}
    for key_id, candidate in candidates.items():
        if key_id == current_id:
            continue
        file = candidate if candidate.exists() else archive_path(path, key_id)
        try:
            pair = load_key_file(file)
        except (OSError, ValueError) as exc:
            log.warning("VAPID key %s is not available (%s): its subscriptions need a new ACK", key_id, exc)
            continue
        if pair.key_id != key_id:
            log.warning("VAPID key file %s holds key %s, not %s; ignored", file, pair.key_id, key_id)
            continue
        keys[key_id] = pair
    return keys


class VapidKeyStore(Protocol):
    """Where the keyring keeps key metadata: ``store.queries(WebPushQueries)``."""

    @property
    def shared_by_nodes(self) -> bool: ...

    async def vapid_keys(self) -> list[VapidKey]: ...

    async def add_vapid_key(self, key: VapidKey, make_current: bool = True) -> None: ...


class VapidKeyring:
    """The current VAPID key plus older keys still in use by some subscriptions."""

    def __init__(self, path: Path, store: VapidKeyStore, current: VapidKeyPair, keys: dict[str, VapidKeyPair]) -> None:
        self._path = path
        self._store = store
        self._current = current
        self._keys = dict(keys)
        self._keys[current.key_id] = current

    @classmethod
    async def load(cls, path: Path, store: VapidKeyStore) -> VapidKeyring:
        """Load (or on first start generate) the current key and every older key we still have."""
        path = path.expanduser()  # noqa: ASYNC240 - string manipulation, no IO
        # File IO (and fsync on first start) off the loop.
        current, generated = await asyncio.to_thread(_load_or_generate, path)
        if generated:
            log.info("generated a new VAPID key %s at %s", current.key_id, path)
        known = {k.key_id: k for k in await store.vapid_keys()}
        if store.shared_by_nodes:
            _refuse_another_nodes_key(path, current, known)
        keys = await asyncio.to_thread(_load_old_keys, path, current.key_id, known)
        for key_id, pair in keys.items():
            if key_id not in known:
                await store.add_vapid_key(_meta(pair, current=False), make_current=False)
        meta = known.get(current.key_id)
        if meta is None or not meta.current or meta.private_key_path != str(path):
            created = meta.created if meta is not None else None
            await store.add_vapid_key(_meta(current, current=True, created=created), make_current=True)
        return cls(path, store, current, keys)

    @property
    def current(self) -> VapidKeyPair:
        return self._current

    @property
    def path(self) -> Path:
        return self._path

    def get(self, key_id: str | None) -> VapidKeyPair | None:
        return self._keys.get(key_id) if key_id else None

    def key_ids(self) -> list[str]:
        return list(self._keys)

    def for_subscription(self, key_id: str | None) -> VapidKeyPair:
        """The key that signs for a subscription: its own, else the current one."""
        return self._keys.get(key_id or "", self._current)

    async def rotate(self) -> VapidKeyPair:
        """Make a new current key; the old one is archived and keeps signing for its subscriptions."""
        old = self._current
        old_path = archive_path(self._path, old.key_id)
        archived, new = await asyncio.to_thread(self._rotate_files, old, old_path)
        known = {k.key_id: k for k in await self._store.vapid_keys()}
        old_meta = known.get(old.key_id)
        await self._store.add_vapid_key(
            _meta(archived, current=False, created=old_meta.created if old_meta else None), make_current=False
        )
        await self._store.add_vapid_key(_meta(new, current=True), make_current=True)
        self._keys[old.key_id] = archived
        self._keys[new.key_id] = new
        self._current = new
        log.info("rotated VAPID key: %s is current, %s kept at %s", new.key_id, old.key_id, old_path)
        return new

    def _rotate_files(self, old: VapidKeyPair, old_path: Path) -> tuple[VapidKeyPair, VapidKeyPair]:
        # Archive first: a crash between the two writes leaves both keys on disk.
        write_private_file(old_path, _private_pem(old.private_key))
        return old.moved_to(old_path), generate_key_file(self._path)


def _refuse_another_nodes_key(path: Path, mine: VapidKeyPair, known: dict[str, VapidKey]) -> None:
    """Several nodes on one database sign with one VAPID key: the one recorded as current.

    A node with another key file would make its own key current and sign
    with a key the push services never saw for the others' subscriptions;
    on one node (SQLite) a replaced key file simply becomes current.
    """
    cluster_key = next((k for k in known.values() if k.current), None)
    if cluster_key is None or cluster_key.key_id == mine.key_id:
        return
    raise ConfigError(
        f"the VAPID key in {path} (key {mine.key_id}) is not the cluster's current VAPID key "
        f"({cluster_key.key_id}): every node sharing a database must use the same "
        "webpush.vapid_private_key_file (copy it from a running node; after `pushproxy vapid rotate` "
        "on one node, copy its new key file to the others)"
    )


def _meta(pair: VapidKeyPair, current: bool, created: float | None = None) -> VapidKey:
    return VapidKey(
        key_id=pair.key_id,
        public_key=pair.public_key_b64,
        private_key_path=str(pair.path),
        created=time.time() if created is None else created,
        current=current,
    )
