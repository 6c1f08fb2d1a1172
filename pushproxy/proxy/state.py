"""What every part of a session shares: its state, declared once for the parts (mixins) to use.

:class:`~pushproxy.proxy.session.Session` sets these up; the parts --
:mod:`~pushproxy.proxy.responses` (upstream responses), :mod:`~pushproxy.proxy.routing`
(client commands), :mod:`~pushproxy.proxy.local`
(ordered local answers), :mod:`~pushproxy.proxy.own` (the proxy's own upstream
commands) -- read and change them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from pushproxy.extensions.base import CredentialSink, Reply
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.imap.capabilities import CapabilityPolicy, ConnectionFacts
from pushproxy.imap.framing import Framer
from pushproxy.proxy.client_id import ClientAddress
from pushproxy.proxy.handshake import UpstreamHandshake
from pushproxy.proxy.ledger import CommandLedger, Pending
from pushproxy.proxy.penalty import AuthPenalty

if TYPE_CHECKING:
    from pushproxy.proxy.own import OwnCommand


class SessionIO(Protocol):
    def to_client(self, data: bytes) -> None: ...
    def to_upstream(self, data: bytes) -> None: ...
    def start_client_tls(self) -> None: ...
    def start_upstream_tls(self) -> None: ...
    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...
    def close(self) -> None: ...
    def open_upstream(self) -> None: ...


@dataclass(slots=True)
class SessionSettings:
    upstream_security: str = "none"  # none | starttls | tls
    max_line: int = 65536
    max_preauth_literal: int = 8192
    plaintext_auth_allowed: bool = True  # on a connection without TLS
    starttls_offered: bool = False
    # upstream.forward_client_ip: id -- the client's address goes upstream in an ID command.
    client_address: ClientAddress | None = None


class CommandMode(Enum):
    """What happens to the rest of the client command being read."""

    NONE = "none"  # between commands
    FORWARD = "forward"  # relayed upstream as it comes
    CAPTURE = "capture"  # relayed, and kept for credential capture (LOGIN / AUTHENTICATE)
    INTERCEPT = "intercept"  # kept, answered by an extension
    REWRITE = "rewrite"  # kept, sent upstream rewritten (ID before login)
    DISCARD = "discard"  # dropped (a refused command's literal and continuation lines)


class SessionState:
    """Attribute declarations (set in Session.__init__) and the cross-part methods."""

    io: SessionIO
    session_id: str
    settings: SessionSettings
    extensions: ExtensionManager
    _extension_names: frozenset[bytes]  # the intercepted command names, as bytes
    _routes: dict[bytes, Callable[..., None]]  # command name -> route (see routing.routes_for)
    credentials: CredentialSink
    facts: ConnectionFacts
    policy: CapabilityPolicy
    client_framer: Framer
    closed: bool
    ledger: CommandLedger
    login: str | None
    account: str | None
    upstream_capabilities: frozenset[str]
    _on_intercepted: Callable[[str], None] | None
    client_ip: str
    handshake: UpstreamHandshake
    _penalty: AuthPenalty | None
    _on_auth_failed: Callable[[], None] | None
    _on_upstream_capabilities: Callable[[list[bytes]], None] | None
    _out_client: list[bytes]  # responses for the client, written at the end of each read
    _greeted: bool  # the proxy greeted the client itself (upstream opened lazily)
    _upstream_requested: bool
    _delayed_out: list[bytes] | None  # output held back by the auth penalty
    _held: bool  # client events wait in _queue
    _held_by_login: bool  # ... because a login's outcome is not known yet
    _queue: deque[object]
    _continuation_credits: int  # "+" from upstream for IDLE / AUTHENTICATE
    _awaiting_literal: Pending | None  # its sync literal awaits "+"
    _idle: Pending | None
    _cmd_mode: CommandMode
    _cmd_tag: bytes
    _cmd_name: bytes
    _cmd_pending: Pending | None  # the forwarded command being read
    _cmd_buf: list[bytes]
    _cmd_size: int
    _id_sent: bool  # the ID carrying the client's address went upstream
    _own: OwnCommand | None
    _local_task: asyncio.Task[None] | None
    _drain_waiter: Callable[[], None] | None

    @property
    def authenticated(self) -> bool:
        return self.facts.authenticated

    def _pump(self) -> None:
        raise NotImplementedError

    def _flush_client(self) -> None:
        raise NotImplementedError

    def _fatal(self, text: str, code: str | None = None) -> None:
        raise NotImplementedError

    def _local_reply(self, tag: bytes, reply: Reply) -> None:
        raise NotImplementedError

    def _after_drain(self, fn: Callable[[], None]) -> None:
        raise NotImplementedError

    def _starttls(self, tag: bytes) -> None:
        raise NotImplementedError

    def _intercept(self, tag: bytes, data: bytes) -> None:
        raise NotImplementedError

    def _drained(self) -> None:
        raise NotImplementedError

    def _spawn(self, coro: Awaitable[None]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
