"""The event loop under Twisted's reactor: uvloop by default, the standard loop on request."""

from __future__ import annotations

import asyncio

import pytest

from pushproxy.config import Config
from pushproxy.reactor import loop_name, new_event_loop


def test_auto_takes_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    loop = new_event_loop("auto")
    try:
        assert loop_name(loop) == "uvloop"
    finally:
        loop.close()


def test_standard_loop_on_request() -> None:
    loop = new_event_loop("asyncio")
    try:
        assert loop_name(loop) == "asyncio"
        assert isinstance(loop, asyncio.BaseEventLoop)
    finally:
        loop.close()


def test_config_key_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config().runtime.event_loop == "auto"
    monkeypatch.setenv("PUSHPROXY_RUNTIME__EVENT_LOOP", "asyncio")
    assert Config().runtime.event_loop == "asyncio"
