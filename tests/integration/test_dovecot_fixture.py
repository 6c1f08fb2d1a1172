"""Prove the Dovecot test server (tests/support/dovecot.py) behaves as the other tests expect."""

from __future__ import annotations

import base64
import imaplib
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.dovecot import Dovecot, make_message
from tests.support.dovecot_fixtures import DovecotFactory, new_dovecot_base_dir


@contextmanager
def imap_login(dc: Dovecot, user: str = "alice", password: str = "alicepw") -> Iterator[imaplib.IMAP4]:
    imap = imaplib.IMAP4(dc.host, dc.imap_port, timeout=10)
    try:
        imap.login(user, password)
        yield imap
    finally:
        try:
            imap.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def tls_context(dc: Dovecot) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(dc.ca_file))


def capabilities(imap: imaplib.IMAP4) -> set[str]:
    typ, data = imap.capability()
    assert typ == "OK"
    return set(data[-1].decode().upper().split())


def subjects(imap: imaplib.IMAP4, mailbox: str) -> list[str]:
    typ, data = imap.select(f'"{mailbox}"', readonly=True)
    assert typ == "OK", data
    typ, fetched = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", fetched
    out: list[str] = []
    for item in fetched:
        if isinstance(item, tuple):
            out.append(item[1].decode().strip().removeprefix("Subject: "))
    return out


def mailbox_names(imap: imaplib.IMAP4) -> set[str]:
    typ, data = imap.list()
    assert typ == "OK"
    names = set()
    for raw in data:
        assert isinstance(raw, bytes)
        name = raw.decode().split(' "/" ', 1)[1]
        names.add(name.strip('"'))
    return names


def raw_command(imap: imaplib.IMAP4, command: str) -> tuple[bytes, list[bytes]]:
    """Send ``TAG command`` and return (status, untagged lines) -- for commands imaplib lacks."""
    tag = imap._new_tag()  # type: ignore[attr-defined]
    imap.send(tag + b" " + command.encode() + b"\r\n")
    untagged: list[bytes] = []
    while True:
        line = imap.readline()
        if line.startswith(tag + b" "):
            return line.split()[1], untagged
        untagged.append(line)


def port_refuses(dc: Dovecot, port: int) -> bool:
    try:
        with socket.create_connection((dc.host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


# --------------------------------------------------------------------------- logins / TLS


def test_plain_login_capabilities_and_default_mailboxes(dovecot: Dovecot) -> None:
    with imap_login(dovecot) as imap:
        caps = capabilities(imap)
        assert {"IDLE", "NOTIFY", "CONDSTORE", "QRESYNC", "SPECIAL-USE"} <= caps
        assert {"INBOX", "Sent Messages", "Notes"} <= mailbox_names(imap)
        typ, data = imap.list('""', '"Sent Messages"')
        assert typ == "OK" and isinstance(data[0], bytes) and b"\\Sent" in data[0]


def test_starttls_verified_against_ca(dovecot: Dovecot) -> None:
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    assert "STARTTLS" in imap.capabilities
    imap.starttls(tls_context(dovecot))  # hostname check against IP SAN 127.0.0.1
    imap.login("bob", "bobpw")
    assert "NOTIFY" in capabilities(imap)
    imap.logout()


def test_imaps_verified_against_ca_for_localhost_name(dovecot: Dovecot) -> None:
    imap = imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=tls_context(dovecot), timeout=10)
    cipher = imap.sock.version()  # type: ignore[attr-defined]
    assert cipher in ("TLSv1.2", "TLSv1.3")
    imap.login("alice", "alicepw")
    imap.logout()


def test_imaps_rejects_unknown_ca(dovecot: Dovecot) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=ssl.create_default_context())


def test_tls_disabled(dovecot_factory: DovecotFactory) -> None:
    dc = dovecot_factory(tls=False)
    assert dc.imaps_port == 0
    imap = imaplib.IMAP4(dc.host, dc.imap_port, timeout=10)
    assert "STARTTLS" not in imap.capabilities
    imap.login("alice", "alicepw")
    imap.logout()


def test_master_user_login(dovecot_factory: DovecotFactory) -> None:
    dc = dovecot_factory(master_user=("admin", "adminpw"))
    dc.deliver("alice", make_message("for alice"))
    with imap_login(dc, "alice*admin", "adminpw") as imap:
        assert subjects(imap, "INBOX") == ["for alice"]
    # SASL PLAIN: authzid=alice, authcid=admin
    imap = imaplib.IMAP4(dc.host, dc.imap_port, timeout=10)
    typ, _ = imap.authenticate("PLAIN", lambda _: b"alice\0admin\0adminpw")
    assert typ == "OK"
    assert subjects(imap, "INBOX") == ["for alice"]
    imap.logout()
    # the master password is not a password of alice's
    with pytest.raises(imaplib.IMAP4.error):
        with imap_login(dc, "alice", "adminpw"):
            pass


def test_sasl_plain_initial_response(dovecot: Dovecot) -> None:
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    assert "SASL-IR" in imap.capabilities
    ir = base64.b64encode(b"\0bob\0bobpw").decode()
    status, _ = raw_command(imap, f"AUTHENTICATE PLAIN {ir}")
    assert status == b"OK"
    imap.logout()


def test_add_user_before_and_after_start(dovecot_factory: DovecotFactory) -> None:
    dc = dovecot_factory(start=False)
    dc.add_user("carol", "carolpw")
    dc.start()
    with imap_login(dc, "carol", "carolpw"):
        pass
    with imap_login(dc, "alice", "alicepw"):
        pass
    dc.add_user("dave", "davepw")  # right after a login: within the same second as the last lookup
    with imap_login(dc, "dave", "davepw"):
        pass
    dc.deliver("dave", make_message("hi dave"))
    with imap_login(dc, "dave", "davepw") as imap:
        assert subjects(imap, "INBOX") == ["hi dave"]


def test_login_attempts_counts_success_and_failure(dovecot_factory: DovecotFactory) -> None:
    dc = dovecot_factory(master_user=("admin", "adminpw"))
    assert dc.login_attempts("alice") == 0
    with imap_login(dc):
        pass
    assert dc.login_attempts("alice") == 1
    with pytest.raises(imaplib.IMAP4.error):
        with imap_login(dc, "alice", "wrong"):
            pass
    assert dc.login_attempts("alice") == 2
    with pytest.raises(imaplib.IMAP4.error):
        with imap_login(dc, "nosuchuser", "x"):
            pass
    assert dc.login_attempts("nosuchuser") == 1
    # master login counts for the target user
    with imap_login(dc, "alice*admin", "adminpw"):
        pass
    assert dc.login_attempts("alice") == 3
    # LMTP deliveries, doveadm lookups and other users do not count
    dc.deliver("alice", make_message("x"))
    dc.add_user("erin", "erinpw")
    assert dc.login_attempts("alice") == 3
    assert dc.login_attempts("bob") == 0
    assert dc.login_attempts("erin") == 0


def test_many_connections_per_user(dovecot: Dovecot) -> None:
    conns = []
    try:
        for _ in range(30):
            imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
            conns.append(imap)
            imap.login("alice", "alicepw")
    finally:
        for imap in conns:
            try:
                imap.logout()
            except (imaplib.IMAP4.error, OSError):
                pass


# --------------------------------------------------------------------------- delivery


def test_lmtp_delivery_shows_up_in_inbox(dovecot: Dovecot) -> None:
    dovecot.deliver("alice", make_message("first"))
    dovecot.deliver("alice@localhost", make_message("second", body="grüße"))
    dovecot.deliver("bob@example.org", "Subject: for bob\n\nplain str message\n")
    with imap_login(dovecot) as imap:
        assert subjects(imap, "INBOX") == ["first", "second"]
        typ, data = imap.fetch("2", "(BODY.PEEK[TEXT])")
        assert typ == "OK"
        assert isinstance(data[0], tuple)
        assert data[0][1] == "grüße\r\n".encode()
    with imap_login(dovecot, "bob", "bobpw") as imap:
        assert subjects(imap, "INBOX") == ["for bob"]


def test_lmtp_rejects_unknown_user(dovecot: Dovecot) -> None:
    import smtplib

    with pytest.raises(smtplib.SMTPRecipientsRefused):
        dovecot.deliver("nosuchuser", make_message("lost"))


def test_deliver_into_sent_messages_and_new_folders(dovecot: Dovecot) -> None:
    dovecot.deliver("alice", make_message("sent one", sender="alice@localhost"), mailbox="Sent Messages")
    dovecot.deliver("alice", make_message("archived"), mailbox="Archive/2024")
    dovecot.deliver("alice", make_message("unicode"), mailbox="Entwürfe")
    with imap_login(dovecot) as imap:
        assert subjects(imap, "Sent Messages") == ["sent one"]
        assert subjects(imap, "Archive/2024") == ["archived"]
        assert subjects(imap, "Entw&APw-rfe") == ["unicode"]  # modified UTF-7
        assert imap.select("INBOX", readonly=True) == ("OK", [b"0"])


def test_create_mailbox(dovecot: Dovecot) -> None:
    dovecot.create_mailbox("bob", "Projects/Alpha")
    dovecot.create_mailbox("bob", "Projects/Alpha")  # idempotent
    with imap_login(dovecot, "bob", "bobpw") as imap:
        assert "Projects/Alpha" in mailbox_names(imap)
        typ, data = imap.lsub()
        assert typ == "OK" and any(b"Projects/Alpha" in d for d in data if isinstance(d, bytes))


def test_make_message() -> None:
    msg = make_message("Hello", body="line1\nline2", size=10_000)
    assert b"\r\nSubject: Hello\r\n" in msg
    assert b"\n" not in msg.replace(b"\r\n", b"")
    assert 9_900 <= len(msg) <= 10_000
    assert max(len(line) for line in msg.split(b"\r\n")) <= 998
    assert len(make_message("x", size=10)) > 10  # never truncated


def test_idle_sees_lmtp_delivery_quickly(dovecot: Dovecot) -> None:
    with imap_login(dovecot) as imap:
        imap.select("INBOX")
        tag = imap._new_tag().decode()  # type: ignore[attr-defined]
        imap.send(f"{tag} IDLE\r\n".encode())
        assert imap.readline().startswith(b"+")
        delivered_at: list[float] = []

        def deliver() -> None:
            time.sleep(0.2)
            delivered_at.append(time.monotonic())
            dovecot.deliver("alice", make_message("push me"))

        th = threading.Thread(target=deliver)
        th.start()
        line = imap.readline()
        latency = time.monotonic() - delivered_at[0]
        th.join()
        assert line == b"* 1 EXISTS\r\n"
        # Dovecot batches inotify events with a fixed 0.5 s delay (NOTIFY_DELAY_MSECS)
        assert latency < 1.5, latency
        imap.send(b"DONE\r\n")
        while not imap.readline().startswith(tag.encode()):
            pass


def test_notify_command_works_when_enabled(dovecot: Dovecot) -> None:
    with imap_login(dovecot) as imap:
        status, _ = raw_command(imap, "NOTIFY SET (personal (MessageNew MessageExpunge))")
        assert status == b"OK"


def test_notify_false_hides_notify(dovecot_factory: DovecotFactory) -> None:
    dc = dovecot_factory(notify=False)
    with imap_login(dc) as imap:
        caps = capabilities(imap)
        assert "NOTIFY" not in caps
        assert {"IMAP4REV1", "IDLE", "CONDSTORE", "QRESYNC", "LIST-STATUS"} <= caps
        status, _ = raw_command(imap, "NOTIFY SET (personal (MessageNew MessageExpunge))")
        assert status in (b"NO", b"BAD")
        # STATUS polling still works
        dc.deliver("alice", make_message("poll me"))
        typ, data = imap.status("INBOX", "(MESSAGES UIDNEXT)")
        assert typ == "OK" and b"MESSAGES 1" in data[0]


# --------------------------------------------------------------------------- lifecycle


def test_stop_leaves_nothing_behind(dovecot_factory: DovecotFactory) -> None:
    dc = dovecot_factory()
    with imap_login(dc) as imap:
        imap.select("INBOX")
        assert dc.processes()
        dc.stop()
        assert dc.processes() == []
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            imap.noop()
    assert port_refuses(dc, dc.imap_port)
    assert port_refuses(dc, dc.lmtp_port)
    dc.stop()  # idempotent


def test_restart_keeps_mail_and_ports(dovecot: Dovecot) -> None:
    ports = (dovecot.imap_port, dovecot.imaps_port, dovecot.lmtp_port)
    dovecot.deliver("alice", make_message("survivor"))
    dovecot.restart()
    assert (dovecot.imap_port, dovecot.imaps_port, dovecot.lmtp_port) == ports
    with imap_login(dovecot) as imap:
        assert subjects(imap, "INBOX") == ["survivor"]


def test_kill_then_restart(dovecot: Dovecot) -> None:
    dovecot.deliver("alice", make_message("before crash"))
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    imap.login("alice", "alicepw")
    imap.select("INBOX")
    dovecot.kill()
    assert dovecot.processes() == []
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        imap.noop()
    assert port_refuses(dovecot, dovecot.imap_port)
    dovecot.restart()
    dovecot.deliver("alice", make_message("after crash"))
    with imap_login(dovecot) as imap:
        assert subjects(imap, "INBOX") == ["before crash", "after crash"]


def test_several_instances_side_by_side(dovecot: Dovecot, dovecot_factory: DovecotFactory) -> None:
    other = dovecot_factory(users={"zoe": "zoepw"})
    assert len({dovecot.imap_port, dovecot.lmtp_port, other.imap_port, other.lmtp_port}) == 4
    other.deliver("zoe", make_message("zoe only"))
    with imap_login(other, "zoe", "zoepw") as imap:
        assert subjects(imap, "INBOX") == ["zoe only"]
    with pytest.raises(imaplib.IMAP4.error):
        with imap_login(dovecot, "zoe", "zoepw"):
            pass
    other.kill()
    with imap_login(dovecot):  # unaffected
        pass


def test_context_manager_and_long_base_dir() -> None:
    from tests.support.dovecot import dovecot_available

    reason = dovecot_available()
    if reason is not None:
        pytest.skip(reason)
    # too long for AF_UNIX socket paths: the runtime dir becomes a symlink to a short /tmp path
    root = new_dovecot_base_dir()
    base = root / ("a-rather-long-directory-name-" + "x" * 80)
    try:
        with Dovecot(base, users={"u": "p"}) as dc:
            dc.start()
            assert dc.run_dir.is_symlink()
            with imap_login(dc, "u", "p"):
                pass
        assert dc.processes() == []
        assert not dc.running
        assert not dc.run_dir.resolve().exists()  # short runtime dir removed on stop
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_session_instance(dovecot_session: Dovecot) -> None:
    with imap_login(dovecot_session, "bob", "bobpw"):
        pass
