"""The listeners, the live sessions and what they share (limits, auth penalty, upstream capabilities)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IListeningPort

from pushproxy.config import Config, ConfigError, parse_hostport
from pushproxy.extensions.base import CredentialSink, NullCredentialSink
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.proxy import listener, proxyproto
from pushproxy.proxy.connection import ClientProtocol
from pushproxy.proxy.limits import ConnectionLimiter
from pushproxy.proxy.penalty import AuthPenalty
from pushproxy.proxy.session import Session, SessionSettings
from pushproxy.proxy.session_io import SessionEvents
from pushproxy.proxy.shared import SessionStats
from pushproxy.proxy.tls import server_tls_options, upstream_tls_context

log = logging.getLogger("pushproxy.server")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _ClientFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, service: ProxyService, implicit_tls: bool) -> None:
        self.service = service
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr: Any) -> ClientProtocol | None:
        if self.service.draining:
            return None
        return ClientProtocol(self.service, self.implicit_tls)


class _ServiceEvents(SessionEvents):
    """What the service's sessions report: counted in its stats, and the upstream's greeting capabilities
    kept (:attr:`ProxyService.greeting_capabilities`)."""

    def __init__(self, service: ProxyService) -> None:
        self._service = service

    def intercepted(self, command: str) -> None:
        self._service.stats.intercepted(command)

    def auth_failed(self) -> None:
        self._service.stats.auth_failed()

    def logged_in(self) -> None:
        self._service.stats.logged_in()

    def upstream_capabilities(self, atoms: list[bytes]) -> None:
        self._service.remember_capabilities(atoms)


class ProxyService:
    """The listeners and the live sessions."""

    def __init__(
        self,
        config: Config,
        extensions: ExtensionManager | None = None,
        credentials: CredentialSink | None = None,
        stats: SessionStats | None = None,
    ) -> None:
        self.config = config
        self.extensions = extensions if extensions is not None else ExtensionManager()
        self.credentials: CredentialSink = credentials or NullCredentialSink()
        self.stats = stats or SessionStats()
        self.sessions: set[Session] = set()
        self.background: set[asyncio.Task[None]] = set()
        self.ports: list[IListeningPort] = []
        self.draining = False
        self.server_tls: Any = None
        if config.listen.tls_cert_file is not None:
            self.server_tls = server_tls_options(config.listen.tls_cert_file, config.listen.tls_key_file)
        self.upstream_tls = upstream_tls_context(config.upstream)
        limits = config.session
        self.limiter = ConnectionLimiter(limits.max_connections, limits.max_connections_per_ip)
        self.penalty = AuthPenalty(limits.auth_penalty_max, limits.auth_penalty_reset)
        self._proxy_networks = [
            ipaddress.ip_network(n, strict=False) for n in config.listen.proxy_protocol_trusted
        ] if config.listen.proxy_protocol else []  # fmt: skip
        # Upstream's pre-login capabilities, learnt from the last handshake: with them the
        # proxy greets clients itself and opens upstream only once a client speaks.
        self.greeting_capabilities: list[bytes] | None = None
        self.session_events: SessionEvents = _ServiceEvents(self)

    def proxy_header_trusted(self, peer_ip: str) -> bool:
        return bool(self._proxy_networks) and proxyproto.in_networks(peer_ip, self._proxy_networks)

    def remember_capabilities(self, atoms: list[bytes]) -> None:
        self.greeting_capabilities = list(atoms)

    def session_settings(self, peer_host: str, implicit_tls: bool) -> SessionSettings:
        cfg = self.config
        return SessionSettings(
            upstream_security=cfg.upstream.security,
            max_line=cfg.session.max_line_length,
            max_preauth_literal=cfg.session.max_preauth_literal,
            plaintext_auth_allowed=cfg.session.allow_plaintext_auth or _is_loopback(peer_host),
            starttls_offered=self.server_tls is not None and not implicit_tls,
        )

    def start(self) -> None:
        reactor = _reactor()
        listen = self.config.listen

        def refused() -> None:
            self.stats.refused("fd_limit")

        if listen.imap:
            host, port = parse_hostport(listen.imap)
            factory = _ClientFactory(self, False)
            self.ports.append(listener.listen(reactor, port, factory, interface=host, on_refused=refused))
        if listen.imaps:
            if self.server_tls is None:
                raise ConfigError("listen.imaps needs listen.tls_cert_file and listen.tls_key_file")
            host, port = parse_hostport(listen.imaps)
            factory = _ClientFactory(self, True)
            self.ports.append(
                listener.listen(reactor, port, factory, interface=host, tls_options=self.server_tls, on_refused=refused)
            )
        for p in self.ports:
            addr = p.getHost()
            log.info("listening on %s:%s", getattr(addr, "host", "?"), getattr(addr, "port", "?"))

    def bound_ports(self) -> list[int]:
        return [int(getattr(p.getHost(), "port", 0)) for p in self.ports]

    async def drain(self, timeout: float, on_progress: Callable[[int], None] | None = None) -> None:
        """Stop accepting; let sessions end for up to ``timeout`` s; then say BYE to the rest."""
        self.draining = True
        for p in self.ports:
            await _deferred(p.stopListening())
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            if on_progress:
                on_progress(len(self.sessions))
            await asyncio.sleep(0.1)
        for session in list(self.sessions):
            session.timeout("Server shutting down, please reconnect")
        deadline = time.monotonic() + 5
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.background:
            await asyncio.wait(list(self.background), timeout=5)


async def _deferred(d: Any) -> Any:
    if d is None:
        return None
    return await d.asFuture(asyncio.get_running_loop())


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
