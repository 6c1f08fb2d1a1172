"""SSRF guard for Web Push endpoints.

A WEBPUSH subscription makes the proxy POST to a URL chosen by an IMAP client,
so every endpoint is checked before use: https only, no userinfo, and every
address its host resolves to must be publicly routable.  The addresses checked
are then *pinned*: :class:`PinnedResolver` is the aiohttp resolver of the
sender's session and hands the connector only addresses that passed the check
(and checks them again at connect time), so a DNS answer that changes between
the check and the connection (DNS rebinding) cannot reach a private address.

aiohttp never calls the resolver for IP-literal hosts; those cannot be rebound,
and :func:`resolve_endpoint` has already judged the literal itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Not publicly routable, or routable only to something we must not reach.
_FORBIDDEN_V4: tuple[ipaddress.IPv4Network, ...] = (
    _V4("0.0.0.0/8"),  # "this network", includes the unspecified address
    _V4("10.0.0.0/8"),  # RFC 1918
    _V4("100.64.0.0/10"),  # CGNAT (RFC 6598)
    _V4("127.0.0.0/8"),  # loopback
    _V4("169.254.0.0/16"),  # link-local, cloud metadata services
    _V4("172.16.0.0/12"),  # RFC 1918
    _V4("192.0.0.0/24"),  # IETF protocol assignments
    _V4("192.0.2.0/24"),  # TEST-NET-1
    _V4("192.88.99.0/24"),  # deprecated 6to4 relay anycast
    _V4("192.168.0.0/16"),  # RFC 1918
    _V4("198.18.0.0/15"),  # benchmarking
    _V4("198.51.100.0/24"),  # TEST-NET-2
    _V4("203.0.113.0/24"),  # TEST-NET-3
    _V4("224.0.0.0/4"),  # multicast
    _V4("240.0.0.0/4"),  # reserved, includes 255.255.255.255 (broadcast)
)

_FORBIDDEN_V6: tuple[ipaddress.IPv6Network, ...] = (
    _V6("::/128"),  # unspecified
    _V6("::1/128"),  # loopback
    _V6("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215): site-specific embedding
    _V6("100::/64"),  # discard-only
    _V6("2001::/23"),  # IETF protocol assignments, includes Teredo (2001::/32)
    _V6("2001:db8::/32"),  # documentation
    _V6("fc00::/7"),  # unique local
    _V6("fe80::/10"),  # link-local
    _V6("fec0::/10"),  # deprecated site-local
    _V6("ff00::/8"),  # multicast
)
_GLOBAL_UNICAST_V6 = _V6("2000::/3")
_MAPPED_V6 = _V6("::ffff:0:0/96")  # IPv4-mapped
_COMPATIBLE_V6 = _V6("::/96")  # deprecated IPv4-compatible
_NAT64_V6 = _V6("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\.?$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.?$"
)
_MAX_URL_LENGTH = 2048
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64), if any."""
    if addr in _MAPPED_V6:
        return addr.ipv4_mapped
    if addr in _NAT64_V6 or (addr in _COMPATIBLE_V6 and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    return None


def is_forbidden_address(ip: str | IPAddress) -> bool:
    """True when a push request must not go to ``ip``.

    Refuses loopback, private (RFC 1918, fc00::/7), link-local, CGNAT,
    multicast, unspecified, broadcast and reserved addresses, and IPv6 forms
    that embed an IPv4 address (mapped, compatible, 6to4, NAT64) judged by the
    embedded address.  Unparseable input is forbidden.
    """
    if isinstance(ip, str):
        try:
            # A zone index ("fe80::1%eth0") never belongs to a public address.
            addr: IPAddress = ipaddress.ip_address(ip)
        except ValueError:
            return True
    else:
        addr = ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return True
        embedded = _embedded_ipv4(addr)
        if embedded is not None:
            return is_forbidden_address(embedded)
        if addr not in _GLOBAL_UNICAST_V6 or any(addr in net for net in _FORBIDDEN_V6):
            return True
    elif any(addr in net for net in _FORBIDDEN_V4):
        return True
    # Whatever else the standard library knows to be non-global (new registry entries).
    return not addr.is_global


class EndpointRefused(Exception):
    """A push endpoint that must not be used; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectRefused(OSError):
    """Raised by :class:`PinnedResolver` at connect time (aiohttp wraps it in ClientConnectorDNSError)."""


@dataclass(frozen=True, slots=True)
class ResolvedEndpoint:
    url: yarl.URL  # the parsed URL: pass this object to aiohttp so both parse alike
    host: str  # as aiohttp will look it up (lower case, IDNA-encoded)
    port: int
    addresses: tuple[str, ...]  # every address the host resolved to, all acceptable


GetAddrInfo = Callable[..., Awaitable[list[tuple[Any, ...]]]]


def parse_endpoint(url: str, allow_private: bool) -> yarl.URL:
    """Syntax checks of an endpoint URL; raises :class:`EndpointRefused`."""
    if not isinstance(url, str) or not url or len(url) > _MAX_URL_LENGTH:
        raise EndpointRefused("malformed endpoint URL")
    if _CONTROL_OR_SPACE.search(url):
        raise EndpointRefused("malformed endpoint URL")
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError):
        raise EndpointRefused("malformed endpoint URL") from None
    if parsed.scheme not in ("https", "http"):
        raise EndpointRefused("endpoint must be an https URL")
    if parsed.scheme == "http" and not allow_private:
        raise EndpointRefused("endpoint must be an https URL")
    if not parsed.is_absolute() or not parsed.raw_host:
        raise EndpointRefused("malformed endpoint URL")
    if parsed.raw_user is not None or parsed.raw_password is not None or "@" in (parsed.raw_authority or ""):
        raise EndpointRefused("endpoint URL must not contain credentials")
    try:
        port = parsed.port
    except ValueError:
        raise EndpointRefused("malformed endpoint URL") from None
    if port is None or not 0 < port < 65536:
        raise EndpointRefused("malformed endpoint URL")
    host = parsed.raw_host
    if not _is_ip_literal(host) and not _HOSTNAME_RE.match(host):
        raise EndpointRefused("malformed endpoint host")
    return parsed


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def lookup(
    host: str,
    port: int,
    timeout: float,
    getaddrinfo: GetAddrInfo | None = None,
) -> tuple[str, ...]:
    """Resolve ``host`` without blocking the loop; raises :class:`EndpointRefused` on failure."""
    gai = getaddrinfo or asyncio.get_running_loop().getaddrinfo
    try:
        async with asyncio.timeout(timeout):
            infos = await gai(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except TimeoutError:
        raise EndpointRefused("endpoint host lookup timed out") from None
    except (OSError, UnicodeError):
        raise EndpointRefused("endpoint host does not resolve") from None
    addresses: list[str] = []
    for family, *_rest, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        addr = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
            addr = f"{addr}%{sockaddr[3]}" if "%" not in addr else addr
        if addr not in addresses:
            addresses.append(addr)
    if not addresses:
        raise EndpointRefused("endpoint host does not resolve")
    return tuple(addresses)


def check_addresses(addresses: tuple[str, ...], allow_private: bool) -> None:
    if allow_private:
        return
    if any(is_forbidden_address(a) for a in addresses):
        # Any bad address refuses the whole host: the connector could pick any of them.
        raise EndpointRefused("endpoint resolves to a private, loopback or link-local address")


async def resolve_endpoint(
    url: str,
    allow_private: bool,
    timeout: float,
    *,
    getaddrinfo: GetAddrInfo | None = None,
) -> ResolvedEndpoint:
    """Parse, resolve and judge a push endpoint; raises :class:`EndpointRefused`.

    ``http`` URLs and private addresses are accepted only with
    ``allow_private`` (a test hook: the local stand-in push service).
    """
    parsed = parse_endpoint(url, allow_private)
    host = parsed.raw_host
    port = parsed.port
    assert host is not None and port is not None  # checked by parse_endpoint
    addresses = await lookup(host, port, timeout, getaddrinfo)
    check_addresses(addresses, allow_private)
    return ResolvedEndpoint(url=parsed, host=host, port=port, addresses=addresses)


class PinnedResolver(AbstractResolver):
    """aiohttp resolver that only ever returns addresses checked by the SSRF guard.

    :meth:`resolve_endpoint` checks an endpoint and pins its host to the
    checked addresses for ``pin_ttl`` seconds.  When the connector later asks
    for that host it gets the pinned addresses (judged again); a host that is
    not pinned is looked up and judged on the spot.  It never returns an
    address the guard refuses, so no later DNS answer can redirect a request.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        timeout: float = 10.0,
        pin_ttl: float = 60.0,
        getaddrinfo: GetAddrInfo | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allow_private = allow_private
        self.timeout = timeout
        self.pin_ttl = pin_ttl
        self._getaddrinfo = getaddrinfo
        self._clock = clock
        self._pins: dict[str, tuple[tuple[str, ...], float]] = {}

    async def resolve_endpoint(self, url: str) -> ResolvedEndpoint:
        """Like :func:`resolve_endpoint`, reusing a fresh pin for the host."""
        parsed = parse_endpoint(url, self.allow_private)
        host = parsed.raw_host
        port = parsed.port
        assert host is not None and port is not None
        addresses = self._pinned(host)
        if addresses is None:
            addresses = await lookup(host, port, self.timeout, self._getaddrinfo)
            check_addresses(addresses, self.allow_private)
            self._pins[host] = (addresses, self._clock() + self.pin_ttl)
        return ResolvedEndpoint(url=parsed, host=host, port=port, addresses=addresses)

    def _pinned(self, host: str) -> tuple[str, ...] | None:
        pin = self._pins.get(host)
        if pin is None:
            return None
        if pin[1] <= self._clock():
            del self._pins[host]
            return None
        return pin[0]

    def forget(self, host: str) -> None:
        self._pins.pop(host, None)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._pinned(host)
        try:
            if addresses is None:
                addresses = await lookup(host, port, self.timeout, self._getaddrinfo)
            # Connect-time check: even a pinned answer is judged again.
            check_addresses(addresses, self.allow_private)
        except EndpointRefused as exc:
            # aiohttp turns OSError from the resolver into ClientConnectorError.
            raise ConnectRefused(f"push endpoint refused: {exc.reason}") from None
        results: list[ResolveResult] = []
        for addr in addresses:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            if family not in (socket.AF_UNSPEC, fam):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=addr,
                    port=port,
                    family=fam,
                    proto=0,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise OSError(f"no usable address for push endpoint host (family {family!r})")
        return results

    async def close(self) -> None:
        self._pins.clear()
