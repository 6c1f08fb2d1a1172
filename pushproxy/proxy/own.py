"""The proxy's own commands on a client's upstream connection, and what extensions see of a session.

Extensions may run a command upstream in the user's session (e.g. LIST to check
mailbox names) while the client waits for their answer; its responses are
collected here and never reach the client.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pushproxy.extensions.base import UpstreamCommandError
from pushproxy.imap import response as r
from pushproxy.imap.assemble import MalformedResponse, ResponseCollector
from pushproxy.imap.parse import StatusResponse, parse_status_response
from pushproxy.proxy.state import SessionState

if TYPE_CHECKING:
    from pushproxy.proxy.session import Session


class OwnCommand:
    __slots__ = ("collector", "future", "tag", "untagged")

    def __init__(self, tag: bytes, future: asyncio.Future[tuple[list[bytes], StatusResponse]]) -> None:
        self.tag = tag
        self.future = future
        self.untagged: list[bytes] = []
        self.collector = ResponseCollector()  # the one core assembles its responses


class OwnCommands(SessionState):
    def reply_untagged(self, payload: bytes) -> None:
        self.io.to_client(r.untagged(payload))

    async def upstream_command(self, command: bytes, timeout: float) -> tuple[list[bytes], StatusResponse]:
        if self.ledger or self._own is not None:
            raise UpstreamCommandError("a command is already in flight")
        if self.closed:
            raise UpstreamCommandError("session closed")
        tag = self.ledger.next_own_tag(b"PPX")
        future: asyncio.Future[tuple[list[bytes], StatusResponse]] = asyncio.get_running_loop().create_future()
        self._own = OwnCommand(tag, future)
        self.io.to_upstream(tag + b" " + command + b"\r\n")
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # The connection's state is unknown now: closing is the only safe move.
            self._fatal("Upstream server did not answer", "UNAVAILABLE")
            raise UpstreamCommandError("timeout") from None
        finally:
            self._own = None

    def _own_event(self, ev: object) -> None:
        own = self._own
        assert own is not None
        try:
            response = own.collector.add(ev)
        except MalformedResponse as exc:
            self._fail_own(f"unreadable upstream response: {exc}")
            self._fatal("Upstream server sent an unreadable response", "UNAVAILABLE")
            return
        if response is None:
            return
        if response[:1] == b"*":
            own.untagged.append(response)
            return
        status = parse_status_response(response)
        if status is not None and status.tag == own.tag and not own.future.done():
            own.future.set_result((own.untagged, status))

    def _fail_own(self, reason: str) -> None:
        if self._own is not None and not self._own.future.done():
            self._own.future.set_exception(UpstreamCommandError(reason))


class SessionContextImpl:
    """The SessionContext handed to extension handlers."""

    __slots__ = ("_s",)

    def __init__(self, session: Session) -> None:
        self._s = session

    @property
    def session_id(self) -> str:
        return self._s.session_id

    @property
    def account(self) -> str | None:
        return self._s.account if self._s.authenticated else None

    @property
    def login(self) -> str | None:
        return self._s.login

    @property
    def upstream_capabilities(self) -> frozenset[str]:
        return self._s.upstream_capabilities

    def reply_untagged(self, payload: bytes) -> None:
        self._s.reply_untagged(payload)

    async def upstream_command(self, command: bytes, timeout: float = 30.0) -> tuple[list[bytes], StatusResponse]:
        return await self._s.upstream_command(command, timeout)
