"""``check-config`` and ``serve`` with the ``extensions`` list: what an admin sees of a wrong config (subprocesses).

Every problem of every section in one message, each under its own section's name:
the core's, the list's, a typo'd top-level key (with the key meant), the section
of an extension that is not listed, a built-in extension's section and the
tests' ``eventlog`` (an entry point extension, listed as a third-party one is).
``serve`` refuses the same config before it opens a port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.distribution import ROOT, python_path
from tests.support.ports import free_port

INSTALLED = "deltachat, eventlog, webpush, xapplepush"  # pushproxy's own and the tests' distribution's


def pushproxy(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PUSHPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "pushproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PYTHONPATH": python_path()},
        cwd=ROOT,
    )


def write(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "pushproxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


BAD = {
    "extensions": ["webpush", "eventlog", "deltachta"],
    "upstream": {"port": 0},
    "webpsh": {"enabled": True},
    "webpush": {"enabled": True, "ttl": "soon"},
    "eventlog": {"path": "/tmp/events.jsonl", "colour": "red"},
    "apns": {"enabled": True},
}


def test_check_config_names_every_problem_under_its_section(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    checked = pushproxy("check-config", "--config", str(path))
    assert checked.returncode == 2 and checked.stdout == ""
    assert checked.stderr.splitlines() == [
        f"pushproxy: invalid configuration in {path}:",
        "  upstream.port: Input should be greater than 0",
        f"  extensions: no extension 'deltachta' is installed (did you mean deltachat?); available: {INSTALLED}",
        "  webpsh: unknown key (did you mean webpush?)",
        "  apns: extension xapplepush's section, but xapplepush is not in extensions (add it, or remove this)",
        "  webpush.ttl: Input should be a valid integer, unable to parse string as an integer",
        "  eventlog.colour: unknown key",
    ]


def test_serve_refuses_the_same_config_before_it_listens(tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path, {**BAD, "listen": {"imap": f"127.0.0.1:{port}"}})
    served = pushproxy("serve", "--config", str(path))  # returns: nothing was started
    assert served.returncode == 2
    assert "  webpsh: unknown key (did you mean webpush?)" in served.stderr.splitlines()
    assert "no extension 'deltachta' is installed" in served.stderr and "Traceback" not in served.stderr


def test_check_config_prints_the_effective_list_and_only_the_listed_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "extensions": ["eventlog", "webpush"],
            "store": {"url": f"sqlite:///{tmp_path}/pp.db"},
            "eventlog": {"path": str(tmp_path / "events.jsonl")},
        },
    )
    checked = pushproxy("check-config", "--config", str(path))
    assert checked.returncode == 0, checked.stderr
    printed = json.loads(checked.stdout)
    assert printed["extensions"] == ["eventlog", "webpush"]
    assert {"eventlog", "webpush"} <= set(printed) and not {"apns", "deltachat"} & set(printed)
    assert "pushproxy: installed, not in extensions (not loaded): xapplepush, deltachat" in checked.stderr
    # No list: the push protocols that ship with pushproxy, each section printed with its defaults.
    default = write(tmp_path, {"store": {"url": f"sqlite:///{tmp_path}/pp.db"}})
    checked = pushproxy("check-config", "--config", str(default))
    printed = json.loads(checked.stdout)
    assert printed["extensions"] == ["xapplepush", "webpush", "deltachat"]
    assert {"apns", "webpush", "deltachat"} <= set(printed) and "eventlog" not in printed
    assert "installed, not in extensions (not loaded): eventlog" in checked.stderr  # the tests' distribution
