"""Twisted adapters: move bytes between sockets and the Session, nothing more."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.python.failure import Failure

from pushproxy.config import Config, parse_hostport
from pushproxy.extensions.base import CredentialSink, ExtensionRegistry
from pushproxy.proxy.session import Session, SessionSettings
from pushproxy.proxy.tls import client_tls_options, server_tls_options

log = logging.getLogger("pushproxy.server")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class SessionStats:
    """Hooks for metrics; the default does nothing."""

    def opened(self) -> None: ...
    def closed(self, bytes_in: int, bytes_out: int) -> None: ...
    def intercepted(self, command: str) -> None: ...


class UpstreamProtocol(protocol.Protocol):
    def __init__(self, client: ClientProtocol) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.upstream_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.client.session.upstream_data(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.client.upstream_lost(reason)


class _UpstreamFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, client: ClientProtocol) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> UpstreamProtocol:
        return UpstreamProtocol(self.client)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.client.session.upstream_failed(reason.getErrorMessage())


class ClientProtocol(protocol.Protocol):
    """One client connection; owns its upstream connection and its Session."""

    session: Session

    def __init__(self, service: ProxyService, implicit_tls: bool) -> None:
        self.service = service
        self.implicit_tls = implicit_tls
        self.upstream: UpstreamProtocol | None = None
        self._pending_upstream: list[bytes] = []
        self._timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self._upstream_lost = False
        self._finished = False

    # -- Twisted callbacks -----------------------------------------------------
    def connectionMade(self) -> None:
        svc = self.service
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        peer_host = getattr(peer, "host", "?")
        settings = svc.session_settings(peer_host, self.implicit_tls)
        self.session = Session(
            self,
            session_id=secrets.token_hex(6),
            peer=f"{peer_host}:{getattr(peer, 'port', '?')}",
            client_tls=self.implicit_tls,
            settings=settings,
            extensions=svc.extensions,
            credentials=svc.credentials,
            on_intercepted=svc.stats.intercepted,
        )
        svc.sessions.add(self)
        svc.stats.opened()
        self.transport.setTcpKeepAlive(True)  # type: ignore[union-attr]
        up = svc.config.upstream
        _reactor().connectTCP(up.host, up.port, _UpstreamFactory(self), timeout=up.connect_timeout)
        self._arm_timer()

    def dataReceived(self, data: bytes) -> None:
        self.session.client_data(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.session.closed = True
        if self.upstream is not None and self.upstream.transport is not None:
            _unhook(self.upstream.transport)
            self.upstream.transport.loseConnection()
        self._finish()

    # -- upstream -----------------------------------------------------------------
    def upstream_made(self, upstream: UpstreamProtocol) -> None:
        self.upstream = upstream
        assert upstream.transport is not None and self.transport is not None
        upstream.transport.setTcpKeepAlive(True)  # type: ignore[attr-defined]
        # Back-pressure both ways: a slow reader pauses the other side's reads.
        self.transport.registerProducer(upstream.transport, True)  # type: ignore[attr-defined]
        upstream.transport.registerProducer(self.transport, True)  # type: ignore[attr-defined]
        if self.session.closed:
            upstream.transport.loseConnection()
            return
        for data in self._pending_upstream:
            upstream.transport.write(data)
        self._pending_upstream.clear()
        self.session.upstream_connected()

    def upstream_lost(self, reason: Failure) -> None:
        self._upstream_lost = True
        if self.transport is not None:
            _unhook(self.transport)
        if not self.session.closed:
            if self.session._up_state != "ready":
                self.session.upstream_failed(reason.getErrorMessage())
            else:
                self.session.upstream_closed()
        self._finish()

    # -- SessionIO -------------------------------------------------------------------
    def to_client(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def to_upstream(self, data: bytes) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(data)
        else:
            self._pending_upstream.append(data)

    def start_client_tls(self) -> None:
        self.transport.startTLS(self.service.server_tls)  # type: ignore[union-attr]

    def start_upstream_tls(self) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream.transport.startTLS(self.service.upstream_tls)  # type: ignore[attr-defined]

    def pause_client(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_client(self) -> None:
        if self.transport is not None and self.transport.connected:  # type: ignore[attr-defined]
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def close(self) -> None:
        # A registered producer makes loseConnection wait for it: unhook first.
        up = self.upstream.transport if self.upstream is not None else None
        if self.transport is not None:
            _unhook(self.transport)
            self.transport.loseConnection()
        if up is not None:
            _unhook(up)
            up.loseConnection()
        # A peer that stops reading must not keep the session alive forever.
        self._abort_timer = _reactor().callLater(10, self._abort)

    def _abort(self) -> None:
        for t in (self.transport, self.upstream.transport if self.upstream is not None else None):
            if t is not None and getattr(t, "connected", False):
                t.abortConnection()  # type: ignore[attr-defined]

    # -- timers and end --------------------------------------------------------------
    def _arm_timer(self, delay: float | None = None) -> None:
        limits = self.service.config.session
        if delay is None:
            delay = limits.preauth_timeout
        self._timer = _reactor().callLater(delay, self._check_idle)

    def _check_idle(self) -> None:
        limits = self.service.config.session
        s = self.session
        if s.closed:
            return
        limit = limits.autologout if s.authenticated else limits.preauth_timeout
        quiet = time.monotonic() - s.last_client_activity
        if s.in_idle or quiet < limit:
            self._arm_timer(max(1.0, limit - quiet) if not s.in_idle else limit)
            return
        log.info("session %s: autologout after %.0f s without a command", s.session_id, quiet)
        s.timeout("Autologout; idle for too long")

    def _finish(self) -> None:
        if self._finished:
            return
        upstream_gone = self.upstream is None or self._upstream_lost
        client_gone = self.transport is None or not self.transport.connected  # type: ignore[attr-defined]
        if not (upstream_gone and client_gone):
            return
        self._finished = True
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        s = self.session
        self.service.sessions.discard(self)
        self.service.stats.closed(s.bytes_from_client, s.bytes_from_upstream)
        log.info(
            "session %s closed: peer=%s login=%s client->upstream=%d upstream->client=%d duration=%.1fs",
            s.session_id,
            s.peer,
            s.account or "-",
            s.bytes_from_client,
            s.bytes_from_upstream,
            time.monotonic() - s.started,
        )
        task = asyncio.ensure_future(s.finish())
        self.service.background.add(task)
        task.add_done_callback(self.service.background.discard)


class _ClientFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, service: ProxyService, implicit_tls: bool) -> None:
        self.service = service
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr: Any) -> ClientProtocol | None:
        if self.service.draining:
            return None
        return ClientProtocol(self.service, self.implicit_tls)


class ProxyService:
    """The listeners and the live sessions."""

    def __init__(
        self,
        config: Config,
        extensions: ExtensionRegistry | None = None,
        credentials: CredentialSink | None = None,
        stats: SessionStats | None = None,
    ) -> None:
        from pushproxy.extensions.base import NullCredentialSink

        self.config = config
        self.extensions = extensions or ExtensionRegistry()
        self.credentials: CredentialSink = credentials or NullCredentialSink()
        self.stats = stats or SessionStats()
        self.sessions: set[ClientProtocol] = set()
        self.background: set[asyncio.Task[None]] = set()
        self.ports: list[IListeningPort] = []
        self.draining = False
        self.server_tls: Any = None
        if config.listen.tls_cert_file is not None:
            self.server_tls = server_tls_options(config.listen.tls_cert_file, config.listen.tls_key_file)
        self.upstream_tls = client_tls_options(config.upstream)

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
        if listen.imap:
            host, port = parse_hostport(listen.imap)
            self.ports.append(reactor.listenTCP(port, _ClientFactory(self, False), interface=host))
        if listen.imaps:
            if self.server_tls is None:
                from pushproxy.config import ConfigError

                raise ConfigError("listen.imaps needs listen.tls_cert_file and listen.tls_key_file")
            host, port = parse_hostport(listen.imaps)
            self.ports.append(reactor.listenSSL(port, _ClientFactory(self, True), self.server_tls, interface=host))
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
        for client in list(self.sessions):
            client.session.timeout("Server shutting down, please reconnect")
        deadline = time.monotonic() + 5
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.background:
            await asyncio.wait(list(self.background), timeout=5)


async def _deferred(d: Any) -> Any:
    if d is None:
        return None
    return await d.asFuture(asyncio.get_running_loop())


def _unhook(transport: Any) -> None:
    """Unregister the peer transport as producer (Twisted's TLS transport raises once closed)."""
    try:
        transport.unregisterProducer()
    except AttributeError:
        pass


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
