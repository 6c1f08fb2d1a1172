"""A Session driven directly: a fake IO (no sockets), a credential sink, a test extension (XECHO)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pushproxy.extensions.base import Extension, Reply, SessionContext
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.imap.parse import Command
from pushproxy.proxy.session import Session, SessionSettings


class FakeIO:
    def __init__(self) -> None:
        self.client = bytearray()
        self.upstream = bytearray()
        self.tls_started = False
        self.closed = False
        self.paused = False
        self.upstream_opened = False

    def to_client(self, data: bytes) -> None:
        self.client += data

    def to_upstream(self, data: bytes) -> None:
        self.upstream += data

    def start_client_tls(self) -> None:
        self.tls_started = True

    def start_upstream_tls(self) -> None:
        pass

    def pause_client(self) -> None:
        self.paused = True

    def resume_client(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def open_upstream(self) -> None:
        self.upstream_opened = True


class Sink:
    def __init__(self) -> None:
        self.logins: list[tuple[str, str, str]] = []

    async def logged_in(self, account: str, login: str, secret: str, session_id: str) -> None:
        self.logins.append((account, login, secret))

    async def session_closed(self, session_id: str) -> None:
        pass


class Echo(Extension):
    def __init__(self) -> None:
        super().__init__(name="echo", capabilities=(b"XECHO",), commands={"XECHO": self.handle})
        self.seen: list[Command] = []

    async def handle(self, cmd: Command, ctx: SessionContext) -> Reply:
        self.seen.append(cmd)
        await asyncio.sleep(0.01)
        ctx.reply_untagged(b"XECHO " + b" ".join(a if isinstance(a, bytes) else str(a).encode() for a in cmd.args))
        return Reply("OK", "XECHO done")


def new_session(
    io: FakeIO | None = None,
    extensions: Iterable[Extension] = (),
    *,
    client_tls: bool = False,
    credentials: Sink | None = None,
    settings: SessionSettings | None = None,
    session_id: str = "t",
    **session: Any,
) -> Session:
    """A Session on a fake IO, before the upstream greeting; ``session``: more Session arguments."""
    return Session(
        io if io is not None else FakeIO(),
        session_id="t",
        peer="test",
        client_tls=client_tls,
        settings=settings if settings is not None else SessionSettings(),
        extensions=ExtensionManager(list(extensions)),
        credentials=credentials if credentials is not None else Sink(),
        **session,
    )


def make(**settings: Any) -> tuple[Session, FakeIO, Sink, Echo]:
    """A session greeted by upstream (no TLS), with the XECHO extension."""
    io, sink, ext = FakeIO(), Sink(), Echo()
    s = new_session(io, [ext], credentials=sink, settings=SessionSettings(**settings))
    s.upstream_data(b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN AUTH=CRAM-MD5 COMPRESS=DEFLATE STARTTLS] hi\r\n")
    return s, io, sink, ext


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.02)
