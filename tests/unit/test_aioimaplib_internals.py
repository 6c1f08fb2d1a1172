"""What pushproxy/watch/upstream.py (the aioimaplib subclass) assumes of aioimaplib, one test each.

pyproject.toml pins the aioimaplib range these were checked against; an upgrade
that breaks one fails the test named after it here, not a watcher in production.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path

import aioimaplib
from aioimaplib import IMAP4ClientProtocol

from pushproxy.watch import upstream
from pushproxy.watch.upstream import WatcherProtocol


async def test_base_init_makes_the_state_the_watcher_sheds() -> None:
    base = IMAP4ClientProtocol(None)
    assert all(hasattr(base, name) for name in upstream._UNUSED_BASE_STATE)


async def test_watcher_protocol_holds_none_of_it() -> None:
    p = WatcherProtocol(command_timeout=5)
    assert not any(hasattr(p, name) for name in upstream._UNUSED_BASE_STATE)


def test_only_base_methods_the_watcher_never_calls_read_the_shed_state() -> None:
    readers = set()
    for name, member in vars(IMAP4ClientProtocol).items():
        if name in vars(WatcherProtocol) or not inspect.isfunction(member):
            continue  # overridden: the base's version never runs
        if any(attr in inspect.getsource(member) for attr in upstream._UNUSED_BASE_STATE):
            readers.add(name)
    assert readers <= {"execute", "wait", "wait_for_idle_response", "_continuation"}, readers
    # ... and nothing in the watcher package calls them on a protocol (named self, protocol or conn there).
    package = Path(upstream.__file__).parent
    calls = re.compile(r"\b(?:self|protocol|conn)\.(" + "|".join(sorted(readers)) + r")\(")
    for path in package.glob("*.py"):
        found = calls.findall(path.read_text())
        assert not found, (path.name, found)


async def test_new_tag_reads_tagpre_and_tagnum() -> None:
    p = IMAP4ClientProtocol(None)
    upstream._set_tags(p, "W")
    assert (p.new_tag(), p.new_tag(), p.tagnum) == ("W1", "W2", 3)


async def test_connection_made_keeps_the_transport_and_says_connected() -> None:
    p = WatcherProtocol(command_timeout=5)
    transport = asyncio.Transport()
    p.connection_made(transport)
    assert p.transport is transport and p.state == aioimaplib.CONNECTED


async def test_state_names_and_capabilities() -> None:
    p = IMAP4ClientProtocol(None)
    assert {aioimaplib.STARTED, aioimaplib.CONNECTED, aioimaplib.NONAUTH, aioimaplib.AUTH, aioimaplib.LOGOUT} >= {
        p.state
    }
    assert len({aioimaplib.NONAUTH, aioimaplib.AUTH, aioimaplib.LOGOUT}) == 3
    assert p.capabilities == set()
