"""What the proxy does with a client command, by its name: one function per command (aiosmtpd's model).

The command router (:mod:`pushproxy.proxy.routing`) reads the client's
commands and knows how to carry on with one -- relay it, keep it whole for an
answer, drop it; this module says which, per command name.  A command with no
route is relayed upstream unchanged (most are); :data:`ROUTES` names the few
the proxy handles itself, and :func:`routes_for` adds the relayed commands an
extension observes (its tagged OK is reported) or claims (taken over when the
extension wants that one).  A route reads the command (``tag``, ``name``) and
the session's facts and acts only through the router's methods
(:class:`Routed`); the router's state is the router's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

from pushproxy.extensions.base import Reply
from pushproxy.imap.capabilities import ConnectionFacts
from pushproxy.imap.framing import Line
from pushproxy.proxy.ledger import CommandLedger
from pushproxy.proxy.local import LocalAnswers
from pushproxy.proxy.session_io import SessionSettings

__all__ = ["ROUTES", "Route", "Routed", "route_extension", "routes_for"]


class Routed(Protocol):
    """The command router, as a route sees it: the command read, the session's facts, what to do with it."""

    @property
    def tag(self) -> bytes: ...
    @property
    def name(self) -> bytes:
        """Upper-cased, as it came off the wire."""

    @property
    def facts(self) -> ConnectionFacts: ...
    @property
    def settings(self) -> SessionSettings: ...
    @property
    def ledger(self) -> CommandLedger: ...
    @property
    def local(self) -> LocalAnswers:
        """The proxy's own answers, in command order."""

    def forward(self, ev: Line, *, observed: bool = False) -> None:
        """Relay the command upstream as it comes; ``observed``: report its tagged OK to the extensions."""

    def forward_login(self, ev: Line) -> None:
        """Relay a LOGIN / AUTHENTICATE, its credentials captured on the way."""

    def intercept(self, ev: Line) -> None:
        """Read the whole command (literals included) and have an extension answer it."""

    def rewrite(self, ev: Line) -> None:
        """Read the whole command and send it upstream rewritten (ID before login)."""

    def discard(self, ev: Line) -> None:
        """Drop the rest of a command the proxy answers (its literal and continuation lines)."""

    def claimed(self, ev: Line) -> bool:
        """Whether the extension claiming this command takes this one over (``Extension.claims``)."""

    def wait_for_drain(self, ev: Line) -> None:
        """The command goes again once nothing is in flight upstream."""


Route = Callable[[Routed, Line], None]


def route_observed(router: Routed, ev: Line) -> None:
    """Relayed like any command; an extension hears of its tagged OK (``observed_commands``)."""
    router.forward(ev, observed=router.facts.authenticated)


def route_claimed(router: Routed, ev: Line) -> None:
    """Answered by an extension when its claim wants this one (``Extension.claims``), else relayed."""
    if router.facts.authenticated and router.claimed(ev):
        router.intercept(ev)
    else:
        router.forward(ev)


def route_extension(router: Routed, ev: Line) -> None:
    """An extension's own command (``Extension.commands``): answered by it, after login only."""
    if not router.facts.authenticated:
        router.discard(ev)
        router.local.reply(router.tag, Reply("BAD", f"{router.name.decode()} is only valid after login"))
        return
    router.intercept(ev)


def route_starttls(router: Routed, ev: Line) -> None:
    router.discard(ev)
    router.local.starttls(router.tag, router.settings.starttls_offered)


def route_compress(router: Routed, ev: Line) -> None:
    router.discard(ev)
    router.local.reply(router.tag, Reply("NO", "Compression is not available through this proxy"))


def route_id(router: Routed, ev: Line) -> None:
    if router.facts.authenticated:
        router.forward(ev)
        return
    # Rewritten before it goes: a client must not choose the address upstream
    # records (x- fields), and with forward_client_ip: id it carries the proxy's.
    router.rewrite(ev)


def route_login(router: Routed, ev: Line) -> None:
    refusal = CommandLedger.login_refusal(router.facts)
    if refusal is not None:
        router.discard(ev)
        router.local.reply(router.tag, refusal)
        return
    if router.ledger:
        # Forwarded only when nothing else is in flight, so that the next
        # tagged response from upstream is its answer, whatever the tags.
        router.wait_for_drain(ev)
        return
    router.forward_login(ev)


ROUTES: dict[bytes, Route] = {
    b"LOGIN": route_login,
    b"AUTHENTICATE": route_login,
    b"STARTTLS": route_starttls,
    b"COMPRESS": route_compress,
    b"ID": route_id,
}


@functools.cache
def routes_for(observed: frozenset[bytes], claimed: frozenset[bytes] = frozenset()) -> dict[bytes, Route]:
    """:data:`ROUTES` plus the commands extensions observe or claim (one table lookup per command)."""
    routes: dict[bytes, Route] = dict.fromkeys(observed, route_observed)
    routes.update(dict.fromkeys(claimed, route_claimed))
    routes.update(ROUTES)  # the proxy's own handling of a command comes first
    return routes
