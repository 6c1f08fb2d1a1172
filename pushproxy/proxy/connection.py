"""Twisted adapters for one client connection: move bytes between sockets and the Session.

Before a Session exists the connection may have to read a PROXY v2 header (from
a trusted load balancer) and pass the connection limits; the upstream
connection is opened only when the session asks for it (lazily, at the client's
first bytes, once the upstream's greeting capabilities are known).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from enum import Enum
from typing import Any, Literal

from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from pushproxy.imap import response as r
from pushproxy.proxy import proxyproto
from pushproxy.proxy import transport as tx
from pushproxy.proxy.client_id import ClientAddress
from pushproxy.proxy.session import Session
from pushproxy.proxy.shared import ConnectionService
from pushproxy.proxy.upstream_tls import UpstreamTLS

log = logging.getLogger("pushproxy.server")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _Phase(Enum):
    PROXY_HEADER = "proxy-header"  # a trusted load balancer's PROXY v2 header comes first
    PREFIX_CHECK = "prefix-check"  # an untrusted peer: its first bytes must not be a PROXY header
    SESSION = "session"
    REFUSED = "refused"


class UpstreamProtocol(protocol.Protocol):
    def __init__(self, client: ClientProtocol) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.upstream_made(self)

    def dataReceived(self, data: bytes) -> None:
        # What the session sends the client for this chunk leaves in one write; so do
        # the client's pipelined commands it releases (those that waited for a login's
        # outcome), as the client sent them.
        client = self.client
        client.feed_session("upstream", data, client.both_outboxes)

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

    def __init__(self, service: ConnectionService, implicit_tls: bool) -> None:
        self.service = service
        self.implicit_tls = implicit_tls
        self.upstream: UpstreamProtocol | None = None
        self._pending_upstream: list[bytes] = []
        self.client_out = tx.Outbox(None)
        self.upstream_out = tx.Outbox(None)  # its transport is set once upstream is connected
        self._upstream_outbox = (self.upstream_out,)
        self.both_outboxes = (self.client_out, self.upstream_out)
        self._timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self._upstream_lost = False
        self._upstream_opened = False
        self._finished = False
        self._phase = _Phase.PREFIX_CHECK
        self._prefix = b""
        self._admitted_ip: str | None = None
        self._has_session = False
        self.started = time.monotonic()
        self.address: proxyproto.ProxiedAddress | None = None

    # -- Twisted callbacks -----------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = self.transport.getHost()  # type: ignore[union-attr]
        self.address = proxyproto.ProxiedAddress(
            str(getattr(peer, "host", "")), int(getattr(peer, "port", 0)),
            str(getattr(host, "host", "")), int(getattr(host, "port", 0)),
        )  # fmt: skip
        tx.tune(self.transport)
        self.client_out.attach(self.transport)
        tx.gather_tls_reads(self.transport, self.upstream_out)  # implicit TLS
        self._arm_timer()
        if self.service.proxy_header_trusted(self.address.client_ip):
            self._phase = _Phase.PROXY_HEADER
            return
        self._start_session()

    def dataReceived(self, data: bytes) -> None:
        phase = self._phase
        if phase is _Phase.SESSION:
            # What the session sends upstream for this chunk leaves in one write.
            self.feed_session("client", data, self._upstream_outbox)
        elif phase is _Phase.PREFIX_CHECK:
            self._check_prefix(data)
        elif phase is _Phase.PROXY_HEADER:
            self._read_proxy_header(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._admitted_ip is not None:
            self.service.limiter.release(self._admitted_ip)
            self._admitted_ip = None
        if not self._has_session:
            return
        self.session.client_lost()
        if self.upstream is not None and self.upstream.transport is not None:
            tx.unregister_producer(self.upstream.transport)
            self.upstream.transport.loseConnection()
        self._finish()

    def feed_session(self, side: Literal["client", "upstream"], data: bytes, outboxes: tuple[tx.Outbox, ...]) -> None:
        """Hand the session a chunk read from ``side``; what it writes to ``outboxes`` meanwhile leaves in one go."""
        for out in outboxes:
            out.gather()
        try:
            if side == "client":
                self.session.client_data(data)
            else:
                self.session.upstream_data(data)
        except Exception as exc:  # a bug, never the peer's doing: one line, a BYE, no traceback
            self.session.internal_error(side, exc)
        finally:
            for out in outboxes:
                out.flush()

    # -- before the session ----------------------------------------------------------
    def _read_proxy_header(self, data: bytes) -> None:
        buf = self._prefix + data
        try:
            parsed = proxyproto.parse_header(buf)
        except proxyproto.ProxyHeaderError as exc:
            self._refuse("proxy_header", f"Invalid PROXY header: {exc}")
            return
        if parsed is None:
            self._prefix = buf
            return
        address, used = parsed
        assert self.address is not None
        if address is not None:
            self.address = address
        self._prefix = b""
        self._start_session()
        if self._phase is _Phase.SESSION and used < len(buf):
            self.session.client_data(buf[used:])

    def _check_prefix(self, data: bytes) -> None:
        buf = self._prefix + data
        if proxyproto.could_be_header(buf):
            if len(buf) >= len(proxyproto.SIGNATURE):
                log.info("refused a PROXY header from untrusted %s", self.address.client_ip if self.address else "?")
                self._refuse("proxy_header", "PROXY header not accepted from this address")
                return
            self._prefix = buf
            return
        self._prefix = b""
        self._phase = _Phase.SESSION
        self.session.client_data(buf)

    def _refuse(self, reason: str, text: str) -> None:
        self._phase = _Phase.REFUSED
        self.service.stats.refused(reason)
        if self.transport is not None:
            self.transport.write(r.bye(text, "UNAVAILABLE"))
            self.transport.loseConnection()

    def _start_session(self) -> None:
        svc = self.service
        assert self.address is not None
        ip = self.address.client_ip
        why = svc.limiter.admit(ip)
        if why is not None:
            self._refuse(why, "Too many connections, try again later")
            return
        self._admitted_ip = ip
        session_id = secrets.token_hex(6)
        settings = svc.session_settings(ip, self.implicit_tls)
        if svc.config.upstream.forward_client_ip == "id":
            a = self.address
            address = ClientAddress(a.client_ip, a.client_port, a.server_ip, a.server_port, session_id)
            settings = dataclasses.replace(settings, client_address=address)
        self.session = Session(
            self,
            session_id=session_id,
            peer=f"{ip}:{self.address.client_port}",
            client_tls=self.implicit_tls,
            settings=settings,
            extensions=svc.extensions,
            credentials=svc.credentials,
            events=svc.session_events,
            client_ip=ip,
            penalty=svc.penalty,
        )
        self._has_session = True
        if self._phase is _Phase.PROXY_HEADER:
            self._phase = _Phase.SESSION  # the header came from a trusted peer: no prefix check
        svc.sessions.add(self.session)
        svc.stats.opened()
        if svc.greeting_capabilities is not None:
            self.session.greet(svc.greeting_capabilities)
        else:
            self.open_upstream()  # the first connection learns upstream's capabilities

    # -- upstream -----------------------------------------------------------------
    def open_upstream(self) -> None:
        if self._upstream_opened:
            return
        self._upstream_opened = True
        up = self.service.config.upstream
        _reactor().connectTCP(up.host, up.port, _UpstreamFactory(self), timeout=up.connect_timeout)

    def upstream_made(self, upstream: UpstreamProtocol) -> None:
        self.upstream = upstream
        assert upstream.transport is not None and self.transport is not None
        tx.tune(upstream.transport)
        # Back-pressure both ways: a slow reader pauses the other side's reads.
        self.transport.registerProducer(upstream.transport, True)  # type: ignore[attr-defined]
        upstream.transport.registerProducer(self.transport, True)  # type: ignore[attr-defined]
        if self.session.closed:
            upstream.transport.loseConnection()
            return
        if self.service.config.upstream.forward_client_ip == "proxy-v2" and self.address is not None:
            a = self.address
            tx.write(
                upstream.transport, proxyproto.build_header(a.client_ip, a.client_port, a.server_ip, a.server_port)
            )
        for data in self._pending_upstream:
            tx.write(upstream.transport, data)
        self._pending_upstream.clear()
        self.upstream_out.attach(upstream.transport)
        self.session.upstream_connected()

    def upstream_lost(self, reason: Failure) -> None:
        self._upstream_lost = True
        if self.transport is not None:
            tx.unregister_producer(self.transport)
        if not self.session.closed:
            if not self.session.upstream_ready:
                self.session.upstream_failed(reason.getErrorMessage())
            else:
                self.session.upstream_closed()
        self._finish()

    # -- SessionIO -------------------------------------------------------------------
    def to_client(self, data: bytes) -> None:
        if self.transport is not None:
            self.client_out.write(data)

    def to_upstream(self, data: bytes) -> None:
        out = self.upstream_out
        if out.transport is not None:
            out.write(data)
        else:
            self._pending_upstream.append(data)

    def start_client_tls(self) -> None:
        self.client_out.send_now()  # the OK that announces TLS goes first, in clear text
        self.transport.startTLS(self.service.server_tls)  # type: ignore[union-attr]
        tx.gather_tls_reads(tx.tls_layer(self.transport), self.upstream_out)

    def start_upstream_tls(self) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream_out.send_now()
        up = self.service.config.upstream
        name = up.server_name or up.host
        tls = UpstreamTLS(
            self.upstream.transport,
            self.upstream,
            self.service.upstream_tls,
            name,
            (up.host, up.port, name),
            self.client_out,
        )
        self.upstream_out.attach(tls)

    def pause_client(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_client(self) -> None:
        if self.transport is not None and self.transport.connected:  # type: ignore[attr-defined]
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def close(self) -> None:
        # A registered producer makes loseConnection wait for it: unhook first.
        up = self.upstream.transport if self.upstream is not None else None
        self.client_out.send_now()
        self.upstream_out.send_now()
        if self.transport is not None:
            tx.unregister_producer(self.transport)
            self.transport.loseConnection()
        if up is not None:
            tx.unregister_producer(up)
            up.loseConnection()
        # A peer that stops reading must not keep the session alive forever.
        self._abort_timer = _reactor().callLater(10, self._abort)

    def _abort(self) -> None:
        for t in (self.transport, self.upstream.transport if self.upstream is not None else None):
            if t is not None and getattr(t, "connected", False):
                t.abortConnection()  # type: ignore[attr-defined]

    # -- timers and end --------------------------------------------------------------
    def _arm_timer(self, delay: float | None = None) -> None:
        if delay is None:
            delay = self.service.config.session.preauth_timeout
        self._timer = _reactor().callLater(delay, self._check_idle)

    def _check_idle(self) -> None:
        limits = self.service.config.session
        now = time.monotonic()
        if not self._has_session:
            if self._phase is not _Phase.REFUSED:
                self.service.stats.timed_out("preauth")
                self._refuse("timeout", "Login timeout")
            return
        s = self.session
        if s.closed:
            return
        if not s.authenticated:
            # Measured from connect: traffic does not extend it (slowloris).
            left = limits.preauth_timeout - (now - self.started)
            if left > 0:
                self._arm_timer(max(0.5, left))
                return
            self.service.stats.timed_out("preauth")
            log.info("session %s: no login within %.0f s of connecting", s.session_id, limits.preauth_timeout)
            s.timeout("Login timeout")
            return
        quiet = now - s.last_client_activity
        if s.in_idle or quiet < limits.autologout:
            self._arm_timer(max(1.0, limits.autologout - quiet) if not s.in_idle else limits.autologout)
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
        self.service.sessions.discard(s)
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
