"""The test-only EVENTLOG extension through the real proxy and a real Dovecot delivery.

It is one module (tests/support/eventlog.py) plus an entry point of the tests'
distribution (tests/support/distribution.py), discovered as a third-party
package's would be: its section of the YAML, its IMAP command and capability,
the mailboxes it wants watched, the events the dispatcher hands it and its
admin subcommand all reach it through the Extension hooks alone.  Without that
distribution on the path (production) there is no eventlog at all.
"""

from __future__ import annotations

import imaplib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pushproxy.extensions import EXTENSIONS
from tests.support.distribution import ROOT
from tests.support.dovecot import Dovecot, make_message
from tests.support.waiting import wait_for

imaplib.Commands.setdefault("XEVENTLOG", ("AUTH", "SELECTED"))
LISTED = [*EXTENSIONS, "eventlog"]


def records(path: Path, count: int, timeout: float = 15.0) -> list[dict[str, object]]:
    def lines() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    wait_for(lambda: len(lines()) >= count, timeout, lambda: f"{count} event(s) recorded; have {len(lines())}")
    return [json.loads(line) for line in lines()]


def test_eventlog_extension_records_a_dovecot_delivery(dovecot: Dovecot, proxy_factory, tmp_path: Path) -> None:
    log_path = tmp_path / "events.jsonl"
    # Installed (the tests' distribution) and listed, as an admin lists a third-party extension.
    proxy = proxy_factory(dovecot, extensions=LISTED, eventlog={"path": str(log_path), "accounts": ["alice"]})
    imap = proxy.imap()
    typ, text = imap.login("alice", "alicepw")
    assert typ == "OK" and b"XEVENTLOG" in text[0]  # its capability, after login
    # The extension asked for alice's INBOX: her watcher connects.
    proxy.wait_log("watcher alice: connected (", timeout=15)

    dovecot.deliver("alice", make_message("to the event log"))
    dovecot.deliver("bob", make_message("not watched"))
    [event] = records(log_path, 1)
    assert event["type"] == "NewMail" and event["account"] == "alice" and event["mailbox"] == "INBOX"
    assert event["uids"] == [1]

    # Its own IMAP command, answered by the proxy in tag order.
    typ, _ = imap._simple_command("XEVENTLOG")
    assert typ == "OK"
    assert imap.untagged_responses.pop("XEVENTLOG") == [b"1"]
    imap.logout()

    # Its admin subcommand, with its section read from the same YAML.
    config_file = tmp_path / "pushproxy.yaml"
    config_file.write_text(yaml.safe_dump(proxy.config))
    shown = subprocess.run(
        [sys.executable, "-m", "pushproxy", "eventlog", "show", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(shown.stdout.splitlines()[0]) == event


def test_eventlog_section_is_validated_by_its_extension(tmp_path: Path) -> None:
    config_file = tmp_path / "pushproxy.yaml"
    config_file.write_text(
        yaml.safe_dump({"extensions": LISTED, "eventlog": {"path": str(tmp_path / "e"), "colour": "red"}})
    )
    checked = subprocess.run(
        [sys.executable, "-m", "pushproxy", "check-config", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 2
    assert "eventlog.colour: unknown key" in checked.stderr


def test_production_has_no_eventlog_and_the_tests_distribution_adds_it() -> None:
    """check-config of the production example: eventlog loads only where installed and listed."""
    example = ROOT / "deploy" / "pushproxy.example.yaml"

    def check(pythonpath: str, extensions: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PUSHPROXY_")}
        env["PYTHONPATH"] = pythonpath
        if extensions is not None:
            env["PUSHPROXY_EXTENSIONS"] = extensions
        return subprocess.run(
            [sys.executable, "-m", "pushproxy", "check-config", "--config", str(example)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
        )

    def sections(pythonpath: str, extensions: str | None = None) -> set[str]:
        return set(json.loads(check(pythonpath, extensions).stdout))

    production = sections(str(ROOT))  # the repository only: what an installed pushproxy sees
    assert {"apns", "webpush"} <= production and "eventlog" not in production
    # This session's path has the tests' distribution: installed, but not loaded until listed.
    assert "eventlog" not in sections(os.environ["PYTHONPATH"])
    listed = ",".join(LISTED)
    assert "eventlog" in sections(os.environ["PYTHONPATH"], listed)
    # Listed where it is not installed: a config error naming what is.
    refused = check(str(ROOT), listed)
    assert refused.returncode == 2 and refused.stdout == ""
    assert (
        "  extensions (environment variable PUSHPROXY_EXTENSIONS): no extension 'eventlog' is installed; "
        "available: deltachat, webpush, xapplepush"
    ) in refused.stderr.splitlines()
