"""The mailbox state at registration time, taken on the user's own connection.

A watcher that sees a mailbox for the first time can only record "everything
up to now is old".  If it did that on its own, mail arriving between the
registration and the watcher's first STATUS would never be pushed.  So the
extensions record the baseline (UIDVALIDITY, UIDNEXT) with a STATUS on the
client's connection before answering OK; the watcher then finds it and pushes
whatever came after.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

from pushproxy.extensions.base import SessionContext, UpstreamCommandError
from pushproxy.imap.response import quote
from pushproxy.imap.utf7 import encode_mailbox
from pushproxy.store.base import MailboxState, Store

log = logging.getLogger("pushproxy.watch.baseline")

_UIDNEXT = re.compile(rb"UIDNEXT (\d+)", re.IGNORECASE)
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)", re.IGNORECASE)


def parse_status(untagged: list[bytes]) -> tuple[int, int] | None:
    """(uidvalidity, uidnext) from ``* STATUS box (UIDNEXT n UIDVALIDITY v)``."""
    for line in untagged:
        if line[:9].upper() != b"* STATUS ":
            continue
        items = line[line.rfind(b"(") :]
        nxt, val = _UIDNEXT.search(items), _UIDVALIDITY.search(items)
        if nxt and val:
            return int(val.group(1)), int(nxt.group(1))
    return None


async def record_baseline(
    ctx: SessionContext, store: Store, account: str, mailboxes: Iterable[str], timeout: float = 15.0
) -> int:
    """Store the state of mailboxes that have none yet; returns how many were recorded.

    Best effort: a failure only means the watcher takes its own baseline later.
    """
    recorded = 0
    for box in mailboxes:
        try:
            if await store.get_mailbox_state(account, box) is not None:
                continue
            untagged, status = await ctx.upstream_command(
                b"STATUS " + quote(encode_mailbox(box)) + b" (UIDNEXT UIDVALIDITY)", timeout=timeout
            )
            if status.status != b"OK":
                continue
            parsed = parse_status(untagged)
            if parsed is None:
                continue
            uidvalidity, uidnext = parsed
            await store.put_mailbox_state(MailboxState(account, box, uidvalidity, uidnext, None, time.time()))
            recorded += 1
        except UpstreamCommandError:
            return recorded
        except Exception as exc:
            log.warning("baseline of a mailbox of %s not recorded (%s)", account, type(exc).__name__)
    return recorded
