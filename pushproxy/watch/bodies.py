"""The message itself, for a few small new messages: what WebPush sends whole when the push fits.

Asked for by the account's watch spec (``WatchSpec.bodies``); fetched with
``BINARY.PEEK[]`` where upstream has BINARY, else ``BODY.PEEK[]`` (never
setting ``\\Seen``), as a partial fetch: a longer message comes back cut at the
limit and is left out.  A refused fetch (e.g. ``[UNKNOWN-CTE]``) leaves the
push with the envelope only.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import Literal

from pushproxy.events import NewMail
from pushproxy.imap.data import MalformedResponse
from pushproxy.imap.fetch import parse_fetch
from pushproxy.watch.tracker import MailboxTracker, Outcome
from pushproxy.watch.upstream import WatcherProtocol

__all__ = ["BODY_FETCH_LIMIT", "BODY_FETCH_MAX_MESSAGES", "attach_bodies"]

log = logging.getLogger("pushproxy.watch.watcher")

# WebPush sends a new message whole when the push fits 3,993 bytes of plaintext (draft
# -01): fetch at most this much of at most this many messages.
BODY_FETCH_LIMIT = 3993
BODY_FETCH_MAX_MESSAGES = 4


async def attach_bodies(conn: WatcherProtocol, tracker: MailboxTracker, outcome: Outcome) -> None:
    """The new messages of ``outcome``'s events with their bodies, where small enough (in place)."""
    item = "BINARY" if "BINARY" in conn.capabilities else "BODY"
    section: Literal["BINARY[]", "BODY[]"] = "BINARY[]" if item == "BINARY" else "BODY[]"
    for i, event in enumerate(outcome.events):
        if not isinstance(event, NewMail) or not 0 < len(event.messages) <= BODY_FETCH_MAX_MESSAGES:
            continue
        uids = b",".join(b"%d" % m.uid for m in event.messages)
        result = await conn.command(b"UID FETCH %s (UID %s.PEEK[]<0.%d>)" % (uids, item.encode(), BODY_FETCH_LIMIT + 1))
        bodies: dict[int, bytes] = {}
        for resp in result.untagged:
            fetched = None
            if resp.kind == "FETCH":
                with contextlib.suppress(MalformedResponse):
                    fetched = parse_fetch(resp.raw)
            if fetched is None or section not in fetched.sections:
                tracker.note(resp)  # e.g. a flag change reported meanwhile
                continue
            data = fetched.sections[section]
            if fetched.uid is not None and data is not None and len(data) <= BODY_FETCH_LIMIT:
                bodies[fetched.uid] = data
        if not result.ok:
            log.debug("watcher %s: %s fetch refused: %s", event.account, section, result.status.text)
        if bodies:
            messages = tuple(
                replace(m, body=bodies[m.uid], body_item=section) if m.uid in bodies else m for m in event.messages
            )
            outcome.events[i] = replace(event, messages=messages)
