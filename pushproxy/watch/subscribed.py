"""The account's subscribed mailboxes, listed on a watcher's connection.

With LIST-EXTENDED (RFC 5258): ``LIST (SUBSCRIBED) "" "*"``, plus ``RETURN
(SPECIAL-USE)`` when the server has SPECIAL-USE (RFC 6154), so that ``\\Junk``
and ``\\Trash`` come with the names.  Otherwise ``LSUB "" "*"``; LSUB carries
no special-use attributes, so a server with SPECIAL-USE is also asked a plain
``LIST "" "*"`` (where RFC 6154 servers include them) and the attributes are
merged by name.  Every response is read by the one parser
(:func:`pushproxy.imap.data.parse_list`); which of the mailboxes are watched
is the extensions' business.
"""

from __future__ import annotations

import contextlib
import dataclasses

from pushproxy.imap.data import ListItem, MalformedResponse, Response, parse_list
from pushproxy.watch.upstream import WatcherProtocol
from pushproxy.watch.upstream_types import CommandFailed

__all__ = ["MAX_LISTED", "list_subscribed"]

MAX_LISTED = 10_000  # responses read from one listing; an account with more is cut here


def _items(untagged: list[Response], kind: str) -> list[ListItem]:
    items: list[ListItem] = []
    for resp in untagged[:MAX_LISTED]:
        if resp.kind != kind:
            continue
        with contextlib.suppress(MalformedResponse):
            items.append(parse_list(resp))
    return items


async def list_subscribed(conn: WatcherProtocol) -> list[ListItem]:
    """The subscribed mailboxes (``\\NonExistent`` ones included, as listed); CommandFailed on NO/BAD."""
    caps = conn.capabilities
    special_use = "SPECIAL-USE" in caps
    if "LIST-EXTENDED" in caps:
        command = b'LIST (SUBSCRIBED) "" "*"' + (b" RETURN (SPECIAL-USE)" if special_use else b"")
        result = await conn.command(command, check=True)
        # RFC 5258: only mailboxes carrying \Subscribed are subscribed (CHILDINFO may add parents).
        return [item for item in _items(result.untagged, "LIST") if item.has("\\Subscribed")]
    result = await conn.command(b'LSUB "" "*"', check=True)
    items = _items(result.untagged, "LSUB")
    if not special_use or not items:
        return items
    listed = await conn.command(b'LIST "" "*"')
    if not listed.ok:
        raise CommandFailed("LIST", listed.status)
    flags = {item.mailbox: item.attributes for item in _items(listed.untagged, "LIST")}
    gone = frozenset({"\\NonExistent"})  # subscribed, but LIST does not know it
    return [dataclasses.replace(item, attributes=item.attributes | flags.get(item.mailbox, gone)) for item in items]
