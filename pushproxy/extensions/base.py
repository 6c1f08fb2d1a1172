"""The extension API, and the guide for writing an extension.

An extension is an add-on in the spirit of mitmproxy's addons: one object, a
subclass of :class:`Extension`, with named hooks, and nothing else.  The core
(session, watchers, push pipeline, CLI, wiring) never names a protocol and
never calls a hook itself: the extension manager
(:class:`pushproxy.extensions.manager.ExtensionManager`) owns the extensions
and makes every call.  ``docs/example_extension.py`` is a whole extension in
one short file (``tests/unit/test_example_extension.py`` runs it); copy it.

How the proxy finds it (:mod:`pushproxy.extensions`): the push protocols that
ship with pushproxy are listed in :data:`pushproxy.extensions.EXTENSIONS`;
any other comes from an installed distribution's entry point, whose name is
the extension's name::

    [project.entry-points."pushproxy.extensions"]
    newcount = "example_extension:NewCount"

Installed is not loaded: the admin lists it in the config's ``extensions``
(default: pushproxy's own), e.g. ``extensions: [xapplepush, webpush, newcount]``.
An unlisted extension's section is refused; its subcommands and tables are
there anyway (they come before any config is read).  Its module must be cheap
to import (``pushproxy --help`` imports every one to add its subcommands):
heavy dependencies go into ``start``.

The life of an extension, in the order the manager calls it:

- ``section`` / ``settings``: its top-level key of the YAML (and its
  ``PUSHPROXY_<SECTION>__<KEY>`` variables) and the pydantic model that
  validates it (``extra="forbid"``: an unknown key is an error).  The core's
  :class:`~pushproxy.config.Config` knows no extension; the manager has every
  listed extension's section validated before it configures any, and
  ``check-config`` reports every bad key as ``<section>.<key>``.
- ``configure(config)``: read the section, typed, with
  ``config.section(self.section, MySettings)``; return False to stay out
  (disabled: listed, but off, e.g. ``webpush.enabled: false``).  A bad
  section raises ConfigError here (it is not caught).
- ``schema``: its tables, a part of the store's schema with its own numbered
  migrations (``pushproxy.store.schema``) and the query naming its
  registered accounts; its records and queries are in its package (a
  ``pushproxy.store.sql_base.Queries`` subclass, ``self.core.store.queries(cls)``).
  Its metrics are on the shared registry (``pushproxy.metrics.REGISTRY``).
- ``attach(core)``: :class:`Core` (the manager) gives ``config``, ``store``,
  ``registration_changed`` and ``relist_subscribed``; no I/O yet.
- ``start()`` / ``stop()``: build and stop senders and background tasks
  (every task you start is yours to cancel in ``stop``).  An extension whose
  ``start`` raises stops the proxy's start.
- ``capabilities``, ``pre_auth_capabilities``, ``commands``: the atoms it
  adds and the IMAP commands it answers (set them in ``__init__`` or in
  ``start``).  The session collects the whole command (literals included),
  waits until every earlier command has been answered (replies stay in tag
  order), calls the handler with a :class:`SessionContext`, writes the
  reply, then goes on with the stream.
- ``claims``: relayed commands the extension answers itself only sometimes
  (a :class:`Claim` per command name): ``wants(first_line, session)`` looks
  at the command's first line (up to its first literal, whose body it never
  sees) and, when True, the command is collected and answered by
  ``handler`` like a command of ``commands``; otherwise it is relayed
  unchanged (e.g. SETMETADATA of ``/private/devicetoken`` answered by the
  proxy, every other SETMETADATA passed through).
- ``observed_commands`` / ``command_succeeded(name, session)``: client
  commands relayed upstream (e.g. SUBSCRIBE) whose tagged OK the extension
  wants to hear of; the relay itself is not delayed.
- ``watched_mailboxes(account)`` / ``watched_accounts()`` /
  ``watched_mailboxes_of(accounts)``: which mailboxes of an account (of every
  account; of a batch of them, read with one query) the extension wants watched (the manager merges every
  extension's :class:`WatchRequest`).  A request may also ask for the
  account's subscribed mailboxes: its watcher then lists them when it
  connects, every ``subscribed_refresh`` seconds and after
  ``core.relist_subscribed(account)``, and hands them to
  ``subscribed_listed(account, items)``.
- ``on_event(event)`` / ``flush()``: every mail event, after the push
  pipeline's de-duplication and ``\\Seen`` skip (``pushproxy.push.pipeline``).
- ``session_closed(session)``: once per client session that ends.
- ``check_files(report)``: what ``check-config`` checks of its files.
- ``cli(subparsers)``: its admin subcommands (a class method: it runs before
  any config is read; see :func:`admin_group`, :func:`admin_command`).

The one error policy (``pushproxy/extensions/safecall.py``): a hook that
raises is logged once with the extension's and the hook's name (the
exception's type and place: never its text, never a traceback), counted in
``pushproxy_extension_errors_total{extension,hook}``, and goes no further:
the other extensions and the relay carry on, the caller gets the neutral
answer (no watch request, a command ``NO [UNAVAILABLE]``).  A store fault
(``StoreUnavailable``) is the exception: raise it from a command or a watch
query and the core handles it (``NO [UNAVAILABLE] <reason>``; the watcher
is kept); the store logs it once per episode, so do not log it again.

Writing one (what the three protocols here needed; ``deltachat/`` is the
newest layout):

- ``addon.py`` is the one :class:`Extension`; handlers, senders and stores are
  plain objects it builds in ``start``.  ``settings.py`` (the section),
  ``schema.py`` + ``store.py`` (a numbered part, a ``Queries`` subclass),
  ``metrics.py`` (documented in its docstring: a test checks every metric
  is), ``admin.py`` (the CLI).  A shipped protocol's keys go into
  ``deploy/pushproxy.example.yaml`` (a test checks).
- Claim a command rather than own it when clients also send it for the
  upstream (``claims``): decide on the first line only, with the sans-IO
  readers (``pushproxy.imap``), and let the rest pass byte for byte.
  ``ctx.upstream_capabilities`` says what the upstream has.  A command valid
  after login only starts with :func:`login_and_parse` (the account and its
  parsed arguments, or the BAD reply); :func:`require_login` when it takes none.
- Short tasks you spawn (a push, a watcher update) go into a
  ``pushproxy.background.TaskSet`` (kept until done), closed in ``stop``.
- Secrets (tokens, endpoints) are vault-encrypted with associated data naming
  the row, found by ``vault.keyed_hash``; logs and the CLI show a prefix of
  that hash, never the secret.
- Record the mailbox baseline (``extensions.baseline.record_baseline``) before
  answering a registration OK, and call ``core.registration_changed(account,
  ctx.session_id)`` after it: the session's credentials then become the
  watcher's and mail from that moment on is pushed.
- ``on_event`` must return quickly: queue the push and send it from your own
  task (coalesce per target, bounded retries with ``pushproxy.retry``, a
  documented drop rule and a metric for what is dropped).  When the push
  service says a target is gone, remove it through your queries and call
  ``core.registration_changed(account)``: the watcher stops when nothing
  else needs the account.
- Test with the real client where one exists (``tests/integration``), plus a
  raw-IMAP replay of its exact forms, and unit-test the handlers on a real
  ``SqliteStore`` with a fake :class:`SessionContext`.
"""

from __future__ import annotations

import argparse
from abc import ABC
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

from pushproxy.imap.parse import Command, StatusResponse

if TYPE_CHECKING:
    from pydantic import BaseModel

    from pushproxy.config import Config
    from pushproxy.config_check import FileReport
    from pushproxy.events import MailEvent
    from pushproxy.imap.data import ListItem
    from pushproxy.store.base import Store
    from pushproxy.store.schema import SchemaPart


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


@dataclass(frozen=True, slots=True)
class Claim:
    """A relayed command an extension answers itself when ``wants`` says so (``Extension.claims``).

    ``wants(first_line, session)`` gets the command's first line exactly as
    the client sent it (tag and name included, ending with its first
    literal's ``{n}`` / ``{n+}`` if it has one) once the client is
    authenticated; it must be cheap (it runs on the relay path) and should
    not raise (an exception counts as False, logged once).  Read the line
    with the sans-IO core (``pushproxy.imap``).
    """

    wants: Callable[[bytes, SessionContext], bool]
    handler: Handler


T = TypeVar("T")


def login_and_parse(
    ctx: SessionContext, command: str, parse: Callable[[list[Any]], T], args: list[Any], error: type[Exception]
) -> tuple[str, T] | Reply:
    """The account and the parsed arguments of a command only valid after login, or its BAD reply."""
    account = require_login(ctx, command)
    if isinstance(account, Reply):
        return account
    try:
        return account, parse(args)
    except error as exc:
        return Reply("BAD", f"Invalid {command} arguments: {exc}")


def require_login(ctx: SessionContext, command: str) -> str | Reply:
    """The logged-in account, or the BAD reply of a command that is only valid after login."""
    if ctx.account is None:
        return Reply("BAD", f"{command} is only valid after login")
    return ctx.account


RegistrationChanged = Callable[[str, str | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WatchRequest:
    """Mailboxes an extension wants watched for one account, and those where it wants every change."""

    mailboxes: tuple[str, ...]
    changes: tuple[str, ...] = ()  # also Expunge / FlagChange events there
    # False: this request alone does not start a watcher when the proxy starts (e.g. a
    # registration still being verified); the user's next login does.
    at_startup: bool = True
    # Not None: also list the account's subscribed mailboxes on its watcher's connection (at
    # connect, then every this many seconds) and hand them to ``subscribed_listed``.
    subscribed_refresh: float | None = None
    # True: NewMail events carry the whole message for a few small new messages (MessageInfo.body).
    bodies: bool = False


class Core(Protocol):
    """What the core gives an extension at ``start``."""

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    async def registration_changed(self, account: str, session_id: str | None = None) -> None:
        """Tell the watchers that the account's registrations changed (added, renewed, removed)."""

    def relist_subscribed(self, account: str) -> None:
        """The account's subscribed mailboxes may have changed: its watcher lists them again soon."""


@dataclass
class Extension(ABC):  # noqa: B024 - every hook has a default; subclasses override what they need
    """Base class; subclasses set the fields in ``__init__`` or as class attributes."""

    name: str = "extension"
    capabilities: tuple[bytes, ...] = ()  # advertised once authenticated
    pre_auth_capabilities: tuple[bytes, ...] = ()  # advertised before login too
    commands: dict[str, Handler] = field(default_factory=dict)  # upper-case name -> handler
    # Relayed client commands (upper case) whose tagged OK calls command_succeeded.
    observed_commands: tuple[str, ...] = ()
    # Relayed client commands (upper case) it answers itself when their first line says so.
    claims: dict[str, Claim] = field(default_factory=dict)

    core: Core = field(init=False, repr=False)  # set by attach()

    section: ClassVar[str | None] = None  # its top-level YAML key (and PUSHPROXY_<SECTION>__<KEY> variables)
    settings: ClassVar[type[BaseModel] | None] = None  # the model that validates that section
    schema: ClassVar[SchemaPart | None] = None  # its tables: a numbered part of the store's schema

    def configure(self, config: Config) -> bool:
        """Read the config; False keeps the extension out of this proxy (disabled)."""
        return True

    def attach(self, core: Core) -> None:
        """Receive the core's services (store, registration_changed); no I/O here."""
        self.core = core

    async def start(self) -> None:
        """Build senders and background tasks; called once, before the listeners open."""
        return None

    async def stop(self) -> None:
        """Stop what ``start`` built (after the listeners and watchers stopped)."""
        return None

    async def watched_mailboxes(self, account: str) -> WatchRequest | None:
        """The account's mailboxes this extension wants watched; None when it has nothing for it."""
        return None

    async def watched_accounts(self) -> dict[str, WatchRequest]:
        """:meth:`watched_mailboxes` for every account it has registrations of (the start-up path)."""
        return {}

    async def watched_mailboxes_of(self, accounts: Sequence[str]) -> dict[str, WatchRequest]:
        """:meth:`watched_mailboxes` of many accounts (a lease round's batch of starts or takeovers), the
        accounts without a request left out.  Override it with one store query: this default asks per account."""
        requests = {}
        for account in accounts:
            request = await self.watched_mailboxes(account)
            if request is not None:
                requests[account] = request
        return requests

    async def subscribed_listed(self, account: str, items: Sequence[ListItem]) -> None:
        """The account's subscribed mailboxes, as its watcher just listed them (see ``WatchRequest``)."""
        return None

    async def command_succeeded(self, name: str, session: SessionContext) -> None:
        """A client command of ``observed_commands`` was relayed and upstream answered OK."""
        return None

    async def on_event(self, event: MailEvent) -> None:
        """A mail event, already de-duplicated and without ``\\Seen`` messages; must not block for long."""
        return None

    async def flush(self) -> None:
        """Wait until what ``on_event`` queued has been sent (tests, shutdown)."""
        return None

    async def session_closed(self, session: SessionContext) -> None:
        """Called once when a client session ends (after login or not)."""
        return None

    def check_files(self, report: FileReport) -> None:
        """``check-config``: check the files its section names (``report.readable`` / ``generated``)."""
        return None

    @classmethod
    def cli(cls, subparsers: argparse._SubParsersAction[Any]) -> None:
        """Add admin subcommands (see :func:`admin_command`)."""
        return None


AdminRun = Callable[[Any, argparse.Namespace], int]


def admin_group(subparsers: argparse._SubParsersAction[Any], name: str, help: str) -> argparse._SubParsersAction[Any]:
    """A subcommand with actions (``pushproxy <name> <action>``)."""
    return subparsers.add_parser(name, help=help).add_subparsers(dest="action", required=True, metavar="ACTION")


def admin_command(
    group: argparse._SubParsersAction[Any], name: str, help: str, run: AdminRun
) -> argparse.ArgumentParser:
    """An admin subcommand: ``--config`` is added; ``run(config, args)`` returns the exit code."""
    parser = group.add_parser(name, help=help)
    parser.add_argument("--config", "-c", type=Path, required=True, help="YAML configuration file")
    parser.set_defaults(run=run)
    return parser


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
