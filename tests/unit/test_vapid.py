"""VAPID keyring: generation (0600), key ids, ES256 JWT headers, rotation keeping old keys."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import cast

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pushproxy.extensions.webpush import vapid as vapid_mod
from pushproxy.extensions.webpush.store import VapidKey
from pushproxy.extensions.webpush.vapid import VapidKeyPair, VapidKeyring, endpoint_origin
from pushproxy.store.base import Store


class FakeVapidStore:
    """Just what of the Store the keyring uses (upsert by key_id, one current)."""

    def __init__(self) -> None:
        self.keys: dict[str, VapidKey] = {}

    shared_by_nodes = False  # one node: a replaced key file becomes current

    async def vapid_keys(self) -> list[VapidKey]:
        return list(self.keys.values())

    async def add_vapid_key(self, key: VapidKey, make_current: bool = True) -> None:
        if make_current:
            for other in self.keys.values():
                other.current = False
        self.keys[key.key_id] = VapidKey(key.key_id, key.public_key, key.private_key_path, key.created, make_current)


def as_store(fake: FakeVapidStore) -> Store:
    return cast(Store, fake)


def b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def parse_header(value: str) -> tuple[dict, dict, bytes, str, str]:
    assert value.startswith("vapid t=")
    t_part, k_part = value[len("vapid ") :].split(",")
    token = t_part.removeprefix("t=")
    key = k_part.removeprefix("k=")
    head, claims, sig = token.split(".")
    return json.loads(b64d(head)), json.loads(b64d(claims)), b64d(sig), f"{head}.{claims}", key


def verify(value: str) -> dict:
    header, claims, sig, signing_input, key = parse_header(value)
    assert header == {"typ": "JWT", "alg": "ES256"}
    assert len(sig) == 64
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(key))
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    pub.verify(encode_dss_signature(r, s), signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    return claims


async def test_first_start_generates_a_0600_key_and_records_it(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state" / "vapid.pem"
    store = FakeVapidStore()
    with caplog.at_level(logging.INFO, logger="pushproxy.extensions.webpush.vapid"):
        ring = await VapidKeyring.load(path, as_store(store))
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in caplog.text
    key = ring.current
    assert len(key.public_key_b64) == 87 and key.public_key_b64.startswith("B")
    assert b64d(key.public_key_b64) == key.public_key_raw
    assert key.key_id == hashlib.sha256(key.public_key_raw).hexdigest()[:16]
    assert list(store.keys) == [key.key_id]
    meta = store.keys[key.key_id]
    assert meta.current and meta.private_key_path == str(path) and meta.public_key == key.public_key_b64
    assert b"PRIVATE KEY" in path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["vapid.pem"]  # no temp files left behind

    again = await VapidKeyring.load(path, as_store(store))
    assert again.current.key_id == key.key_id
    assert len(store.keys) == 1


async def test_existing_key_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "vapid.pem"
    priv = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        priv.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    os.chmod(path, 0o600)
    ring = await VapidKeyring.load(path, as_store(FakeVapidStore()))
    raw = priv.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert ring.current.public_key_raw == raw


async def test_wrong_key_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vapid.pem"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValueError, match="EC"):
        await VapidKeyring.load(path, as_store(FakeVapidStore()))
    path.write_text("garbage")
    with pytest.raises(ValueError, match="PEM"):
        await VapidKeyring.load(path, as_store(FakeVapidStore()))


@pytest.mark.parametrize(
    "endpoint, aud",
    [
        ("https://fcm.googleapis.com/fcm/send/abc:def", "https://fcm.googleapis.com"),
        ("https://Push.Example.COM:443/x?y=1", "https://push.example.com"),
        ("https://push.example.com:8443/x", "https://push.example.com:8443"),
        ("http://127.0.0.1:5000/push/1", "http://127.0.0.1:5000"),
        ("https://[2001:db8::1]:9000/p", "https://[2001:db8::1]:9000"),
    ],
)
def test_endpoint_origin(endpoint: str, aud: str) -> None:
    assert endpoint_origin(endpoint) == aud


async def test_sign_header_makes_fresh_valid_claims(tmp_path: Path, monkeypatch) -> None:
    ring = await VapidKeyring.load(tmp_path / "v.pem", as_store(FakeVapidStore()))
    key = ring.current
    monkeypatch.setattr(vapid_mod.time, "time", lambda: 1_700_000_000.0)
    value = key.sign_header("https://push.example.net:8443/wpush/v2/xyz", "mailto:admin@example.org")
    claims = verify(value)
    assert claims == {
        "aud": "https://push.example.net:8443",
        "exp": 1_700_000_000 + 12 * 3600,
        "sub": "mailto:admin@example.org",
    }
    assert value.endswith(",k=" + key.public_key_b64)
    # A later call gets a later exp: claims are never reused.
    monkeypatch.setattr(vapid_mod.time, "time", lambda: 1_700_000_100.0)
    later = verify(key.sign_header("https://push.example.net:8443/wpush/v2/xyz", "mailto:admin@example.org"))
    assert later["exp"] == 1_700_000_100 + 12 * 3600
    short = verify(key.sign_header("https://a.example/", "https://example.org/contact", exp_seconds=60))
    assert short["exp"] == 1_700_000_100 + 60 and short["sub"] == "https://example.org/contact"


async def test_rotation_keeps_old_key_signing(tmp_path: Path) -> None:
    path = tmp_path / "vapid.pem"
    store = FakeVapidStore()
    ring = await VapidKeyring.load(path, as_store(store))
    old = ring.current
    new = await ring.rotate()

    assert new.key_id != old.key_id
    assert ring.current is new and new.path == path
    archived = tmp_path / f"vapid-{old.key_id}.pem"
    assert archived.exists() and stat.S_IMODE(archived.stat().st_mode) == 0o600
    kept = ring.get(old.key_id)
    assert kept is not None and kept.path == archived and kept.public_key_b64 == old.public_key_b64
    assert ring.get("0123456789abcdef") is None
    assert ring.for_subscription("0123456789abcdef") is new
    assert ring.for_subscription(old.key_id) is kept
    # The old key still signs (a subscription acknowledged under it keeps working).
    _, _, _, _, k = parse_header(kept.sign_header("https://p.example/", "mailto:a@b"))
    assert k == old.public_key_b64
    verify(kept.sign_header("https://p.example/", "mailto:a@b"))

    assert store.keys[new.key_id].current and store.keys[new.key_id].private_key_path == str(path)
    assert not store.keys[old.key_id].current
    assert store.keys[old.key_id].private_key_path == str(archived)

    # After a restart both keys are back.
    reloaded = await VapidKeyring.load(path, as_store(store))
    assert reloaded.current.key_id == new.key_id
    assert set(reloaded.key_ids()) == {old.key_id, new.key_id}

    # Even if the store lost the metadata, archive files are found.
    fresh_store = FakeVapidStore()
    recovered = await VapidKeyring.load(path, as_store(fresh_store))
    assert set(recovered.key_ids()) == {old.key_id, new.key_id}
    assert fresh_store.keys[new.key_id].current and not fresh_store.keys[old.key_id].current

    # A second rotation keeps both older keys.
    newest = await ring.rotate()
    assert set(ring.key_ids()) == {old.key_id, new.key_id, newest.key_id}


async def test_missing_old_key_file_is_skipped(tmp_path: Path, caplog) -> None:
    path = tmp_path / "vapid.pem"
    store = FakeVapidStore()
    ring = await VapidKeyring.load(path, as_store(store))
    old = ring.current
    await ring.rotate()
    (tmp_path / f"vapid-{old.key_id}.pem").unlink()
    with caplog.at_level(logging.WARNING):
        reloaded = await VapidKeyring.load(path, as_store(store))
    assert reloaded.get(old.key_id) is None
    assert old.key_id in caplog.text


def test_keypair_refuses_other_curves(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        VapidKeyPair.from_private_key(ec.generate_private_key(ec.SECP384R1()), tmp_path / "x.pem")
