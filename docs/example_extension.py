"""A whole pushproxy extension in one file: the example of the author's guide in ``pushproxy/extensions/base.py``.

``XNEWCOUNT`` (after login) answers ``* XNEWCOUNT <n>``: how many new messages
arrived in the account's watched mailboxes since the client first asked.  The
first ``XNEWCOUNT`` of an account asks the watchers to watch it.  Its section
of the YAML is ``newcount`` (``enabled``, ``mailboxes``), also settable as
``PUSHPROXY_NEWCOUNT__ENABLED=true``.

To install it, make it a package whose ``pyproject.toml`` declares the entry point::

    [project.entry-points."pushproxy.extensions"]
    newcount = "example_extension:NewCount"

and list it in the config (installed is not loaded; pushproxy's own are the default)::

    extensions: [xapplepush, webpush, deltachat, newcount]
    newcount:
      enabled: true

``tests/unit/test_example_extension.py`` runs it in a real session and through
the push pipeline's fan-out.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pushproxy.config import Config
from pushproxy.events import MailEvent, NewMail
from pushproxy.extensions.base import Extension, Reply, SessionContext, WatchRequest, require_login
from pushproxy.imap.parse import Command


class NewCountSettings(BaseModel):
    """The ``newcount`` section; unknown keys are errors, reported as ``newcount.<key>``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    mailboxes: list[str] = Field(default_factory=lambda: ["INBOX"])


class NewCount(Extension):
    section = "newcount"
    settings = NewCountSettings

    def __init__(self) -> None:
        super().__init__(name="newcount", capabilities=(b"XNEWCOUNT",), commands={"XNEWCOUNT": self.xnewcount})
        self.options = NewCountSettings()
        self.asked: set[str] = set()  # accounts whose client asked: they are watched
        self.counts: dict[str, int] = {}

    def configure(self, config: Config) -> bool:
        self.options = config.section(self.section, NewCountSettings)
        return self.options.enabled

    async def watched_mailboxes(self, account: str) -> WatchRequest | None:
        return WatchRequest(tuple(self.options.mailboxes)) if account in self.asked else None

    async def on_event(self, event: MailEvent) -> None:
        if isinstance(event, NewMail) and event.account in self.asked:
            self.counts[event.account] = self.counts.get(event.account, 0) + len(event.uids)

    async def xnewcount(self, cmd: Command, ctx: SessionContext) -> Reply:
        account = require_login(ctx, "XNEWCOUNT")
        if isinstance(account, Reply):
            return account
        if account not in self.asked:
            self.asked.add(account)
            await self.core.registration_changed(account, ctx.session_id)  # its watcher starts now
        ctx.reply_untagged(b"XNEWCOUNT %d" % self.counts.get(account, 0))
        return Reply("OK", "XNEWCOUNT completed.")
