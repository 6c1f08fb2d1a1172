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

from tests.support.distribution import ROOT
from tests.support.dovecot import Dovecot, make_message
from tests.support.waiting import wait_for

imaplib.Commands.setdefault("XEVENTLOG", ("AUTH", "SELECTED"))


def records(path: Path, count: int, timeout: float = 15.0) -> list[dict[str, object]]:
    def lines() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    wait_for(lambda: len(lines()) >= count, timeout, lambda: f"{count} event(s) recorded; have {len(lines())}")
    return [json.loads(line) for line in lines()]


def test_eventlog_extension_records_a_dovecot_delivery(dovecot: Dovecot, proxy_factory, tmp_path: Path) -> None:
    log_path = tmp_path / "events.jsonl"
    proxy = proxy_factory(dovecot, eventlog={"path": str(log_path), "accounts": ["alice"]})
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
    config_file.write_text(yaml.safe_dump({"eventlog": {"path": str(tmp_path / "e"), "colour": "red"}}))
    checked = subprocess.run(
        [sys.executable, "-m", "pushproxy", "check-config", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 2
    assert "eventlog.colour: unknown key" in checked.stderr


def test_production_has_no_eventlog_and_the_tests_distribution_adds_it() -> None:
    """check-config of the production example: eventlog's section only where the tests' distribution is installed."""
    example = ROOT / "deploy" / "pushproxy.example.yaml"

    def sections(pythonpath: str) -> set[str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PUSHPROXY_")}
        env["PYTHONPATH"] = pythonpath
        checked = subprocess.run(
            [sys.executable, "-m", "pushproxy", "check-config", "--config", str(example)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
        )
        return set(json.loads(checked.stdout))

    production = sections(str(ROOT))  # the repository only: what an installed pushproxy sees
    assert {"apns", "webpush"} <= production and "eventlog" not in production
    assert "eventlog" in sections(os.environ["PYTHONPATH"])  # this session's: the tests' distribution too
