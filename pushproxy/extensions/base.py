"""The extension API: how a push protocol plugs into the proxy session.

An extension declares the capability atoms it adds and the commands it
answers.  The session knows nothing about APNs or VAPID: it collects the whole
command (literals included), waits until every earlier command has been
answered (so replies stay in tag order), calls the handler with a
:class:`SessionContext`, writes what the handler replied, then goes on with the
client's stream.  A new push protocol is one more package under
``pushproxy/extensions/`` and one line in ``app.py``.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pushproxy.imap.parse import Command, StatusResponse


@dataclass(frozen=True, slots=True)
class Reply:
    """The tagged completion of an intercepted command."""

    status: Literal["OK", "NO", "BAD"]
    text: str
    code: str | None = None


class UpstreamCommandError(Exception):
    """The proxy's own upstream command failed (connection lost, timeout)."""


class SessionContext(Protocol):
    """What a command handler may see and do on the client's session."""

    @property
    def session_id(self) -> str: ...

    @property
    def account(self) -> str | None:
        """The normalised login once authenticated, else None."""

    @property
    def login(self) -> str | None:
        """The login exactly as the client sent it."""

    @property
    def upstream_capabilities(self) -> frozenset[str]:
        """Upper-case capability atoms upstream advertised after login (may be empty)."""

    def reply_untagged(self, payload: bytes) -> None:
        """Send ``* <payload>\\r\\n`` to the client (payload may contain literals)."""

    async def upstream_command(self, command: bytes, timeout: float = 30.0) -> tuple[list[bytes], StatusResponse]:
        """Run ``<own tag> <command>`` upstream on the user's own connection.

        Only valid inside a handler (no client command is in flight then).
        Returns the untagged responses (each one whole, literals inline) and
        the tagged status.  Raises UpstreamCommandError.
        """


Handler = Callable[[Command, SessionContext], Awaitable[Reply]]


@dataclass
class Extension(ABC):  # noqa: B024 - a declaration, subclasses fill the fields
    """Base class; subclasses set the fields in ``__init__`` or as class attributes."""

    name: str = "extension"
    capabilities: tuple[bytes, ...] = ()  # advertised once authenticated
    pre_auth_capabilities: tuple[bytes, ...] = ()  # advertised before login too
    commands: dict[str, Handler] = field(default_factory=dict)  # upper-case name -> handler

    async def session_closed(self, session: SessionContext) -> None:
        """Called once when a client session ends (after login or not)."""
        return None


class CredentialSink(Protocol):
    """Receives credentials captured from successful logins (for the watchers)."""

    async def logged_in(self, account: str, login: str, secret: str, session_id: str) -> None: ...

    async def session_closed(self, session_id: str) -> None: ...


class NullCredentialSink:
    """The plain transparent proxy: nothing is kept."""

    async def logged_in(self, account: str, login: str, secret: str, session_id: str) -> None:
        return None

    async def session_closed(self, session_id: str) -> None:
        return None


class ExtensionRegistry:
    """The extensions of this proxy, and the merged view the session uses."""

    def __init__(self, extensions: list[Extension] | None = None) -> None:
        self.extensions: list[Extension] = list(extensions or [])
        self.handlers: dict[str, Handler] = {}
        for ext in self.extensions:
            for name, handler in ext.commands.items():
                if name.upper() in self.handlers:
                    raise ValueError(f"command {name} claimed by two extensions")
                self.handlers[name.upper()] = handler

    @property
    def post_auth_capabilities(self) -> tuple[bytes, ...]:
        return tuple(c for ext in self.extensions for c in ext.capabilities)

    @property
    def pre_auth_capabilities(self) -> tuple[bytes, ...]:
        return tuple(c for ext in self.extensions for c in ext.pre_auth_capabilities)

    def __bool__(self) -> bool:
        return bool(self.extensions)
