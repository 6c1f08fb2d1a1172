"""The Delta Chat sender while PostgreSQL is away, on real PostgreSQL with two nodes.

The sender reads an account's tokens through the store's registration view
(pushproxy.store.regview), as the APNs and Web Push senders do: another node's
token change reaches it by LISTEN/NOTIFY (pushproxy.cluster.feed), and once
the store is unreachable (node a reaches PostgreSQL through a relay that is
cut) new mail still goes to the account's current tokens, without a wait.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'pushproxy[postgres]'")

from pushproxy.cluster.feed import RegistrationFeed
from pushproxy.config import Config
from pushproxy.events import MessageInfo, NewMail
from pushproxy.extensions.deltachat.addon import DeltaChat
from pushproxy.extensions.deltachat.settings import DeltaChatConfig
from pushproxy.extensions.deltachat.store import DeltaChatQueries
from pushproxy.imap.envelope import envelope_from_fields
from pushproxy.store import StoreUnavailable, Vault
from pushproxy.store.postgres import PostgresStore
from tests.support.extension_host import ExtensionHost
from tests.support.relay import TcpRelay
from tests.support.waiting import async_wait_for

T1, T2 = "openpgp:" + "A" * 60, "openpgp:" + "B" * 60
CAROL = MessageInfo(5, envelope=envelope_from_fields(None, "s", "carol@example.org", None))


@pytest.fixture
async def gateway(unused_tcp_port: int) -> AsyncIterator[tuple[list[str], str]]:
    bodies: list[str] = []

    async def notify(request: web.Request) -> web.Response:
        bodies.append((await request.read()).decode())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/notify", notify)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    yield bodies, f"http://127.0.0.1:{unused_tcp_port}/notify"
    await runner.cleanup()


async def _nothing(*_args: object) -> None:
    pass


async def test_notify_uses_the_current_tokens_while_postgresql_is_away(
    postgres_dsn: str, gateway: tuple[list[str], str]
) -> None:
    bodies, url = gateway
    vault = Vault.generate()
    port = postgres_dsn.rsplit(":", 1)[1].split("/", 1)[0]
    relay = TcpRelay("127.0.0.1", int(port))
    a = PostgresStore(postgres_dsn.replace(f":{port}/", f":{relay.port}/"), vault)  # through the relay
    b = PostgresStore(postgres_dsn, vault)
    await a.open()
    await b.open()
    feed = RegistrationFeed(a, _nothing, _nothing)
    config = Config(deltachat={"enabled": True, "notify_url": url})
    ext = DeltaChat()
    assert ext.configure(config)
    ext.attach(ExtensionHost(a, config))  # type: ignore[arg-type]
    ext.cfg = DeltaChatConfig(notify_url=url, coalesce=0)
    await ext.start()
    try:
        feed.start()
        await async_wait_for(feed.listening.is_set, 10, "node a listening")
        await a.queries(DeltaChatQueries).set_token("alice", T1)
        assert await ext.watched_mailboxes("alice") is not None  # the watcher's start reads the tokens
        await ext.on_event(NewMail("alice", "INBOX", (CAROL,)))
        await ext.flush()
        assert bodies == [T1]

        await b.queries(DeltaChatQueries).set_token("alice", T2)  # on the other node: a hears of it by NOTIFY

        async def both_on_a() -> bool:
            return {t.token for t in await ext.tokens.tokens_for_account("alice")} == {T1, T2}

        await async_wait_for(both_on_a, 10, "node a seeing node b's token")

        relay.set_mode("down")  # PostgreSQL unreachable from node a
        with pytest.raises(StoreUnavailable):  # never read: the extension manager retries such an event
            await ext.on_event(NewMail("dave", "INBOX", (CAROL,)))
        assert not a.health.up
        await ext.on_event(NewMail("alice", "INBOX", (CAROL,)))
        await ext.flush()
        assert sorted(bodies[1:]) == sorted([T1, T2])  # the current tokens, no store needed

        relay.set_mode("pass")
        await async_wait_for(lambda: a.health.up, 30, "node a's store back")
    finally:
        await ext.stop()
        await feed.close()
        relay.set_mode("pass")
        await a.close()
        await b.close()
        relay.close()
