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
import time
from collections.abc import Iterable

from pushproxy.accounts import canonical_mailbox
from pushproxy.extensions.base import SessionContext, UpstreamCommandError
from pushproxy.imap.commands import mailbox_arg
from pushproxy.imap.data import MalformedResponse, parse_status, read_response
from pushproxy.store.base import MailboxState, Store, StoreUnavailable

log = logging.getLogger("pushproxy.extensions.baseline")


def status_baseline(untagged: list[bytes], mailbox: str) -> tuple[int, int] | None:
    """(uidvalidity, uidnext) of ``mailbox`` from the untagged responses of a STATUS command."""
    wanted = canonical_mailbox(mailbox)
    for raw in untagged:
        try:
            resp = read_response(raw)
            if resp.kind != "STATUS":
                continue
            info = parse_status(resp)
        except MalformedResponse:
            continue
        if info.mailbox == wanted and info.uidvalidity is not None and info.uidnext is not None:
            return info.uidvalidity, info.uidnext
    return None


async def record_baseline(
    ctx: SessionContext,
    store: Store,
    account: str,
    mailboxes: Iterable[str],
    timeout: float = 15.0,
    unsaved: list[MailboxState] | None = None,
) -> int:
    """Store the state of mailboxes that have none yet; returns how many were recorded.

    Best effort: a failure only means the watcher takes its own baseline later.
    ``unsaved``: where the states taken but not stored (the store could not
    write them) go, for a caller that writes them later (:func:`save_baseline`).
    """
    recorded = 0
    for box in mailboxes:
        state = None
        try:
            if await store.get_mailbox_state(account, box) is not None:
                continue
            untagged, status = await ctx.upstream_command(
                b"STATUS " + mailbox_arg(box) + b" (UIDNEXT UIDVALIDITY)", timeout=timeout
            )
            if status.status != b"OK":
                continue
            parsed = status_baseline(untagged, box)
            if parsed is None:
                continue
            uidvalidity, uidnext = parsed
            state = MailboxState(account, box, uidvalidity, uidnext, None, time.time())
            await store.put_mailbox_state(state)
            recorded += 1
        except UpstreamCommandError:
            return recorded
        except StoreUnavailable as exc:  # the store logged the episode
            log.debug("baseline of a mailbox of %s not recorded (%s)", account, exc.reason)
            if state is not None and unsaved is not None:
                unsaved.append(state)
        except Exception as exc:
            log.warning("baseline of a mailbox of %s not recorded (%s)", account, type(exc).__name__)
    return recorded


async def save_baseline(store: Store, states: Iterable[MailboxState]) -> None:
    """Write baselines :func:`record_baseline` could not, where a mailbox still has no state.

    Raises StoreUnavailable like any store write (the caller retries).
    """
    for state in states:
        if await store.get_mailbox_state(state.account, state.mailbox) is None:
            await store.put_mailbox_state(state)
