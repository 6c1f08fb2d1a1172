"""SETMETADATA for Dovecot's ox driver: what is sent, and that nothing is sent when it cannot be quoted."""

from __future__ import annotations

from dataclasses import dataclass, field

from pushproxy.extensions.base import UpstreamCommandError
from pushproxy.extensions.ox_metadata import enable_ox_notify
from pushproxy.imap.parse import StatusResponse


@dataclass
class FakeSession:
    login: str | None
    upstream_capabilities: frozenset[str] = frozenset({"IMAP4REV1", "METADATA"})
    status: bytes = b"OK"
    fail: bool = False
    session_id: str = "s1"
    account: str | None = None
    sent: list[bytes] = field(default_factory=list)

    def reply_untagged(self, payload: bytes) -> None:
        raise AssertionError("nothing is sent to the client")

    async def upstream_command(self, command: bytes, timeout: float = 30.0) -> tuple[list[bytes], StatusResponse]:
        self.sent.append(command)
        if self.fail:
            raise UpstreamCommandError("connection lost")
        return [], StatusResponse(b"x", self.status, None, -1, -1)


async def test_sets_the_http_notify_key_with_a_quoted_login() -> None:
    ctx = FakeSession(login='al"ice\\x')
    assert await enable_ox_notify(ctx) is True
    assert ctx.sent == [b'SETMETADATA "" (/private/vendor/vendor.dovecot/http-notify "user=al\\"ice\\\\x")']


async def test_nothing_sent_without_metadata_or_for_unquotable_logins() -> None:
    no_metadata = FakeSession(login="alice", upstream_capabilities=frozenset({"IMAP4REV1"}))
    assert await enable_ox_notify(no_metadata) is False and no_metadata.sent == []
    for login in ("al\r\nice", "jörg", ""):
        ctx = FakeSession(login=login)
        assert await enable_ox_notify(ctx) is False and ctx.sent == []


async def test_refusal_and_failure_are_not_errors() -> None:
    assert await enable_ox_notify(FakeSession(login="alice", status=b"NO")) is False
    assert await enable_ox_notify(FakeSession(login="alice", fail=True)) is False
