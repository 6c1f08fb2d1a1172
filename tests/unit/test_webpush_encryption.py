"""RFC 8291 aes128gcm encryption: the RFC's own example, and http_ece decrypting our output."""

from __future__ import annotations

import base64
import os

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from pushproxy.push.payload import MAX_PLAINTEXT
from pushproxy.push.webpush import InvalidSubscriptionKeys, decode_subscription_keys, encrypt_payload


def b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


# RFC 8291 Appendix A, every value verbatim from the RFC.
RFC_PLAINTEXT = b"When I grow up, I want to be a watermelon"
RFC_AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
RFC_UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
RFC_UA_PUBLIC = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
RFC_AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
RFC_SALT = "DGv6ra1nlYgDCS1FRnbzlw"
RFC_BODY = (
    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl"
    "7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
)


def test_rfc8291_appendix_a_example() -> None:
    as_private = ec.derive_private_key(int.from_bytes(b64d(RFC_AS_PRIVATE), "big"), ec.SECP256R1())
    ua_key, ua_raw, auth = decode_subscription_keys(RFC_UA_PUBLIC, RFC_AUTH)
    body = encrypt_payload(RFC_PLAINTEXT, ua_key, ua_raw, auth, salt=b64d(RFC_SALT), as_private=as_private)
    assert b64e(body) == RFC_BODY


def test_rfc_body_decrypts_with_the_ua_key() -> None:
    ua_private = ec.derive_private_key(int.from_bytes(b64d(RFC_UA_PRIVATE), "big"), ec.SECP256R1())
    plain = http_ece.decrypt(b64d(RFC_BODY), version="aes128gcm", private_key=ua_private, auth_secret=b64d(RFC_AUTH))
    assert plain == RFC_PLAINTEXT


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=MAX_PLAINTEXT))
def test_http_ece_decrypts_our_output(plaintext: bytes) -> None:
    ua_private = ec.generate_private_key(ec.SECP256R1())
    ua_raw = ua_private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    auth = os.urandom(16)
    ua_key, raw, secret = decode_subscription_keys(b64e(ua_raw), b64e(auth))
    body = encrypt_payload(plaintext, ua_key, raw, secret)
    assert len(body) <= 4096
    assert http_ece.decrypt(body, version="aes128gcm", private_key=ua_private, auth_secret=auth) == plaintext


def test_each_message_gets_a_new_sender_key_and_salt() -> None:
    ua_key, raw, secret = decode_subscription_keys(RFC_UA_PUBLIC, RFC_AUTH)
    a = encrypt_payload(b"same", ua_key, raw, secret)
    b = encrypt_payload(b"same", ua_key, raw, secret)
    assert a[:16] != b[:16]  # salt
    assert a[21:86] != b[21:86]  # sender public key


def test_limits_and_bad_keys() -> None:
    ua_key, raw, secret = decode_subscription_keys(RFC_UA_PUBLIC, RFC_AUTH)
    with pytest.raises(ValueError):
        encrypt_payload(b"x" * (MAX_PLAINTEXT + 1), ua_key, raw, secret)
    with pytest.raises(InvalidSubscriptionKeys):
        decode_subscription_keys(RFC_UA_PUBLIC, b64e(b"x" * 15))
    with pytest.raises(InvalidSubscriptionKeys):
        decode_subscription_keys("B" + "A" * 86, RFC_AUTH)  # not on the curve
    with pytest.raises(InvalidSubscriptionKeys):
        decode_subscription_keys("!!!", RFC_AUTH)
    # padded base64 is accepted too
    assert decode_subscription_keys(RFC_UA_PUBLIC + "=", RFC_AUTH + "==")[1] == raw
