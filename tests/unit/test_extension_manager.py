"""The extension manager's one error policy: a failing hook is logged once, counted, and goes no further.

An extension that raises in every hook sits beside a well-behaved one in a
real :class:`~pushproxy.proxy.session.Session` (fake IO) and the push
pipeline's real :class:`~pushproxy.push.pipeline.FanOut`: the relay goes on, the other
extension gets every call, each failure is one log line naming the extension
and the hook (no traceback) and one count in
``pushproxy_extension_errors_total{extension,hook}``.
"""

from __future__ import annotations

import logging

import pytest

from pushproxy import metrics
from pushproxy.events import MailEvent, MessageInfo, NewMail
from pushproxy.extensions.base import Extension, Reply, SessionContext, WatchRequest
from pushproxy.extensions.housekeeping import Housekeeping
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.imap.parse import Command
from pushproxy.push.pipeline import FanOut
from pushproxy.store.base import StoreUnavailable
from tests.support.sessions import Echo, FakeIO, new_session, settle
from tests.support.waiting import async_wait_for


class Boom(Exception):
    """Raised by the broken extension; its text must never reach the log (it could hold a token)."""


class Broken(Extension):
    """Raises in every hook the core calls."""

    def __init__(self) -> None:
        super().__init__(
            name="broken",
            capabilities=(b"XBROKEN",),
            commands={"XBROKEN": self.xbroken},
            observed_commands=("SUBSCRIBE",),
        )

    async def xbroken(self, cmd: Command, ctx: SessionContext) -> Reply:
        raise Boom("secret-token-123")

    async def command_succeeded(self, name: str, session: SessionContext) -> None:
        raise Boom("secret-token-123")

    async def session_closed(self, session: SessionContext) -> None:
        raise Boom("secret-token-123")

    async def on_event(self, event: MailEvent) -> None:
        raise Boom("secret-token-123")

    async def flush(self) -> None:
        raise Boom("secret-token-123")

    async def watched_mailboxes(self, account: str) -> WatchRequest | None:
        raise Boom("secret-token-123")


class Recorder(Echo):
    """A well-behaved extension: XECHO, and a record of every hook it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.observed_commands = ("SUBSCRIBE",)
        self.calls: list[str] = []

    async def command_succeeded(self, name: str, session: SessionContext) -> None:
        self.calls.append(f"command_succeeded {name}")

    async def session_closed(self, session: SessionContext) -> None:
        self.calls.append("session_closed")

    async def on_event(self, event: MailEvent) -> None:
        self.calls.append(f"on_event {event.account}")

    async def flush(self) -> None:
        self.calls.append("flush")

    async def watched_mailboxes(self, account: str) -> WatchRequest | None:
        return WatchRequest(("INBOX",))


def errors(hook: str) -> float:
    value = metrics.REGISTRY.get_sample_value("pushproxy_extension_errors_total", {"extension": "broken", "hook": hook})
    return value or 0.0


def failures_logged(caplog: pytest.LogCaptureFixture, hook: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"extension broken: {hook} failed")]


def assert_failed_once(caplog: pytest.LogCaptureFixture, hook: str, before: float) -> None:
    assert errors(hook) == before + 1
    [record] = failures_logged(caplog, hook)
    assert record.levelno == logging.ERROR and record.exc_info is None  # one line, no traceback
    assert "Boom" in record.getMessage() and "secret-token" not in record.getMessage()


async def test_a_failing_hook_in_a_session_is_logged_counted_and_the_relay_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    hooks = ("command XBROKEN", "command_succeeded", "session_closed")
    before = {hook: errors(hook) for hook in hooks}
    io, good = FakeIO(), Recorder()
    s = new_session(io, [Broken(), good])
    s.upstream_data(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
    s.client_data(b"a1 LOGIN alice pw\r\n")
    s.upstream_data(b"a1 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
    assert b"XBROKEN" in bytes(io.client) and b"XECHO" in bytes(io.client)

    # The broken handler: the client gets NO [UNAVAILABLE] (it retries), the next command is answered.
    s.client_data(b"a2 XBROKEN\r\na3 XECHO hi\r\n")
    await settle()
    assert b"a2 NO [UNAVAILABLE] Internal error in the proxy, please retry\r\n" in bytes(io.client)
    assert bytes(io.client).endswith(b"* XECHO hi\r\na3 OK XECHO done\r\n")
    assert_failed_once(caplog, "command XBROKEN", before["command XBROKEN"])

    # A relayed command both observe: relayed and answered as ever, the other observer hears of it.
    s.client_data(b"a4 SUBSCRIBE Work\r\na5 NOOP\r\n")
    assert bytes(io.upstream).endswith(b"a4 SUBSCRIBE Work\r\na5 NOOP\r\n")
    s.upstream_data(b"a4 OK done\r\na5 OK done\r\n")
    await settle()
    assert bytes(io.client).endswith(b"a4 OK done\r\na5 OK done\r\n")
    assert good.calls == ["command_succeeded SUBSCRIBE"]
    assert_failed_once(caplog, "command_succeeded", before["command_succeeded"])

    # The session's end: the other extension is told too.
    s.close()
    await s.finish()
    assert good.calls[-1] == "session_closed"
    assert_failed_once(caplog, "session_closed", before["session_closed"])


async def test_a_failing_on_event_does_not_keep_the_event_from_the_others(caplog: pytest.LogCaptureFixture) -> None:
    before = {hook: errors(hook) for hook in ("on_event", "flush")}
    good = Recorder()
    fan_out = FanOut(ExtensionManager([Broken(), good]))
    fan_out.hand_out(NewMail("alice", "INBOX", (MessageInfo(uid=1),)))
    await fan_out.flush()
    assert good.calls == ["on_event alice", "flush"]
    assert fan_out.delivered == 1
    assert_failed_once(caplog, "on_event", before["on_event"])
    assert_failed_once(caplog, "flush", before["flush"])


async def test_a_failing_watch_query_asks_for_nothing_but_a_store_fault_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in one extension leaves the others' watch requests; a store outage is the supervisor's to handle."""
    before = errors("watched_mailboxes")
    manager = ExtensionManager([Broken(), Recorder()])
    spec = await manager.spec("alice")
    assert spec is not None and spec.mailboxes == ("INBOX",)
    assert_failed_once(caplog, "watched_mailboxes", before)

    class Unavailable(Recorder):
        async def watched_mailboxes(self, account: str) -> WatchRequest | None:
            raise StoreUnavailable("store down")

    with pytest.raises(StoreUnavailable):
        await ExtensionManager([Unavailable()]).spec("alice")


def test_two_extensions_cannot_claim_one_command() -> None:
    with pytest.raises(ValueError, match="claimed by two extensions"):
        ExtensionManager([Echo(), Echo()])


async def test_a_failing_housekeeping_round_is_counted_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    """An extension's periodic round (Housekeeping) under the same policy; a store outage only waits."""
    before = errors("housekeeping")
    rounds: list[str] = []
    faults = [Boom("secret-token-123"), StoreUnavailable("down")]

    async def round_() -> None:
        rounds.append("round")
        if faults:
            raise faults.pop(0)

    housekeeping = Housekeeping("broken", round_, interval=0.01)
    housekeeping.start()
    await async_wait_for(lambda: len(rounds) >= 3, 5.0, "three rounds", 0.01)
    await housekeeping.stop()
    assert_failed_once(caplog, "housekeeping", before)  # the bug counted once; the outage not at all
