"""A session's captured credentials outlive its close long enough for its registration to start the watcher.

The push extensions report a registration to the supervisor from a task of
their own, so a client that registers and logs out at once can have its
session closed before, or while, the registration is followed.  These tests
drive that order of events directly (no load needed): the upstream is the
in-process fake IMAP server of test_watch_watcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pushproxy.config import Config, StoreConfig, UpstreamConfig, WatchConfig
from pushproxy.store import SqliteStore, Vault
from pushproxy.watch import Supervisor
from pushproxy.watch.credentials import CredentialProvider, MemoryCredentials, VaultCredentials
from pushproxy.watch.spec import WatchSpec
from tests.unit.test_watch_watcher import Events, Fake, FakeConn, until

pytestmark = pytest.mark.timeout(30)

INBOX = WatchSpec.of(["INBOX"])


class Registrations:
    """What the extensions would say is registered; ``spec`` can be held at a gate mid-read."""

    def __init__(self) -> None:
        self.registered: dict[str, WatchSpec] = {}
        self.gate: asyncio.Event | None = None
        self.at_gate = asyncio.Event()

    async def spec(self, account: str) -> WatchSpec | None:
        if self.gate is not None:
            self.at_gate.set()
            await self.gate.wait()
        return self.registered.get(account)

    async def specs(self) -> dict[str, WatchSpec]:
        return dict(self.registered)


class Env:
    def __init__(self, sup: Supervisor, fake: Fake, regs: Registrations, provider: CredentialProvider) -> None:
        self.sup = sup
        self.fake = fake
        self.regs = regs
        self.provider = provider

    def login_lines(self) -> list[bytes]:
        return [c for c in self.fake.commands if b" LOGIN " in c.upper()]


@pytest.fixture(params=["memory", "vault"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    store = SqliteStore(tmp_path / "pp.db", Vault.generate())
    await store.open()
    fake = Fake()
    server = await asyncio.get_running_loop().create_server(lambda: FakeConn(fake), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = Config(
        upstream=UpstreamConfig(host="127.0.0.1", port=port, security="none"),
        store=StoreConfig(url=f"sqlite:///{tmp_path}/pp.db"),
        watch=WatchConfig(credentials=request.param, backoff_min=0.05, backoff_max=0.2, command_timeout=3),
    )
    provider: CredentialProvider = MemoryCredentials() if request.param == "memory" else VaultCredentials(store)
    regs = Registrations()
    sup = Supervisor(config, store, Events(), credentials=provider, watching=regs)
    await sup.start()
    yield Env(sup, fake, regs, provider)
    await sup.close()
    server.close()
    if request.param == "memory":  # memory mode: never written to the store, whatever the order of events
        assert await store.get_credential("alice") is None
    await store.close()


async def assert_watching_with_captured_password(env: Env) -> None:
    creds = await env.provider.get("alice")
    assert creds is not None and creds.secret == "alicepw"
    assert env.sup.watcher("alice") is not None
    await until(lambda: env.sup.status()["idle"] == 1)
    assert env.login_lines() and all(b"alicepw" in line for line in env.login_lines())
    assert not env.sup._logins  # the capture itself went with the session


async def test_close_while_the_registration_is_followed(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """The close arrives while the registration reads what is registered: it must not take the password away."""
    caplog.set_level(logging.DEBUG, logger="pushproxy")
    await env.sup.logged_in("alice", "alice", "alicepw", "s1")  # nothing registered yet: nothing kept
    assert await env.provider.status("alice") == "missing"
    env.regs.registered["alice"] = INBOX  # the client registers ...
    env.regs.gate = asyncio.Event()
    followed = asyncio.create_task(env.sup.registration_changed("alice", "s1"))  # ... reported from a task
    await env.regs.at_gate.wait()
    closed = asyncio.create_task(env.sup.session_closed("s1"))  # ... and logs out at once
    for _ in range(5):
        await asyncio.sleep(0)
    env.regs.gate.set()
    await asyncio.wait_for(asyncio.gather(followed, closed), 10)
    await assert_watching_with_captured_password(env)
    assert "no credentials captured" not in caplog.text
    assert "alicepw" not in caplog.text


async def test_close_before_the_registration_is_followed(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """The close is processed first (the registration's task had not run yet): the close starts the watcher."""
    caplog.set_level(logging.DEBUG, logger="pushproxy")
    await env.sup.logged_in("alice", "alice", "alicepw", "s1")
    env.regs.registered["alice"] = INBOX  # stored before the OK; the follow-up task is still queued
    await env.sup.session_closed("s1")
    await env.sup.registration_changed("alice", "s1")
    await assert_watching_with_captured_password(env)
    assert "no credentials captured" not in caplog.text
    assert "alicepw" not in caplog.text


async def test_reregistered_after_forget_then_closed(env: Env) -> None:
    """Registrations removed (credentials forgotten), added again in the same session, closed before followed."""
    env.regs.registered["alice"] = INBOX
    await env.sup.logged_in("alice", "alice", "alicepw", "s1")
    await until(lambda: env.sup.status()["idle"] == 1)
    del env.regs.registered["alice"]
    await env.sup.registration_changed("alice", "s1")
    assert await env.provider.status("alice") == "missing"
    assert env.sup.watcher("alice") is None
    env.regs.registered["alice"] = INBOX
    await env.sup.session_closed("s1")
    await env.sup.registration_changed("alice", "s1")
    creds = await env.provider.get("alice")
    assert creds is not None and creds.secret == "alicepw"
    await until(lambda: env.sup.status()["idle"] == 1)


async def test_close_without_registrations_keeps_nothing(env: Env) -> None:
    await env.sup.logged_in("alice", "alice", "alicepw", "s1")
    await env.sup.session_closed("s1")
    assert await env.provider.status("alice") == "missing"
    assert env.sup.watcher("alice") is None
    assert not env.sup._logins
    # A registration reported after the close (no session of the account left) has nothing to start with.
    env.regs.registered["alice"] = INBOX
    await env.sup.registration_changed("alice", "s1")
    assert env.sup.watcher("alice") is None
