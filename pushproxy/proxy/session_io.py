"""What a session is given: the byte pipes of its connection (:class:`SessionIO`), its settings, and
whom it reports to as it goes (:class:`SessionEvents`).

The lowest module of the session's parts: the session and its collaborators
import it, it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pushproxy.proxy.client_id import ClientAddress


class SessionIO(Protocol):
    """The adapter's side (``connection.py`` in production, a fake in the tests)."""

    def to_client(self, data: bytes) -> None: ...
    def to_upstream(self, data: bytes) -> None: ...
    def start_client_tls(self) -> None: ...
    def start_upstream_tls(self) -> None: ...
    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...
    def close(self) -> None: ...
    def open_upstream(self) -> None: ...


class SessionEvents:
    """What a session reports to whoever runs it (the service: its metrics, the capabilities it greets
    with); each report does nothing here, a subclass overrides those it wants."""

    def intercepted(self, command: str) -> None:
        """An extension answers this client command (upper-case name) instead of the upstream."""

    def auth_failed(self) -> None:
        """The upstream answered a client's LOGIN / AUTHENTICATE with NO."""

    def logged_in(self) -> None:
        """The upstream answered a client's LOGIN / AUTHENTICATE with OK."""

    def upstream_capabilities(self, atoms: list[bytes]) -> None:
        """The upstream's greeting (OK) named these pre-login capabilities."""


@dataclass(slots=True)
class SessionSettings:
    upstream_security: str = "none"  # none | starttls | tls
    max_line: int = 65536
    max_preauth_literal: int = 8192
    plaintext_auth_allowed: bool = True  # on a connection without TLS
    starttls_offered: bool = False
    # upstream.forward_client_ip: id -- the client's address goes upstream in an ID command.
    client_address: ClientAddress | None = None
