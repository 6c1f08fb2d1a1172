"""The WEBPUSH argument grammar and response forms (pinned wire form: webpush-imap.md)."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from pushproxy.extensions.webpush.grammar import (
    Acknowledge,
    Silence,
    Subscribe,
    Unsubscribe,
    WebPushSyntaxError,
    parse_ackwebpush,
    parse_lwebpush,
    parse_no_arguments,
    parse_silwebpush,
    parse_sub_id,
    parse_webpush,
    vapid_response,
    webpush_response,
)
from pushproxy.imap.parse import NIL, Atom, ParseError, Token, parse_command


def b64u(data: bytes, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    return text if pad else text.rstrip("=")


def new_keys() -> tuple[str, str]:
    point = (
        ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    return b64u(point), b64u(os.urandom(16))


P256DH, AUTH = new_keys()
ENDPOINT = "https://push.example.net/push/random1"


def args(line: bytes) -> list[Token]:
    return parse_command(b"a1 X " + line + b"\r\n").args


# --- ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("sub_id", ["a", "a8282bf9-6102-4e1b-bb61-d26d0e532e65", "A_b-9", "x" * 64, "a.b", "a+b"])
def test_valid_ids(sub_id: str) -> None:
    assert parse_sub_id(Atom(sub_id)) == sub_id
    assert parse_sub_id(sub_id.encode()) == sub_id  # quoted form


# Changed with issue 13 (lenient where the draft is silent): ids used to be 1-64
# characters of [A-Za-z0-9_-]; now any astring of 1-256 bytes of UTF-8 without
# control characters is an id, so "a b", "a/b", "é", quoted "NIL" and 256-byte ids are valid.
@pytest.mark.parametrize("sub_id", ["x" * 65, "x" * 256, "a b", "a/b", "é", "NIL", "nil", 'a"b', "é" * 128])
def test_lenient_ids_are_accepted(sub_id: str) -> None:
    assert parse_sub_id(sub_id.encode()) == sub_id


@pytest.mark.parametrize("sub_id", [b"", b"x" * 257, "é".encode() * 128 + b"x", b"a\x01b", b"a\x7fb", b"\xff"])
def test_invalid_ids(sub_id: bytes) -> None:
    with pytest.raises(WebPushSyntaxError):
        parse_sub_id(sub_id)


@pytest.mark.parametrize("sub_id", ["a b", "NIL", "é", 'a"b\\c', "x" * 256, "a]b"])
def test_any_id_round_trips_through_a_response(sub_id: str) -> None:
    line = webpush_response(sub_id, ENDPOINT, 0)
    cmd = parse_command(b"tag " + line + b"\r\n")
    assert parse_sub_id(cmd.args[0]) == sub_id


def test_id_cannot_be_nil_or_list() -> None:
    with pytest.raises(WebPushSyntaxError):
        parse_sub_id(NIL)
    with pytest.raises(WebPushSyntaxError):
        parse_sub_id([Atom("a")])


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=64))
def test_any_id_of_the_alphabet_round_trips_through_the_parser(sub_id: str) -> None:
    if sub_id.upper() == "NIL":
        return
    cmd = parse_command(b"a WEBPUSH " + sub_id.encode() + b" NIL\r\n")
    assert parse_webpush(cmd.args) == Unsubscribe(sub_id)


# --- WEBPUSH ---------------------------------------------------------------------------


def test_subscribe_with_atoms_and_quoted_strings() -> None:
    line = f'sub-1 {ENDPOINT} {P256DH} "{AUTH}"'.encode()
    assert parse_webpush(args(line)) == Subscribe("sub-1", ENDPOINT, P256DH, AUTH)


def test_subscribe_with_literals() -> None:
    cmd = parse_command(
        b"a WEBPUSH s {%d}\r\n%s {%d}\r\n%s %s\r\n"
        % (len(ENDPOINT), ENDPOINT.encode(), len(P256DH), P256DH.encode(), AUTH.encode())
    )
    assert parse_webpush(cmd.args) == Subscribe("s", ENDPOINT, P256DH, AUTH)


def test_endpoint_with_percent_must_be_quoted() -> None:
    url = "https://push.example.net/p?x=%41"
    assert parse_webpush(args(f'"s" "{url}" {P256DH} {AUTH}'.encode())) == Subscribe("s", url, P256DH, AUTH)


def test_standard_base64_keys_are_accepted_and_normalised() -> None:
    # Changed with issue 13: standard base64 (+ /) used to be BAD; it is now accepted.
    p256dh_raw = base64.urlsafe_b64decode(P256DH + "=" * (-len(P256DH) % 4))
    auth_raw = base64.urlsafe_b64decode(AUTH + "==")
    for pad in (True, False):
        std = [base64.b64encode(p256dh_raw), base64.b64encode(auth_raw)]
        if not pad:
            std = [k.rstrip(b"=") for k in std]
        sub = parse_webpush([Atom("s"), ENDPOINT.encode(), *std])
        assert isinstance(sub, Subscribe) and (sub.p256dh, sub.auth) == (P256DH, AUTH)


def test_padded_keys_are_normalised() -> None:
    p256dh_raw = base64.urlsafe_b64decode(P256DH + "=" * (-len(P256DH) % 4))
    auth_raw = base64.urlsafe_b64decode(AUTH + "==")
    padded = [b64u(p256dh_raw, pad=True).encode(), b64u(auth_raw, pad=True).encode()]
    sub = parse_webpush([Atom("s"), ENDPOINT.encode(), *padded])
    assert isinstance(sub, Subscribe)
    assert (sub.p256dh, sub.auth) == (P256DH, AUTH)


def test_delete_form() -> None:
    assert parse_webpush(args(b"sub-1 NIL")) == Unsubscribe("sub-1")
    assert parse_webpush(args(b"sub-1 nil")) == Unsubscribe("sub-1")


def test_missing_auth_is_bad_with_that_reason() -> None:
    with pytest.raises(WebPushSyntaxError, match="auth"):
        parse_webpush(args(f"s {ENDPOINT} {P256DH}".encode()))


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"s",
        f"s {ENDPOINT}".encode(),
        f"s {ENDPOINT} {P256DH} {AUTH} extra".encode(),
        f"s NIL {P256DH} {AUTH}".encode(),
        f"s {ENDPOINT} NIL {AUTH}".encode(),
        f"s {ENDPOINT} {P256DH} NIL".encode(),
        f's "" {P256DH} {AUTH}'.encode(),
        f"s ({ENDPOINT}) {P256DH} {AUTH}".encode(),
        f"{'x' * 257} {ENDPOINT} {P256DH} {AUTH}".encode(),  # was bad.id: now a valid id
    ],
)
def test_malformed_webpush(line: bytes) -> None:
    with pytest.raises(WebPushSyntaxError):
        parse_webpush(args(line) if line else [])


def test_bad_keys() -> None:
    point = base64.urlsafe_b64decode(P256DH + "=" * (-len(P256DH) % 4))
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    compressed = bytes([2]) + point[1:33]
    cases = [
        (b64u(off_curve), AUTH, "valid P-256"),
        (b64u(compressed), AUTH, "65-byte"),
        ("not base64url!", AUTH, "base64"),
        (P256DH, b64u(os.urandom(15)), "16-byte"),
        (P256DH, b64u(os.urandom(32)), "16-byte"),
        (P256DH, AUTH + "=", "padding"),  # padding that does not complete a quantum
        (P256DH, "A" * 21, "length"),  # 22 chars minus one: not a base64 length
    ]
    for p256dh, auth, reason in cases:
        with pytest.raises(WebPushSyntaxError, match=reason):
            parse_webpush([Atom("s"), ENDPOINT.encode(), p256dh.encode(), auth.encode()])


def test_endpoint_is_not_judged_by_the_grammar() -> None:
    # Whether a URL is acceptable is a NO from the SSRF guard, not a BAD.
    sub = parse_webpush([Atom("s"), b"http://10.0.0.1/x", P256DH.encode(), AUTH.encode()])
    assert isinstance(sub, Subscribe) and sub.endpoint == "http://10.0.0.1/x"


def test_invalid_utf8_endpoint_is_bad() -> None:
    with pytest.raises(WebPushSyntaxError, match="UTF-8"):
        parse_webpush([Atom("s"), b"https://\xff/", P256DH.encode(), AUTH.encode()])


def test_syntax_error_is_a_parse_error() -> None:
    assert issubclass(WebPushSyntaxError, ParseError)


# --- ACKWEBPUSH, LWEBPUSH, SILWEBPUSH, GETVAPID ------------------------------------------


def test_ackwebpush_forms() -> None:
    assert parse_ackwebpush(args(b"tok_EN-1")) == Acknowledge("tok_EN-1")
    assert parse_ackwebpush(args(b"sub-1 tok")) == Acknowledge("tok", "sub-1")
    assert parse_ackwebpush(args(b'"sub-1" "tok"')) == Acknowledge("tok", "sub-1")
    bad_forms: list[list[Token]] = [
        [],
        args(b"a b c"),
        args(b"tok.en"),
        args(b"NIL"),
        [b"x" * 257, Atom("tok")],  # was bad.id: now any id up to 256 bytes is valid
        [b"x" * 257],
    ]
    for bad in bad_forms:
        with pytest.raises(WebPushSyntaxError):
            parse_ackwebpush(bad)


def test_lwebpush_forms() -> None:
    assert parse_lwebpush([]) is None
    assert parse_lwebpush([Atom("*")]) is None
    assert parse_lwebpush(args(b'"*"')) is None
    assert parse_lwebpush(args(b"sub-1")) == "sub-1"
    with pytest.raises(WebPushSyntaxError):
        parse_lwebpush(args(b"a b"))
    assert parse_lwebpush(args(b"a.id")) == "a.id"  # changed with issue 13: any id up to 256 bytes
    with pytest.raises(WebPushSyntaxError):
        parse_lwebpush([b"x" * 257])


def test_silwebpush_forms() -> None:
    assert parse_silwebpush(args(b"s")) == Silence("s", None)
    assert parse_silwebpush(args(b"s 0")) == Silence("s", 0)
    assert parse_silwebpush(args(b"s 3600")) == Silence("s", 3600)
    assert parse_silwebpush(args(b"s 4294967295")) == Silence("s", 4294967295)
    for bad in (b"", b"s 4294967296", b"s -1", b"s 1.5", b's "10"', b"s NIL", b"s 1 2", b"s 12345678901"):
        with pytest.raises(WebPushSyntaxError):
            parse_silwebpush(args(bad) if bad else [])


def test_getvapid_takes_no_arguments() -> None:
    parse_no_arguments("GETVAPID", [])
    with pytest.raises(WebPushSyntaxError, match="no arguments"):
        parse_no_arguments("GETVAPID", [Atom("x")])


# --- responses -----------------------------------------------------------------------------


def test_response_forms() -> None:
    key = "B" + "A" * 86
    assert vapid_response(key) == b"VAPID " + key.encode()
    assert webpush_response("s1", ENDPOINT, None) == b'WEBPUSH s1 "' + ENDPOINT.encode() + b'" NIL'
    assert webpush_response("s1", ENDPOINT, 0).endswith(b'" 0')
    assert webpush_response("s1", ENDPOINT, 4294967295).endswith(b" 4294967295")
    assert webpush_response("s1", ENDPOINT, 2**40).endswith(b" 4294967295")


def test_webpush_response_parses_back() -> None:
    line = webpush_response("s1", 'https://h.example/a"b\\c', 17)
    cmd = parse_command(b"tag " + line + b"\r\n")  # "*" is not a command tag
    assert cmd.name == "WEBPUSH"
    assert cmd.args == [Atom("s1"), b'https://h.example/a"b\\c', Atom("17")]
