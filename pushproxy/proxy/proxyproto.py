"""HAProxy PROXY protocol version 2, sans-IO: build a header, parse one, and who may send one.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt section 2.2.
Only the binary v2 form is spoken.  A parsed header yields the client's address
as the load balancer saw it; a ``LOCAL`` header (health checks) yields none.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_HEADER = struct.Struct("!12sBBH")
_MAX_PAYLOAD = 4096  # addresses plus TLVs; real headers are far smaller
_CMD_LOCAL, _CMD_PROXY = 0x20, 0x21
_TCP4, _TCP6 = 0x11, 0x21


class ProxyHeaderError(ValueError):
    """Not a valid PROXY v2 header; the message is fit for a log line."""


@dataclass(frozen=True, slots=True)
class ProxiedAddress:
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int


def build_header(client_ip: str, client_port: int, server_ip: str, server_port: int) -> bytes:
    """A PROXY v2 header for a TCP connection from ``client`` to ``server``."""
    src = ipaddress.ip_address(client_ip)
    dst = ipaddress.ip_address(server_ip)
    if src.version != dst.version:
        # Mixed families: say both in IPv6 (IPv4-mapped), as HAProxy does.
        src, dst = _as_v6(src), _as_v6(dst)
    if src.version == 4:
        body = src.packed + dst.packed + struct.pack("!HH", client_port, server_port)
        family = _TCP4
    else:
        body = src.packed + dst.packed + struct.pack("!HH", client_port, server_port)
        family = _TCP6
    return _HEADER.pack(SIGNATURE, _CMD_PROXY, family, len(body)) + body


def _as_v6(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if addr.version == 6:
        return addr  # type: ignore[return-value]
    return ipaddress.IPv6Address("::ffff:" + str(addr))


def could_be_header(prefix: bytes) -> bool:
    """True while ``prefix`` (the first bytes of a connection) may still be a PROXY v2 signature."""
    n = min(len(prefix), len(SIGNATURE))
    return prefix[:n] == SIGNATURE[:n]


def parse_header(buf: bytes) -> tuple[ProxiedAddress | None, int] | None:
    """``(address or None for LOCAL / unknown family, bytes consumed)``; None: need more bytes.

    Raises :class:`ProxyHeaderError` when ``buf`` does not start with a valid header.
    """
    if len(buf) < _HEADER.size:
        if not could_be_header(buf):
            raise ProxyHeaderError("no PROXY v2 signature")
        return None
    sig, ver_cmd, family, length = _HEADER.unpack_from(buf)
    if sig != SIGNATURE:
        raise ProxyHeaderError("no PROXY v2 signature")
    if ver_cmd not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyHeaderError(f"unsupported PROXY version/command 0x{ver_cmd:02x}")
    if length > _MAX_PAYLOAD:
        raise ProxyHeaderError("PROXY header too long")
    end = _HEADER.size + length
    if len(buf) < end:
        return None
    body = buf[_HEADER.size : end]
    if ver_cmd == _CMD_LOCAL:
        return None, end
    if family == _TCP4:
        if length < 12:
            raise ProxyHeaderError("PROXY header too short for TCP over IPv4")
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack_from("!HH", body, 8)
    elif family == _TCP6:
        if length < 36:
            raise ProxyHeaderError("PROXY header too short for TCP over IPv6")
        src6, dst6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack_from("!HH", body, 32)
        src = src6.ipv4_mapped or src6  # type: ignore[assignment]
        dst = dst6.ipv4_mapped or dst6  # type: ignore[assignment]
    else:
        return None, end  # UNSPEC / UDP / unix: keep the connection's own address
    return ProxiedAddress(str(src), sport, str(dst), dport), end


def in_networks(ip: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether ``ip`` (IPv4-mapped IPv6 counts as IPv4) is in one of ``networks``: may it send a header?"""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:  # type: ignore[union-attr]
        addr = addr.ipv4_mapped  # type: ignore[union-attr]
    return any(addr in net for net in networks)
