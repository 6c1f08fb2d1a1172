"""The session's own upstream commands read their responses with the one core (any chunking, bounded)."""

from __future__ import annotations

import asyncio

import pytest

from pushproxy.extensions.base import UpstreamCommandError
from pushproxy.imap.assemble import DEFAULT_MAX_RESPONSE
from tests.support.sessions import make


async def logged_in():
    s, io, _, _ = make()
    s.client_data(b"a0 LOGIN alice pw\r\n")
    s.upstream_data(b"a0 OK Logged in\r\n")
    return s, io


async def test_own_command_responses_one_byte_at_a_time() -> None:
    s, io = await logged_in()
    before = bytes(io.client)
    task = asyncio.ensure_future(s.upstream_command(b'STATUS "Notes" (UIDNEXT UIDVALIDITY)', 5))
    await asyncio.sleep(0)
    data = b"* STATUS {5}\r\nNotes (UIDNEXT 4 UIDVALIDITY 9)\r\n* OK see {3}\r\nPPX1 OK done\r\n"
    for i in range(len(data)):
        s.upstream_data(data[i : i + 1])
    untagged, status = await task
    assert status.status == b"OK"
    assert untagged == [b"* STATUS {5}\r\nNotes (UIDNEXT 4 UIDVALIDITY 9)\r\n", b"* OK see {3}\r\n"]
    assert bytes(io.client) == before  # nothing of it reached the client


async def test_own_command_oversized_response_fails_cleanly() -> None:
    s, io = await logged_in()
    task = asyncio.ensure_future(s.upstream_command(b'LIST "" "*"', 5))
    await asyncio.sleep(0)
    s.upstream_data(b'* LIST () "/" {%d}\r\n' % (DEFAULT_MAX_RESPONSE + 10))
    s.upstream_data(b"x" * 65536)
    for _ in range(DEFAULT_MAX_RESPONSE // 65536):
        if s.closed:
            break
        s.upstream_data(b"x" * 65536)
    with pytest.raises(UpstreamCommandError):
        await task
    assert s.closed and b"* BYE" in bytes(io.client)
