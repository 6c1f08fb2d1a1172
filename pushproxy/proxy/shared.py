"""What the client connections of one service share, as a connection sees it.

:class:`~pushproxy.proxy.server.ProxyService` (the listeners) provides it;
:class:`~pushproxy.proxy.connection.ClientProtocol` uses it.  Declared here, below
both, so that the connection does not import the server that creates it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from pushproxy.config import Config
from pushproxy.extensions.base import CredentialSink
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.proxy.limits import ConnectionLimiter
from pushproxy.proxy.penalty import AuthPenalty
from pushproxy.proxy.session import Session
from pushproxy.proxy.session_io import SessionEvents, SessionSettings


class SessionStats:
    """Hooks for metrics; the default does nothing."""

    def opened(self) -> None: ...
    def closed(self, bytes_in: int, bytes_out: int) -> None: ...
    def intercepted(self, command: str) -> None: ...
    def refused(self, reason: str) -> None: ...  # total | per_ip | proxy_header | timeout | fd_limit
    def auth_failed(self) -> None: ...
    def logged_in(self) -> None: ...
    def timed_out(self, kind: str) -> None: ...  # preauth


class ConnectionService(Protocol):
    config: Config
    extensions: ExtensionManager
    credentials: CredentialSink
    stats: SessionStats
    session_events: SessionEvents  # what every session reports: into stats, and the greeting's capabilities
    limiter: ConnectionLimiter
    penalty: AuthPenalty
    sessions: set[Session]  # the live sessions (drained at stop)
    background: set[asyncio.Task[None]]  # sessions' finishing tasks, awaited at stop
    server_tls: Any  # Twisted's TLS options for the client-facing side (None: no TLS)
    upstream_tls: Any  # the ssl.SSLContext of the upstream leg (pushproxy.proxy.upstream_tls)
    # Upstream's pre-login capabilities, once learnt: the proxy then greets clients itself.
    greeting_capabilities: list[bytes] | None

    def proxy_header_trusted(self, peer_ip: str) -> bool: ...
    def session_settings(self, peer_host: str, implicit_tls: bool) -> SessionSettings: ...
