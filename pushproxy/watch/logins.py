"""What the supervisor keeps of the proxy's logins: live sessions' credentials, and a lock per account.

The proxy reports every successful client LOGIN / AUTHENTICATE PLAIN
(:meth:`pushproxy.watch.supervisor.Supervisor.logged_in`).  Until the session
ends its credentials are kept here (:class:`LiveLogins`), so that a
registration made in that session, or the session's close, can give them to
the credential provider.  The changes of one account (a login, a
registration, a session's close) are followed one at a time, in the order
they came (:class:`AccountLocks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pushproxy.store.base import StoreUnavailable

__all__ = ["AccountLocks", "CapturedLogin", "LiveLogins"]

log = logging.getLogger("pushproxy.watch.supervisor")


@dataclass(slots=True)
class CapturedLogin:
    """Credentials of a live client session (kept only while the session lasts)."""

    account: str
    login: str
    secret: str
    # The forget count (LiveLogins.forgets) when the provider last took these (-1: never): at
    # the session's close they are handed over again only if they may be missing from it.
    taken_at: int = -1

    def __repr__(self) -> str:
        return f"CapturedLogin(account={self.account!r}, login={self.login!r})"


class LiveLogins:
    """The credentials of the live sessions, by session id."""

    __slots__ = ("_sessions", "forgets")

    def __init__(self) -> None:
        self._sessions: dict[str, CapturedLogin] = {}
        self.forgets = 0  # how often an account's credentials were forgotten (see CapturedLogin.taken_at)

    def __len__(self) -> int:
        return len(self._sessions)

    def capture(self, session_id: str, account: str, login: str, secret: str) -> CapturedLogin:
        captured = self._sessions[session_id] = CapturedLogin(account, login, secret)
        return captured

    def get(self, session_id: str) -> CapturedLogin | None:
        return self._sessions.get(session_id)

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def clear(self) -> None:
        self._sessions.clear()

    def latest(self, account: str, session_id: str | None) -> CapturedLogin | None:
        """The session's credentials if it logged in to ``account``, else the account's most recent login."""
        if session_id is not None:
            captured = self._sessions.get(session_id)
            if captured is not None and captured.account == account:
                return captured
        for captured in reversed(self._sessions.values()):
            if captured.account == account:
                return captured
        return None

    def latest_of_each(self) -> dict[str, CapturedLogin]:
        """Every account's most recent login (a batch of accounts looks them up once, not per account)."""
        return {captured.account: captured for captured in self._sessions.values()}

    def forgotten(self) -> None:
        """An account's credentials were forgotten by the provider."""
        self.forgets += 1

    def taken(self, captured: CapturedLogin) -> None:
        """The provider took ``captured``."""
        captured.taken_at = self.forgets

    def may_be_missing(self, captured: CapturedLogin) -> bool:
        """Were credentials forgotten since the provider took ``captured`` (or did it never)?"""
        return captured.taken_at != self.forgets


class _AccountLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class AccountLocks:
    """One lock per account, kept only while someone holds or waits for it (every user logs in)."""

    __slots__ = ("_locks", "closing")

    def __init__(self) -> None:
        self._locks: dict[str, _AccountLock] = {}
        self.closing = False  # the proxy shuts down: a change the store cannot take any more is let go

    @contextlib.asynccontextmanager
    async def hold(self, account: str) -> AsyncIterator[None]:
        """Serialise the changes of one account (a login and a registration may race); first come, first served."""
        entry = self._locks.get(account)
        if entry is None:
            entry = self._locks[account] = _AccountLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        except StoreUnavailable:
            # A login or registration still being followed when the proxy shuts down
            # (the store closes after the watchers): nothing left to follow.
            if not self.closing:
                raise
            log.debug("watcher %s: change not followed, shutting down", account)
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[account]
