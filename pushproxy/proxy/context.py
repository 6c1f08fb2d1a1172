"""What extensions see of a session: the :class:`~pushproxy.extensions.base.SessionContext` they are handed."""

from __future__ import annotations

from typing import Protocol

from pushproxy.imap.parse import StatusResponse


class ContextSource(Protocol):
    """The session, as far as its extension context reads it."""

    @property
    def session_id(self) -> str: ...
    @property
    def authenticated(self) -> bool: ...
    @property
    def account(self) -> str | None: ...
    @property
    def login(self) -> str | None: ...
    @property
    def upstream_capabilities(self) -> frozenset[str]: ...

    def reply_untagged(self, payload: bytes) -> None: ...

    async def upstream_command(self, command: bytes, timeout: float) -> tuple[list[bytes], StatusResponse]: ...


class SessionContextImpl:
    """The SessionContext handed to extension handlers (one per session)."""

    __slots__ = ("_s",)

    def __init__(self, session: ContextSource) -> None:
        self._s = session

    @property
    def session_id(self) -> str:
        return self._s.session_id

    @property
    def account(self) -> str | None:
        return self._s.account if self._s.authenticated else None

    @property
    def login(self) -> str | None:
        return self._s.login

    @property
    def upstream_capabilities(self) -> frozenset[str]:
        return self._s.upstream_capabilities

    def reply_untagged(self, payload: bytes) -> None:
        self._s.reply_untagged(payload)

    async def upstream_command(self, command: bytes, timeout: float = 30.0) -> tuple[list[bytes], StatusResponse]:
        return await self._s.upstream_command(command, timeout)
