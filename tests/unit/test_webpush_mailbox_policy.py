"""``webpush.mailboxes`` (issue 13, point 2): the LIST / LSUB answer -> watched set policy, the
listing on a watcher's connection, the session hook after (UN)SUBSCRIBE, and the settings."""

from __future__ import annotations

import asyncio

import pytest

from pushproxy.config import Config, ConfigError
from pushproxy.extensions.base import Extension, SessionContext
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.extensions.webpush.mailboxes import WatchedMailboxes, pick_subscribed
from pushproxy.extensions.webpush.settings import webpush_settings
from pushproxy.imap.data import ListItem, parse_list, read_response
from pushproxy.imap.utf7 import encode_mailbox
from pushproxy.proxy.session import Session, SessionSettings
from pushproxy.watch.subscribed import list_subscribed
from pushproxy.watch.upstream_types import CommandFailed, CommandResult
from tests.support.sessions import FakeIO, Sink


def listing(*lines: bytes) -> list[ListItem]:
    return [parse_list(read_response(line + b"\r\n")) for line in lines]


DOVECOT = listing(
    b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX',
    b'* LIST (\\HasNoChildren \\Subscribed \\Junk) "/" Junk',
    b'* LIST (\\HasNoChildren \\Subscribed \\Trash) "/" Trash',
    b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" "Sent Messages"',
    b'* LIST (\\Subscribed \\NonExistent) "/" Gone',
    b'* LIST (\\Noselect \\HasChildren \\Subscribed) "/" Parent',
    b'* LIST (\\HasNoChildren \\Subscribed) "/" Parent/Child',
    b'* LIST (\\HasNoChildren \\Subscribed) "/" "Entw&APw-rfe"',
    b'* LIST (\\HasNoChildren \\Subscribed) "/" "work"',
)


def test_policy_excludes_junk_trash_nonexistent_and_keeps_names() -> None:
    picked = pick_subscribed(DOVECOT, 50)
    assert picked == ("INBOX", "Entwürfe", "Parent/Child", "Sent Messages", "work")
    # Names are kept exactly: the non-ASCII one goes back on the wire as it was listed.
    assert encode_mailbox("Entwürfe") == "Entw&APw-rfe"


def test_inbox_is_always_watched_even_unsubscribed_or_flagged() -> None:
    assert pick_subscribed([], 50) == ("INBOX",)
    assert pick_subscribed(listing(b'* LSUB () "/" Notes'), 50) == ("INBOX", "Notes")
    # An INBOX flagged \Junk (a broken server) is still INBOX: always watched.
    assert pick_subscribed(listing(b'* LIST (\\Subscribed \\Junk) "/" inbox'), 50) == ("INBOX",)
    # Case-insensitive attributes (RFC 9051: flags are case-insensitive).
    assert pick_subscribed(listing(b'* LIST (\\SUBSCRIBED \\jUnK) "/" Spam'), 50) == ("INBOX",)


def test_limit_keeps_inbox_first() -> None:
    items = listing(*(b'* LIST (\\Subscribed) "/" box%02d' % i for i in range(10)))
    assert pick_subscribed(items, 3) == ("INBOX", "box00", "box01")
    assert pick_subscribed(items, 0) == ("INBOX",)


def test_watched_mailboxes_per_account_and_the_delivery_filter() -> None:
    watched = WatchedMailboxes("subscribed", 50)
    assert watched.subscribed and watched.of("alice") == ("INBOX",)
    assert watched.pushed("alice", "INBOX") and watched.pushed("alice", "inbox") and not watched.pushed("alice", "work")
    assert watched.listed("alice", DOVECOT)[-1] == "work"
    assert watched.pushed("alice", "work") and not watched.pushed("alice", "Junk")
    assert not watched.pushed("alice", "Work")  # other names are case-sensitive
    assert watched.of("bob") == ("INBOX",)
    watched.forget("alice")
    assert watched.of("alice") == ("INBOX",)

    pinned = WatchedMailboxes(["INBOX", "Junk"], 50)
    assert not pinned.subscribed and pinned.listed("alice", DOVECOT) == ("INBOX", "Junk")
    assert pinned.pushed("alice", "Junk") and not pinned.pushed("alice", "work")


def test_settings() -> None:
    assert webpush_settings(Config()).mailboxes == "subscribed"
    assert webpush_settings(Config()).mailboxes_refresh == 900.0
    assert webpush_settings(Config(webpush={"mailboxes": ["Notes"]})).mailboxes == ["INBOX", "Notes"]
    assert webpush_settings(Config(webpush={"mailboxes": ["inbox", "Notes"]})).mailboxes == ["inbox", "Notes"]
    assert webpush_settings(Config(webpush={"mailboxes_refresh": "5m"})).mailboxes_refresh == 300.0
    with pytest.raises(ConfigError, match=r"webpush\.mailboxes"):  # validated by the section's model when read
        webpush_settings(Config(webpush={"mailboxes": "everything"}))


# --------------------------------------------------------------------------- listing upstream


class FakeConn:
    """The part of WatcherProtocol that list_subscribed uses."""

    def __init__(self, capabilities: set[str], answers: dict[bytes, list[bytes]], status: bytes = b"t OK done") -> None:
        self.capabilities = capabilities
        self.answers = answers
        self.status = status
        self.sent: list[bytes] = []

    async def command(self, command: bytes, *, check: bool = False) -> CommandResult:
        self.sent.append(command)
        untagged = [read_response(line + b"\r\n") for line in self.answers.get(command.split(b" ")[0], [])]
        result = CommandResult(untagged, read_response(self.status + b"\r\n"))
        if check and not result.ok:
            raise CommandFailed(command.split(b" ")[0].decode(), result.status)
        return result


async def test_list_extended_with_special_use() -> None:
    conn = FakeConn(
        {"LIST-EXTENDED", "SPECIAL-USE"},
        {
            b"LIST": [
                b'* LIST (\\Subscribed \\Junk) "/" Junk',
                b'* LIST (\\HasChildren) "/" Parent ("CHILDINFO" ("SUBSCRIBED"))',  # not itself subscribed
                b'* LIST (\\Subscribed) "/" "Entw&APw-rfe"',
                b"* LIST (broken",  # unreadable: skipped
                b"* OK something else",
            ]
        },
    )
    items = await list_subscribed(conn)  # type: ignore[arg-type]
    assert conn.sent == [b'LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)']
    assert [i.mailbox for i in items] == ["Junk", "Entwürfe"]
    assert pick_subscribed(items, 50) == ("INBOX", "Entwürfe")


async def test_lsub_fallback_learns_special_use_from_list() -> None:
    conn = FakeConn(
        {"SPECIAL-USE"},
        {
            b"LSUB": [b'* LSUB () "/" Junk', b'* LSUB () "/" Work', b'* LSUB () "/" Vanished'],
            b"LIST": [b'* LIST (\\Junk) "/" Junk', b'* LIST () "/" Work', b'* LIST () "/" INBOX'],
        },
    )
    items = await list_subscribed(conn)  # type: ignore[arg-type]
    assert conn.sent == [b'LSUB "" "*"', b'LIST "" "*"']
    assert pick_subscribed(items, 50) == ("INBOX", "Work")  # Vanished: subscribed but not listed

    plain = FakeConn(set(), {b"LSUB": [b'* LSUB () "/" Work']})
    assert [i.mailbox for i in await list_subscribed(plain)] == ["Work"]  # type: ignore[arg-type]
    assert plain.sent == [b'LSUB "" "*"']


async def test_refused_listing_raises_command_failed() -> None:
    conn = FakeConn({"LIST-EXTENDED"}, {}, status=b"t NO [SERVERBUG] oops")
    with pytest.raises(CommandFailed):
        await list_subscribed(conn)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the session hook


class Observer(Extension):
    def __init__(self) -> None:
        super().__init__(name="observer", observed_commands=("SUBSCRIBE", "UNSUBSCRIBE"))
        self.heard: list[tuple[str, str | None]] = []

    async def command_succeeded(self, name: str, session: SessionContext) -> None:
        self.heard.append((name, session.account))


async def test_observed_commands_are_relayed_and_reported_after_ok_only() -> None:
    io, ext = FakeIO(), Observer()
    s = Session(
        io,
        session_id="t",
        peer="test",
        client_tls=False,
        settings=SessionSettings(),
        extensions=ExtensionManager([ext]),
        credentials=Sink(),
    )
    s.upstream_data(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
    s.client_data(b"a0 SUBSCRIBE Early\r\n")  # before login: relayed, upstream says BAD, not reported
    s.upstream_data(b"a0 BAD not yet\r\n")
    s.client_data(b"a1 LOGIN alice pw\r\n")
    s.upstream_data(b"a1 OK Logged in\r\n")
    s.client_data(b"a2 SUBSCRIBE Work\r\na3 UNSUBSCRIBE Nope\r\na4 subscribe {4+}\r\nLate\r\na5 NOOP\r\n")
    assert bytes(io.upstream).endswith(
        b"a2 SUBSCRIBE Work\r\na3 UNSUBSCRIBE Nope\r\na4 subscribe {4+}\r\nLate\r\na5 NOOP\r\n"
    )  # unchanged, not held
    s.upstream_data(b"a2 OK done\r\na3 NO [NONEXISTENT] no such\r\na4 OK done\r\na5 OK done\r\n")
    for _ in range(5):
        await asyncio.sleep(0)
    assert ext.heard == [("SUBSCRIBE", "alice"), ("SUBSCRIBE", "alice")]
    assert bytes(io.client).endswith(b"a2 OK done\r\na3 NO [NONEXISTENT] no such\r\na4 OK done\r\na5 OK done\r\n")
