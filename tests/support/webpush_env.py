"""In-process WEBPUSH test environment: real SqliteStore, VapidKeyring, WebPushSender, PushStandin.

Used by the unit tests of the WEBPUSH handlers and of the delivery; nothing is
faked but the client session (:class:`FakeContext`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pushproxy.config import Config
from pushproxy.extensions.base import Reply, UpstreamCommandError
from pushproxy.extensions.webpush.addon import WebPush
from pushproxy.extensions.webpush.commands import WebPushCommands
from pushproxy.extensions.webpush.delivery import WebPushDelivery
from pushproxy.extensions.webpush.process import WebPushProcess
from pushproxy.extensions.webpush.sender import WebPushSender
from pushproxy.extensions.webpush.settings import WebPushConfig
from pushproxy.extensions.webpush.store import WebPushQueries, WebPushSubscription
from pushproxy.extensions.webpush.vapid import VapidKeyring
from pushproxy.imap.parse import Command, StatusResponse, parse_command
from pushproxy.store import SqliteStore, Vault
from tests.support.push_standin import PushStandin, StandinSubscription
from tests.support.waiting import async_wait_for


class FakeContext:
    """A client session as the handlers see it."""

    def __init__(self, account: str | None = "alice", session_id: str = "sess-1") -> None:
        self.session_id = session_id
        self.account = account
        self.login = account
        self.upstream_capabilities: frozenset[str] = frozenset()
        self.untagged: list[bytes] = []

    def reply_untagged(self, payload: bytes) -> None:
        self.untagged.append(payload)

    def take(self) -> list[bytes]:
        lines, self.untagged = self.untagged, []
        return lines

    async def upstream_command(self, command: bytes, timeout: float = 30.0) -> tuple[list[bytes], StatusResponse]:
        raise UpstreamCommandError("not in this test")


class Clock:
    """A settable wall clock (unix time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class WebPushEnv:
    config: Config
    store: SqliteStore
    keyring: VapidKeyring
    sender: WebPushSender
    standin: PushStandin
    ext: WebPush
    delivery: WebPushDelivery
    clock: Clock
    registrations: list[tuple[str, str | None]] = field(default_factory=list)

    async def run(self, line: str | bytes, ctx: FakeContext) -> tuple[Reply, list[bytes]]:
        """Parse ``line`` as the session would, call the handler; (reply, untagged lines)."""
        raw = line.encode() if isinstance(line, str) else line
        return await self.run_command(parse_command(b"t1 " + raw + b"\r\n"), ctx)

    async def run_command(self, cmd: Command, ctx: FakeContext) -> tuple[Reply, list[bytes]]:
        reply = await self.ext.commands[cmd.name](cmd, ctx)
        return reply, ctx.take()

    async def subscribe(
        self, ctx: FakeContext, sub_id: str, ss: StandinSubscription, *, wait: bool = True
    ) -> tuple[Reply, list[bytes]]:
        before = len(self.standin.records_for(ss, accepted_only=True))
        result = await self.run(f'WEBPUSH {sub_id} "{ss.endpoint}" {ss.p256dh} {ss.auth}', ctx)
        if wait and result[0].status == "OK":
            await self.standin.wait_for(ss, before + 1)
        return result

    def last_token(self, ss: StandinSubscription) -> str:
        records = self.standin.records_for(ss)
        assert records and records[-1].plaintext is not None, "no verification push received"
        text = records[-1].plaintext.decode()
        assert text.startswith("* ACKWEBPUSH ") and text.endswith("\r\n"), text
        return text[len("* ACKWEBPUSH ") : -2]

    async def activate(self, ctx: FakeContext, sub_id: str, ss: StandinSubscription) -> WebPushSubscription:
        reply, _ = await self.subscribe(ctx, sub_id, ss)
        assert reply.status == "OK", reply
        reply, _ = await self.run(f"ACKWEBPUSH {self.last_token(ss)}", ctx)
        assert reply.status == "OK", reply
        assert ctx.account is not None
        sub = await self.store.queries(WebPushQueries).get_subscription(ctx.account, sub_id)
        assert sub is not None and sub.active
        return sub

    async def settle(self) -> None:
        """Wait for the extension's background work (verification pushes, gauge) to finish."""
        background = self.ext.handlers._background
        await async_wait_for(lambda: all(t.done() for t in background), 5.0, "the background work", 0.01)


def sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


async def make_env(tmp_path: Path, standin: PushStandin, **webpush: Any) -> WebPushEnv:
    settings: dict[str, Any] = {
        "enabled": True,
        "allow_private_endpoints": True,
        "subject": "mailto:ops@example.org",
        "timeout": 5.0,
        "retry_budget": 2,
    }
    settings.update(webpush)
    config = Config(webpush=WebPushConfig(**settings))
    store = SqliteStore(tmp_path / "pp.db", Vault.generate())
    await store.open()
    keyring = await VapidKeyring.load(tmp_path / "vapid.pem", store.queries(WebPushQueries))
    sender = WebPushSender(config.webpush, keyring, backoff_base=0.01, backoff_max=0.05)
    await sender.start()
    registrations: list[tuple[str, str | None]] = []

    async def registration_changed(account: str, session_id: str | None) -> None:
        registrations.append((account, session_id))

    clock = Clock()
    process = WebPushProcess()  # shared by the handlers and the delivery, as the extension's start does
    ext = WebPush()  # the extension itself, its commands answered by handlers built here (not by start)
    ext.configure(config)
    handlers = WebPushCommands(config, store, keyring, sender, registration_changed, process)
    handlers.clock = clock
    ext.answer_with(handlers)
    delivery = WebPushDelivery(config, store, sender, process, clock=clock)
    return WebPushEnv(config, store, keyring, sender, standin, ext, delivery, clock, registrations)


async def close_env(env: WebPushEnv) -> None:
    await env.ext.stop()  # the handlers' maintenance and verification pushes (it built no sender)
    await env.sender.close()
    await env.store.close()


def metric_value(name: str, labels: dict[str, str]) -> float:
    from pushproxy.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


Predicate = Callable[[], bool]


async def eventually(pred: Predicate, timeout: float = 5.0, what: str = "condition") -> None:
    await async_wait_for(pred, timeout, what, 0.01)
