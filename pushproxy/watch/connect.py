"""Opening a watcher's upstream connection: TCP (or TLS), greeting, STARTTLS, login.

The connection itself is :class:`~pushproxy.watch.upstream.WatcherProtocol`
(aioimaplib's protocol, extended); this module is the procedure around it:
:func:`open_connection` connects as ``upstream.security`` says and reads the
greeting, :func:`login` logs in with LOGIN or AUTHENTICATE PLAIN (master
users through the authorization identity), quoting the arguments correctly
(literals for 8-bit ones).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl

from pushproxy.config import UpstreamConfig
from pushproxy.imap.commands import astring
from pushproxy.imap.data import parse_capabilities
from pushproxy.watch.tlsbio import connect_tls
from pushproxy.watch.upstream import WatcherProtocol
from pushproxy.watch.upstream_types import (
    AuthenticationFailed,
    CommandFailed,
    CommandResult,
    LoginCredentials,
    TemporaryLoginFailure,
)

__all__ = ["login", "make_tls_context", "open_connection"]

# NO response codes (RFC 5530) that say "try again later", not "wrong credentials".
_TEMPORARY_CODES = frozenset({"UNAVAILABLE", "LIMIT", "INUSE", "SERVERBUG"})


def make_tls_context(upstream: UpstreamConfig) -> ssl.SSLContext:
    """The client TLS context for upstream connections (shared by all watchers)."""
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(upstream.ca_file) if upstream.ca_file else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not upstream.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _set_keepalive(transport: asyncio.BaseTransport) -> None:
    """TCP keepalive: a dead peer (NAT timeout, pulled cable) is noticed within minutes."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 120)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


async def open_connection(
    upstream: UpstreamConfig, tls_context: ssl.SSLContext | None, *, command_timeout: float
) -> WatcherProtocol:
    """Connect (TLS or STARTTLS as configured) and read the greeting; not yet logged in."""
    loop = asyncio.get_running_loop()
    server_name = upstream.server_name or upstream.host
    implicit_tls = upstream.security == "tls"
    if upstream.security != "none" and tls_context is None:
        tls_context = make_tls_context(upstream)
    async with asyncio.timeout(upstream.connect_timeout):
        if implicit_tls:
            assert tls_context is not None
            protocol = WatcherProtocol(command_timeout)
            transport: asyncio.BaseTransport = await connect_tls(
                protocol, upstream.host, upstream.port, tls_context, server_name
            )
        else:
            transport, protocol = await loop.create_connection(
                lambda: WatcherProtocol(command_timeout), upstream.host, upstream.port
            )
    _set_keepalive(transport)
    try:
        async with asyncio.timeout(upstream.connect_timeout):
            await protocol.wait_greeting()
            if upstream.security == "starttls":
                assert tls_context is not None
                await protocol.starttls(tls_context, server_name)
    except BaseException:
        protocol.abort()
        raise
    return protocol


async def login(conn: WatcherProtocol, creds: LoginCredentials) -> None:
    """LOGIN or AUTHENTICATE PLAIN on ``conn``; then learn the capabilities.

    Raises AuthenticationFailed for a refusal that retrying will not fix,
    TemporaryLoginFailure for NO [UNAVAILABLE] and friends.
    """
    if not conn.capabilities:
        await conn.refresh_capabilities()
    use_plain = creds.mechanism == "plain" or "LOGINDISABLED" in conn.capabilities
    if use_plain and "AUTH=PLAIN" not in conn.capabilities:
        raise TemporaryLoginFailure("upstream offers neither LOGIN nor AUTHENTICATE PLAIN here")
    try:
        if not use_plain:
            result = await conn.command(b"LOGIN ", astring(creds.login), b" ", astring(creds.secret))
        elif "SASL-IR" in conn.capabilities:
            result = await conn.command(b"AUTHENTICATE PLAIN ", _plain_response(creds))
        else:
            result = await conn.command(b"AUTHENTICATE PLAIN", response=_plain_response(creds))
    except CommandFailed as exc:  # NO/BAD before the continuation
        result = CommandResult([], exc.status)
    status = result.status
    if not result.ok:
        code = status.code or ""
        if status.kind == "NO" and code in _TEMPORARY_CODES:
            raise TemporaryLoginFailure(f"upstream login refused for now ({code})")
        # NO [AUTHENTICATIONFAILED], any other NO, or BAD: retrying the same
        # credentials would fail again (and count against the account's lockout).
        raise AuthenticationFailed(f"upstream refused the login ({status.kind} {code})".strip())
    caps = None
    for resp in [status, *result.untagged]:
        caps = parse_capabilities(resp) or caps
    conn.logged_in(caps)
    if caps is None:
        await conn.refresh_capabilities()


def _plain_response(creds: LoginCredentials) -> bytes:
    """SASL PLAIN (RFC 4616): authzid NUL authcid NUL password, base64."""
    authzid = (creds.authzid or "").encode("utf-8")
    return base64.b64encode(authzid + b"\0" + creds.login.encode("utf-8") + b"\0" + creds.secret.encode("utf-8"))
