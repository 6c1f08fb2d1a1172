"""The Delta Chat core 2.23 through its C API (PyPI ``deltachat``, CFFI): the push-token flow.

Current cores (JSON-RPC, ``deltachat-rpc-server``) do not let a client set a
device token; 2.23's account manager does (``dc_accounts_set_push_device_token``).
:class:`CoreAccounts` is the least of its C API a test needs: one accounts
directory, accounts configured with explicit servers, the token, I/O, events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deltachat.capi import ffi, lib


def _text(ptr: object) -> str | None:
    if ptr == ffi.NULL:
        return None
    return ffi.string(ffi.gc(ptr, lib.dc_str_unref)).decode("utf-8", "replace")


@dataclass(frozen=True)
class Event:
    account_id: int
    kind: int
    data1: int
    data2: str | None


class CoreAccounts:
    """``dc_accounts_t`` with an event thread; ``close()`` stops everything."""

    def __init__(self, directory: Path) -> None:
        self._accounts = lib.dc_accounts_new(str(directory).encode(), 1)
        if self._accounts == ffi.NULL:
            raise RuntimeError("dc_accounts_new failed")
        self._emitter = lib.dc_accounts_get_event_emitter(self._accounts)
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            ev = lib.dc_get_next_event(self._emitter)
            if ev == ffi.NULL:
                return
            try:
                kind = lib.dc_event_get_id(ev)
                data2 = _text(lib.dc_event_get_data2_str(ev)) if lib.dc_event_has_string_data(kind) else None
                event = Event(lib.dc_event_get_account_id(ev), kind, lib.dc_event_get_data1_int(ev), data2)
            finally:
                lib.dc_event_unref(ev)
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    def wait_event(self, pred: Callable[[Event], bool], timeout: float = 60, start: int = 0) -> Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[start:]:
                    if pred(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such Delta Chat event in {timeout} s; last: {self.log_tail()}")
                self._cond.wait(left)

    def log_tail(self, n: int = 15) -> str:
        with self._cond:
            return "\n".join(f"{e.kind} {e.data1} {e.data2}" for e in self.events[-n:])

    def add_account(self) -> CoreAccount:
        account_id = lib.dc_accounts_add_account(self._accounts)
        return CoreAccount(self, account_id, lib.dc_accounts_get_account(self._accounts, account_id))

    def set_push_device_token(self, token: str) -> None:
        lib.dc_accounts_set_push_device_token(self._accounts, token.encode())

    def start_io(self) -> None:
        lib.dc_accounts_start_io(self._accounts)

    def stop_io(self) -> None:
        lib.dc_accounts_stop_io(self._accounts)

    def close(self) -> None:
        self.stop_io()
        lib.dc_accounts_unref(self._accounts)  # ends the emitter: the pump returns
        self._thread.join(10)
        lib.dc_event_emitter_unref(self._emitter)


class CoreAccount:
    def __init__(self, owner: CoreAccounts, account_id: int, context: object) -> None:
        self.owner = owner
        self.id = account_id
        self._ctx = context

    def set_config(self, key: str, value: str) -> None:
        if not lib.dc_set_config(self._ctx, key.encode(), value.encode()):
            raise RuntimeError(f"dc_set_config {key} failed")

    def get_config(self, key: str) -> str | None:
        return _text(lib.dc_get_config(self._ctx, key.encode()))

    def configure(self, timeout: float = 60) -> None:
        start = len(self.owner.events)
        lib.dc_configure(self._ctx)
        done = self.owner.wait_event(
            lambda e: e.account_id == self.id and e.kind == lib.DC_EVENT_CONFIGURE_PROGRESS and e.data1 in (0, 1000),
            timeout,
            start,
        )
        if done.data1 != 1000:
            raise RuntimeError(f"Delta Chat 2.23 configure failed: {done.data2}")
