"""mbsync (isync) syncs a few hundred messages through the proxy into a Maildir identical to a direct sync."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, make_message

MESSAGES = 300


def mbsync_config(base: Path, port: int) -> Path:
    maildir = base / "mail"
    maildir.mkdir(parents=True)
    conf = base / "mbsyncrc"
    conf.write_text(
        f"""IMAPAccount acct
Host 127.0.0.1
Port {port}
User alice
Pass alicepw
SSLType None
AuthMechs LOGIN
PipelineDepth 50

IMAPStore remote
Account acct

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Near
Sync Pull
SyncState *
"""
    )
    return conf


def contents(maildir: Path) -> dict[str, list[bytes]]:
    """Folder -> sorted message bytes (file names carry random parts and differ legitimately)."""
    out: dict[str, list[bytes]] = {}
    for f in maildir.rglob("*"):
        if f.is_file() and f.parent.name in ("cur", "new"):
            # mbsync stamps each copy with its own random X-TUID header: not part of the message.
            lines = f.read_bytes().splitlines(keepends=True)
            data = b"".join(line for line in lines if not line.startswith(b"X-TUID:"))
            out.setdefault(str(f.parent.parent.relative_to(maildir)), []).append(data)
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync (Debian isync) not installed")
def test_mbsync_through_proxy_matches_direct(dovecot: Dovecot, proxy_factory, tmp_path: Path) -> None:
    for i in range(MESSAGES):
        dovecot.deliver("alice", make_message(f"message {i}", size=2000 + 37 * i))
    for i in range(20):
        dovecot.deliver("alice", make_message(f"sent {i}"), mailbox="Sent Messages")
    proxy = proxy_factory(dovecot)
    results = {}
    for name, port in (("direct", dovecot.imap_port), ("proxy", proxy.port)):
        conf = mbsync_config(tmp_path / name, port)
        run = subprocess.run(["mbsync", "-c", str(conf), "-a"], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        results[name] = contents(tmp_path / name / "mail")
    assert len(results["direct"]["INBOX"]) == MESSAGES
    assert len(results["direct"]["Sent Messages"]) == 20
    assert results["proxy"] == results["direct"]
