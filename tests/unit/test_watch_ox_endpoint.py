"""POST /events/dovecot-ox: Dovecot's push_notification ox driver documents become NewMail events."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from pushproxy.admin import AdminServer
from pushproxy.events import MailEvent, NewMail
from pushproxy.watch.dovecot_ox import MAX_BODY, OX_PATH, OxEventError, install_ox_endpoint, parse_ox_event

SECRET = "s3cret-shared"
DOC: dict[str, Any] = {
    "user": "Alice@Example.org",
    "imap-uidvalidity": 123412341,
    "imap-uid": 2345,
    "folder": "INBOX",
    "event": "MessageNew",
    "from": "=?utf-8?q?=C3=84?= <alice@barfoo.org>",
    "subject": "Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?=",
    "snippet": "Hey guys\nThis is only a test...",
    "unseen": 2,
}


def basic(password: str, user: str = "dovecot") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _ready() -> dict[str, bool]:
    return {"ok": True}


class Submitted(list[MailEvent]):
    """Stands in for the push pipeline."""

    def submit(self, event: MailEvent) -> None:
        self.append(event)


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[MailEvent]]]:
    events = Submitted()
    admin = AdminServer("127.0.0.1:0", _ready)
    install_ox_endpoint(admin, SECRET, events)  # type: ignore[arg-type]
    await admin.start()
    try:
        yield admin.url + OX_PATH, events
    finally:
        await admin.stop()


async def post(url: str, body: bytes, auth: str | None) -> int:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if auth is not None:
        headers["Authorization"] = auth
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        return resp.status


async def test_valid_event_is_emitted(endpoint: tuple[str, list[MailEvent]]) -> None:
    url, events = endpoint
    assert await post(url, json.dumps(DOC).encode(), basic(SECRET)) == 204
    assert await post(url, json.dumps({**DOC, "imap-uid": 2346}).encode(), f"Bearer {SECRET}") == 204
    assert len(events) == 2
    ev = events[0]
    assert isinstance(ev, NewMail)
    assert (ev.account, ev.mailbox, ev.uids, ev.source) == ("alice@example.org", "INBOX", (2345,), "dovecot-ox")
    env = ev.messages[0].envelope or b""
    assert b'"Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?="' in env and b'"alice" "barfoo.org"' in env
    assert not ev.messages[0].seen


@pytest.mark.parametrize(
    "auth",
    [None, basic("wrong"), f"Bearer {SECRET}x", "Bearer ", basic(SECRET)[:-2] + "!!", "Digest abc", f"Basic {SECRET}"],
)
async def test_wrong_or_missing_secret(endpoint: tuple[str, list[MailEvent]], auth: str | None) -> None:
    url, events = endpoint
    assert await post(url, json.dumps(DOC).encode(), auth) == 401
    assert events == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b"\xff\xfe",
        json.dumps({k: v for k, v in DOC.items() if k != "user"}).encode(),
        json.dumps({k: v for k, v in DOC.items() if k != "imap-uid"}).encode(),
        json.dumps({**DOC, "imap-uid": "abc"}).encode(),
        json.dumps({**DOC, "imap-uid": 0}).encode(),
        json.dumps({**DOC, "imap-uid": True}).encode(),
        json.dumps({**DOC, "folder": 7}).encode(),
    ],
)
async def test_malformed(endpoint: tuple[str, list[MailEvent]], body: bytes) -> None:
    url, events = endpoint
    assert await post(url, body, basic(SECRET)) == 400
    assert events == []


async def test_too_large(endpoint: tuple[str, list[MailEvent]]) -> None:
    url, events = endpoint
    big = json.dumps({**DOC, "snippet": "x" * (MAX_BODY + 10)}).encode()
    assert await post(url, big, basic(SECRET)) == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
        for _ in range(10):
            yield b" " * 10_000

    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=chunks(), headers={"Authorization": basic(SECRET)}) as resp,
    ):
        assert resp.status == 413
    assert events == []


async def test_other_events_are_accepted_and_ignored(endpoint: tuple[str, list[MailEvent]]) -> None:
    url, events = endpoint
    assert await post(url, json.dumps({**DOC, "event": "MessageRead"}).encode(), basic(SECRET)) == 204
    assert events == []


def test_parse_ox_event() -> None:
    ev = parse_ox_event({**DOC, "folder": "inbox", "unseen": 0, "imap-uid": "17"})
    assert ev is not None and ev.mailbox == "INBOX" and ev.uids == (17,)
    assert ev.uidvalidity == DOC["imap-uidvalidity"]  # the push ledger keys on it, like the watchers' events
    assert ev.messages[0].seen  # no unseen message left in the folder: this one was filed as read
    minimal = parse_ox_event({"user": "bob", "event": "messagenew", "folder": "Sent Messages", "imap-uid": 1})
    assert minimal is not None and minimal.messages[0].envelope == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert minimal.uidvalidity == 0  # not said: unknown
    with pytest.raises(OxEventError):
        parse_ox_event({**DOC, "user": "  "})
    with pytest.raises(OxEventError):
        parse_ox_event({**DOC, "imap-uid": 2**32})
    with pytest.raises(ValueError):
        install_ox_endpoint(AdminServer("", _ready), "", Submitted())  # type: ignore[arg-type]
