"""``is_valid_tag`` against the rule written out byte by byte (RFC 9051 tag, minus ``]``, at most 64 bytes)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pushproxy.imap.parse import MAX_TAG, is_valid_tag

_FORBIDDEN = set(b'(){%*"\\+]')


def _rule(tag: bytes) -> bool:
    return 0 < len(tag) <= MAX_TAG and all(0x21 <= c <= 0x7E and c not in _FORBIDDEN for c in tag)


def test_every_single_byte() -> None:
    for c in range(256):
        assert is_valid_tag(bytes([c])) == _rule(bytes([c])), c


def test_length_bound() -> None:
    assert is_valid_tag(b"a" * MAX_TAG)
    assert not is_valid_tag(b"a" * (MAX_TAG + 1))
    assert not is_valid_tag(b"")


@given(st.binary(max_size=80))
def test_any_bytes(tag: bytes) -> None:
    assert is_valid_tag(tag) == _rule(tag)
