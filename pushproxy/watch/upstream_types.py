"""What the watcher's upstream connection raises and returns: errors, credentials, command results.

Kept apart from :mod:`pushproxy.watch.upstream` (the aioimaplib subclass) so that
the credential providers and the login procedure (:mod:`pushproxy.watch.connect`)
can name them without the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pushproxy.imap.data import Response

__all__ = [
    "AuthenticationFailed",
    "CommandFailed",
    "CommandResult",
    "ConnectionLost",
    "LoginCredentials",
    "TemporaryLoginFailure",
    "UpstreamError",
]


class UpstreamError(Exception):
    """Something went wrong with the upstream connection (transient: reconnect later)."""


class ConnectionLost(UpstreamError):
    """The server closed the connection or said BYE."""


class CommandFailed(UpstreamError):
    """A command was answered NO or BAD."""

    def __init__(self, command: str, status: Response) -> None:
        super().__init__(f"{command} failed: {status.text}")
        self.status = status


class AuthenticationFailed(Exception):
    """Upstream refused the credentials: do not retry them."""


class TemporaryLoginFailure(UpstreamError):
    """Upstream refused the login for a reason that may go away (NO [UNAVAILABLE], ...)."""


@dataclass(frozen=True, slots=True)
class LoginCredentials:
    """How to log in upstream.  ``authzid``: SASL PLAIN authorization identity (master users)."""

    login: str
    secret: str
    mechanism: Literal["login", "plain"] = "login"
    authzid: str | None = None

    def __repr__(self) -> str:  # never show the secret
        extra = f", authzid={self.authzid!r}" if self.authzid else ""
        return f"LoginCredentials(login={self.login!r}, mechanism={self.mechanism}{extra})"


@dataclass(frozen=True, slots=True)
class CommandResult:
    untagged: list[Response]
    status: Response  # the tagged response

    @property
    def ok(self) -> bool:
        return self.status.kind == "OK"
