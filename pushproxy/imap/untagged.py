"""What a command's untagged responses say, read for its caller (sans-IO): one STATUS, the highest UID, bodies.

Each reader also returns the responses it did not take, in order, so that a
caller hands them on (the watcher's tracker notes an ``EXISTS`` or a flag
change the server reported meanwhile); a malformed response is never taken.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from pushproxy.imap.data import MalformedResponse, Response, StatusInfo, parse_status
from pushproxy.imap.fetch import parse_fetch

__all__ = ["fetched_sections", "highest_uid", "status_of"]


def status_of(mailbox: str, responses: Iterable[Response]) -> tuple[StatusInfo | None, list[Response]]:
    """The STATUS of ``mailbox`` (the last, if several), and every other response."""
    found: StatusInfo | None = None
    others: list[Response] = []
    for resp in responses:
        if resp.kind == "STATUS":
            with contextlib.suppress(MalformedResponse):
                info = parse_status(resp)
                if info.mailbox == mailbox:
                    found = info
                    continue
        others.append(resp)
    return found, others


def highest_uid(responses: Iterable[Response]) -> int:
    """The highest UID the FETCH responses name (0 when none does)."""
    highest = 0
    for resp in responses:
        if resp.kind == "FETCH":
            with contextlib.suppress(MalformedResponse):
                highest = max(highest, parse_fetch(resp.raw).uid or 0)
    return highest


def fetched_sections(
    responses: Iterable[Response], section: str, limit: int
) -> tuple[dict[int, bytes], list[Response]]:
    """Each FETCH response's ``section`` (e.g. ``BINARY[]``) by UID where at most ``limit`` bytes long, and every
    response without that section (another FETCH, a flag change reported meanwhile, ...)."""
    found: dict[int, bytes] = {}
    others: list[Response] = []
    for resp in responses:
        fetched = None
        if resp.kind == "FETCH":
            with contextlib.suppress(MalformedResponse):
                fetched = parse_fetch(resp.raw)
        if fetched is None or section not in fetched.sections:
            others.append(resp)
            continue
        data = fetched.sections[section]
        if fetched.uid is not None and data is not None and len(data) <= limit:
            found[fetched.uid] = data
    return found, others
