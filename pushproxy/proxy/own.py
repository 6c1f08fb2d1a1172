"""The proxy's own commands on a client's upstream connection.

Extensions may run a command upstream in the user's session (e.g. LIST to check
mailbox names) while the client waits for their answer; while one is in flight
every upstream event comes here (:meth:`OwnCommands.event`), is assembled by the
one response collector and never reaches the client.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from pushproxy.extensions.base import UpstreamCommandError
from pushproxy.imap.assemble import MalformedResponse, ResponseCollector
from pushproxy.imap.parse import StatusResponse, parse_status_response
from pushproxy.proxy.ledger import CommandLedger
from pushproxy.proxy.session_io import SessionIO

Result = tuple[list[bytes], StatusResponse]


class OwnHost(Protocol):
    @property
    def closed(self) -> bool: ...

    def fatal(self, text: str, code: str | None = None) -> None: ...


class OwnCommand:
    __slots__ = ("collector", "future", "tag", "untagged")

    def __init__(self, tag: bytes, future: asyncio.Future[Result]) -> None:
        self.tag = tag
        self.future = future
        self.untagged: list[bytes] = []
        self.collector = ResponseCollector()  # the one core assembles its responses


class OwnCommands:
    """At most one own command in flight (``current``), and only when the client's are all answered."""

    def __init__(self, host: OwnHost, io: SessionIO, ledger: CommandLedger) -> None:
        self._host = host
        self._io = io
        self._ledger = ledger
        self.current: OwnCommand | None = None  # read for every upstream event

    async def run(self, command: bytes, timeout: float) -> Result:
        if self._ledger or self.current is not None:
            raise UpstreamCommandError("a command is already in flight")
        if self._host.closed:
            raise UpstreamCommandError("session closed")
        tag = self._ledger.next_own_tag(b"PPX")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.current = OwnCommand(tag, future)
        self._io.to_upstream(tag + b" " + command + b"\r\n")
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # The connection's state is unknown now: closing is the only safe move.
            self._host.fatal("Upstream server did not answer", "UNAVAILABLE")
            raise UpstreamCommandError("timeout") from None
        finally:
            self.current = None

    def event(self, ev: object) -> None:
        own = self.current
        assert own is not None
        try:
            response = own.collector.add(ev)
        except MalformedResponse as exc:
            self.fail(f"unreadable upstream response: {exc}")
            self._host.fatal("Upstream server sent an unreadable response", "UNAVAILABLE")
            return
        if response is None:
            return
        if response[:1] == b"*":
            own.untagged.append(response)
            return
        status = parse_status_response(response)
        if status is not None and status.tag == own.tag and not own.future.done():
            own.future.set_result((own.untagged, status))

    def fail(self, reason: str) -> None:
        if self.current is not None and not self.current.future.done():
            self.current.future.set_exception(UpstreamCommandError(reason))
