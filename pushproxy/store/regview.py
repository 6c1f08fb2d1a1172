"""The registrations a send needs (an account's devices, its subscriptions), in memory.

A push must not wait on the store: when PostgreSQL is away (or packets to it
vanish) a read would wait for its deadline, and the event would fail.  The
senders read an account's registrations through this view:

- on a store shared by nodes (PostgreSQL), an entry is current until a
  change notice says otherwise: this node's own writes
  (:meth:`~pushproxy.store.sql_base.SqlBase.add_registration_listener`) and
  every other node's NOTIFY (:mod:`pushproxy.cluster.feed`; after a lost
  LISTEN connection every entry is re-read on next use);
- on a store only this node opens (SQLite; the CLI may write the file from
  another process without a notice) every read goes to the store, and the
  view is the fallback when that read fails;
- while the store is away (:class:`~pushproxy.store.health.StoreHealth`) the
  last entry read is used without trying; an account never read raises
  :class:`~pushproxy.store.base.StoreUnavailable` (the dispatcher retries the
  event).

The accounts this node watches are read when their watchers start (the
extensions' ``watched_mailboxes`` go through the same queries), so the view
holds what a send needs before any outage; a batch of them (a lease round's
takeover, the start) is read with one query (:meth:`RegistrationView.get_many`).  At most :data:`MAX_ENTRIES`
entries, least recently used first out.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pushproxy.store.errors import StoreUnavailable
from pushproxy.store.health import StoreHealth

T = TypeVar("T")

MAX_ENTRIES = 200_000


@dataclass(slots=True)
class _Entry:
    value: Any
    current: bool  # no change notice since it was read


class RegistrationView:
    def __init__(self, health: StoreHealth, notified: bool, max_entries: int = MAX_ENTRIES) -> None:
        self._health = health
        self._notified = notified
        self._max = max_entries
        self._entries: OrderedDict[str, dict[str, _Entry]] = OrderedDict()  # account -> kind -> entry, LRU
        self._generation: dict[str, int] = {}  # account -> changes seen (a read racing a change is not current)
        self._all_generation = 0

    async def get(self, kind: str, account: str, load: Callable[[], Awaitable[T]]) -> T:
        """``load()``'s result for (kind, account), from memory when it is current or the store is away."""
        kinds = self._entries.get(account)
        entry = None if kinds is None else kinds.get(kind)
        if entry is not None:
            self._entries.move_to_end(account)
            if (entry.current and self._notified) or not self._health.up:
                return copy.deepcopy(entry.value)  # type: ignore[no-any-return]  # callers may change records
        elif not self._health.up:
            raise StoreUnavailable(f"the store is away and the {kind} of this account were never read")
        generation = (self._all_generation, self._generation.get(account, 0))
        try:
            value = await load()
        except StoreUnavailable as exc:
            self._health.failed(exc)
            if entry is not None:
                return copy.deepcopy(entry.value)  # type: ignore[no-any-return]  # callers may change records
            raise
        self._health.succeeded()
        current = generation == (self._all_generation, self._generation.get(account, 0))
        self._entries.setdefault(account, {})[kind] = _Entry(copy.deepcopy(value), current)
        self._entries.move_to_end(account)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return value

    async def get_many(
        self, kind: str, accounts: Sequence[str], load: Callable[[list[str]], Awaitable[dict[str, T]]]
    ) -> dict[str, T]:
        """:meth:`get` for every account of ``accounts``, those not answered from memory with one ``load``.

        ``load(accounts)`` answers every account it is given (an empty value where there is none).
        When the store is away, or the load fails, what was read before is used; an account never
        read then raises :class:`StoreUnavailable` for the whole batch (a partial answer would read
        as "no registrations" and stop watchers).
        """
        found: dict[str, T] = {}
        to_read: list[str] = []
        for account in dict.fromkeys(accounts):
            entry = self._entry(kind, account)
            if entry is not None and ((entry.current and self._notified) or not self._health.up):
                found[account] = copy.deepcopy(entry.value)
            elif entry is None and not self._health.up:
                raise StoreUnavailable(f"the store is away and the {kind} of {account} were never read")
            else:
                to_read.append(account)
        if not to_read:
            return found
        generations = {a: (self._all_generation, self._generation.get(a, 0)) for a in to_read}
        try:
            values = await load(to_read)
        except StoreUnavailable as exc:
            self._health.failed(exc)
            for account in to_read:
                entry = self._entry(kind, account)
                if entry is None:
                    raise
                found[account] = copy.deepcopy(entry.value)
            return found
        self._health.succeeded()
        for account in to_read:
            value = values[account]
            current = generations[account] == (self._all_generation, self._generation.get(account, 0))
            self._entries.setdefault(account, {})[kind] = _Entry(copy.deepcopy(value), current)
            self._entries.move_to_end(account)
            found[account] = value
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return found

    def _entry(self, kind: str, account: str) -> _Entry | None:
        kinds = self._entries.get(account)
        entry = None if kinds is None else kinds.get(kind)
        if entry is not None:
            self._entries.move_to_end(account)
        return entry

    def changed(self, account: str | None) -> None:
        """A change notice: the account's registrations (None or "": some account's) changed."""
        if not account:
            self._all_generation += 1
            self._generation.clear()
            for kinds in self._entries.values():
                for entry in kinds.values():
                    entry.current = False
            return
        self._generation[account] = self._generation.get(account, 0) + 1
        if len(self._generation) > self._max:  # bounded: forgetting the counts makes every read in flight stale
            self._generation.clear()
            self._all_generation += 1
        for entry in self._entries.get(account, {}).values():
            entry.current = False
