"""SSRF guard: forbidden addresses, endpoint URL checks, DNS pinning against rebinding."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pushproxy.extensions.webpush.ssrf import (
    ConnectRefused,
    EndpointRefused,
    PinnedResolver,
    is_forbidden_address,
    resolve_endpoint,
)

FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.5.4",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "::",
    "::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::1",  # local-use NAT64
    "2001:db8::1",
    "2001::1",  # Teredo
    "100::1",
    "fec0::1",
    "not an address",
    "",
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "142.250.185.74",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.32.0.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:82b::200a",
    "::ffff:8.8.8.8",  # a mapped public address is that public address
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("ip", FORBIDDEN)
def test_forbidden_addresses(ip: str) -> None:
    assert is_forbidden_address(ip)


@pytest.mark.parametrize("ip", ALLOWED)
def test_public_addresses_allowed(ip: str) -> None:
    assert not is_forbidden_address(ip)
    assert not is_forbidden_address(ipaddress.ip_address(ip))


@given(st.ip_addresses(v=4))
def test_ipv4_mapped_form_is_judged_like_the_address(v4: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address("::ffff:" + str(v4))
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(v4))
    assert is_forbidden_address(mapped) == is_forbidden_address(v4)
    assert is_forbidden_address(nat64) == is_forbidden_address(v4)


@given(st.ip_addresses())
def test_anything_python_calls_non_global_is_forbidden(addr) -> None:
    if not addr.is_global and not (isinstance(addr, ipaddress.IPv6Address) and (addr.ipv4_mapped or addr.sixtofour)):
        assert is_forbidden_address(addr)


def fake_getaddrinfo(mapping: dict[str, list[str]], calls: list[str] | None = None):
    async def gai(host, port, *, type=0, proto=0, family=0, flags=0):
        if calls is not None:
            calls.append(host)
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out: list[tuple] = []
        for addr in mapping[host]:
            if ":" in addr:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)))
        return out

    return gai


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/push",
        "https://10.0.0.1/push",
        "https://[::ffff:127.0.0.1]/push",
        "https://[::1]/push",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/push",
        "https://[fc00::1]/push",
        "https://[fe80::1]/push",
        "https://0.0.0.0/push",
    ],
)
async def test_ip_literal_endpoints_refused(url: str) -> None:
    with pytest.raises(EndpointRefused) as exc:
        await resolve_endpoint(url, allow_private=False, timeout=2)
    assert "private" in exc.value.reason


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://push.example.com/x", "https"),
        ("ftp://push.example.com/x", "https"),
        ("https://user:pw@push.example.com/x", "credentials"),
        ("https://user@push.example.com/x", "credentials"),
        ("https:///x", "malformed"),
        ("push.example.com/x", "https"),
        ("https://push.example.com:0/x", "malformed"),
        ("https://push.exa mple.com/x", "malformed"),
        ("https://push.example.com/x\r\nHost: evil", "malformed"),
        ("https://push%2eexample.com/x", "malformed"),
        ("", "malformed"),
        ("https://" + "a" * 3000 + ".com/", "malformed"),
    ],
)
async def test_malformed_or_non_https_urls_refused(url: str, reason: str) -> None:
    gai = fake_getaddrinfo({"push.example.com": ["8.8.8.8"]})
    with pytest.raises(EndpointRefused) as exc:
        await resolve_endpoint(url, allow_private=False, timeout=2, getaddrinfo=gai)
    assert reason in exc.value.reason


async def test_hostname_resolving_to_any_private_address_refused() -> None:
    gai = fake_getaddrinfo(
        {
            "good.example": ["8.8.8.8", "2606:4700:4700::1111"],
            "mixed.example": ["8.8.8.8", "10.0.0.1"],
            "meta.example": ["169.254.169.254"],
            "v6.example": ["::1"],
        }
    )
    ok = await resolve_endpoint("https://good.example/push/abc", allow_private=False, timeout=2, getaddrinfo=gai)
    assert ok.host == "good.example" and ok.port == 443
    assert ok.addresses == ("8.8.8.8", "2606:4700:4700::1111")
    for host in ("mixed.example", "meta.example", "v6.example"):
        with pytest.raises(EndpointRefused):
            await resolve_endpoint(f"https://{host}/p", allow_private=False, timeout=2, getaddrinfo=gai)
    with pytest.raises(EndpointRefused) as exc:
        await resolve_endpoint("https://nowhere.example/p", allow_private=False, timeout=2, getaddrinfo=gai)
    assert "resolve" in exc.value.reason


async def test_real_localhost_is_refused_but_allowed_with_allow_private() -> None:
    with pytest.raises(EndpointRefused):
        await resolve_endpoint("https://localhost:8443/push", allow_private=False, timeout=5)
    with pytest.raises(EndpointRefused):
        await resolve_endpoint("http://127.0.0.1:8080/push", allow_private=False, timeout=5)
    ok = await resolve_endpoint("http://127.0.0.1:8080/push", allow_private=True, timeout=5)
    assert ok.addresses == ("127.0.0.1",)


async def test_lookup_timeout_refuses() -> None:
    import asyncio

    async def slow(*args, **kwargs):
        await asyncio.sleep(10)

    with pytest.raises(EndpointRefused) as exc:
        await resolve_endpoint("https://slow.example/", allow_private=False, timeout=0.05, getaddrinfo=slow)
    assert "timed out" in exc.value.reason


async def test_pinned_resolver_defeats_dns_rebinding() -> None:
    """The check sees a public address; the connect-time lookup would see 127.0.0.1."""
    answers = {"rebind.example": ["8.8.8.8"]}
    calls: list[str] = []
    resolver = PinnedResolver(getaddrinfo=fake_getaddrinfo(answers, calls), pin_ttl=60)
    endpoint = await resolver.resolve_endpoint("https://rebind.example/push/1")
    assert endpoint.addresses == ("8.8.8.8",)
    answers["rebind.example"] = ["127.0.0.1"]  # the attacker's DNS changes its answer
    results = await resolver.resolve("rebind.example", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["8.8.8.8"]
    assert results[0]["port"] == 443
    assert calls == ["rebind.example"]  # no second lookup while pinned

    # Once the pin expires, the fresh answer is judged (and refused) at connect time.
    resolver.forget("rebind.example")
    with pytest.raises(ConnectRefused):
        await resolver.resolve("rebind.example", 443, socket.AF_UNSPEC)
    with pytest.raises(EndpointRefused):
        await resolver.resolve_endpoint("https://rebind.example/push/1")


async def test_pinned_resolver_pin_expires() -> None:
    now = [1000.0]
    answers = {"h.example": ["8.8.8.8"]}
    calls: list[str] = []
    resolver = PinnedResolver(getaddrinfo=fake_getaddrinfo(answers, calls), pin_ttl=30, clock=lambda: now[0])
    await resolver.resolve_endpoint("https://h.example/")
    await resolver.resolve_endpoint("https://h.example/")
    assert len(calls) == 1
    now[0] += 31
    answers["h.example"] = ["10.1.2.3"]
    with pytest.raises(EndpointRefused):
        await resolver.resolve_endpoint("https://h.example/")


async def test_pinned_resolver_filters_by_family() -> None:
    resolver = PinnedResolver(getaddrinfo=fake_getaddrinfo({"d.example": ["8.8.8.8", "2606:4700:4700::1111"]}))
    await resolver.resolve_endpoint("https://d.example/")
    v4 = await resolver.resolve("d.example", 443, socket.AF_INET)
    assert [r["host"] for r in v4] == ["8.8.8.8"]
    both = await resolver.resolve("d.example", 443, socket.AF_UNSPEC)
    assert {r["family"] for r in both} == {socket.AF_INET, socket.AF_INET6}
