"""Helpers of the WEBPUSH integration tests: a raw IMAP client, the proxy with WEBPUSH on, subscriptions
acknowledged through the Web Push stand-in, waits on what the proxy and the stand-in show."""

from __future__ import annotations

import imaplib
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.dovecot import Dovecot, make_message
from tests.support.proxy import ProxyProcess
from tests.support.push_standin import PushStandin, ReceivedPush, StandinSubscription
from tests.support.waiting import wait_for

ProxyFactory = Callable[..., ProxyProcess]
LIVE = ("connecting", "idle", "polling", "backoff")  # watcher states of a running watcher
WATCH = {"poll_interval": 0.5, "backoff_min": 0.1, "backoff_max": 1.0, "command_timeout": 5.0}


class RawImap:
    """A minimal IMAP client over a socket: tagged commands, whole untagged responses (literals inline)."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.n = 0
        self.greeting = self._response()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def _response(self) -> bytes:
        """One response, with literals inline."""
        data = self._line()
        while (m := re.search(rb"\{(\d+)\}\r\n$", data)) is not None:
            size = int(m.group(1))
            while len(self.buf) < size:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed inside a literal")
                self.buf += chunk
            data += self.buf[:size]
            self.buf = self.buf[size:]
            data += self._line()
        return data

    def command(self, text: str | bytes) -> tuple[list[bytes], bytes]:
        """(untagged responses without '* ' and CRLF, the tagged line without tag and CRLF)."""
        self.n += 1
        tag = b"c%d" % self.n
        raw = text.encode() if isinstance(text, str) else text
        self.sock.sendall(tag + b" " + raw + b"\r\n")
        untagged: list[bytes] = []
        while True:
            resp = self._response()
            if resp.startswith(tag + b" "):
                return untagged, resp[len(tag) + 1 : -2]
            assert resp.startswith(b"* "), resp
            untagged.append(resp[2:-2])

    def ok(self, text: str | bytes) -> list[bytes]:
        untagged, status = self.command(text)
        assert status.startswith(b"OK"), (text, status)
        return untagged

    def login(self, user: str = "alice", password: str = "alicepw") -> None:
        self.ok(f"LOGIN {user} {password}")

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (OSError, ConnectionError, AssertionError):
            pass
        self.sock.close()


@pytest.fixture
def standin() -> Iterator[PushStandin]:
    with PushStandin() as s:
        yield s


def start_proxy(proxy_factory: ProxyFactory, dovecot: Dovecot, **webpush: Any) -> ProxyProcess:
    settings: dict[str, Any] = {
        "enabled": True,
        "allow_private_endpoints": True,
        "subject": "mailto:ops@example.org",
        "timeout": 5.0,
        "retry_budget": 3,
    }
    settings.update(webpush)
    return proxy_factory(dovecot, webpush=settings, watch=WATCH)


def webpush_cmd(sub_id: str, ss: StandinSubscription) -> str:
    return f'WEBPUSH {sub_id} "{ss.endpoint}" {ss.p256dh} {ss.auth}'


def wait_until(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    wait_for(pred, timeout, what)


def wait_pushes(standin: PushStandin, ss: StandinSubscription, n: int, timeout: float = 15.0) -> list[ReceivedPush]:
    wait_until(lambda: len(standin.records_for(ss)) >= n, timeout, f"{n} push(es)")
    return standin.records_for(ss)


def ack_token(push: ReceivedPush) -> str:
    assert push.problems == [], push.problems
    assert push.plaintext is not None
    m = re.fullmatch(rb"\* ACKWEBPUSH ([A-Za-z0-9_-]+)\r\n", push.plaintext)
    assert m is not None, push.plaintext
    return m.group(1).decode()


def subscribe_and_ack(client: RawImap, standin: PushStandin, sub_id: str) -> StandinSubscription:
    ss = standin.new_subscription()
    client.ok(webpush_cmd(sub_id, ss))
    token = ack_token(wait_pushes(standin, ss, 1)[0])
    assert client.ok(f"ACKWEBPUSH {token}") == [f'WEBPUSH {sub_id} "{ss.endpoint}" 0'.encode()]
    return ss


def wait_watching(proxy: ProxyProcess) -> None:
    """Until the account's watcher waits for changes upstream (mail delivered from now on is new)."""
    proxy.wait_watching()


def dispatched(proxy: ProxyProcess) -> float:
    return proxy.metric("pushproxy_event_dispatch_latency_seconds_count")


def deliver_and_wait_dispatch(proxy: ProxyProcess, dovecot: Dovecot, subject: str) -> None:
    """Deliver a message and wait until the proxy has dispatched the event (pushes sent or not)."""
    before = dispatched(proxy)
    dovecot.deliver("alice", make_message(subject))
    wait_until(lambda: dispatched(proxy) > before, what=f"the event for {subject!r} to be dispatched")


def uid_of(dovecot: Dovecot, subject: str) -> int:
    m = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
    try:
        m.login("alice", "alicepw")
        m.select("INBOX", readonly=True)
        typ, data = m.uid("SEARCH", "SUBJECT", f'"{subject}"')
        assert typ == "OK" and data[0], data
        return int(data[0].split()[-1])
    finally:
        m.logout()


def subscribed_session(
    proxy_factory: ProxyFactory, dovecot: Dovecot, standin: PushStandin, sub_id: str = "phone", **webpush: Any
) -> tuple[ProxyProcess, RawImap, StandinSubscription]:
    """A proxy with WEBPUSH on, alice logged in with one acknowledged subscription, her watcher waiting."""
    proxy = start_proxy(proxy_factory, dovecot, **webpush)
    client = RawImap(proxy.port)
    client.login()
    ss = subscribe_and_ack(client, standin, sub_id)
    wait_watching(proxy)
    return proxy, client, ss
