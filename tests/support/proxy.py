"""Run pushproxy for real: ``python -m pushproxy serve`` as a subprocess on loopback ports."""

from __future__ import annotations

import contextlib
import copy
import imaplib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.distribution import python_path
from tests.support.dovecot import Dovecot
from tests.support.ports import free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def upstream_config(dc: Dovecot, security: str = "starttls") -> dict[str, Any]:
    port = dc.imaps_port if security == "tls" else dc.imap_port
    return {"host": "127.0.0.1", "port": port, "security": security, "ca_file": str(dc.ca_file)}


class ProxyProcess:
    def __init__(
        self,
        base_dir: Path,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.nofile = nofile  # (soft, hard) RLIMIT_NOFILE the proxy starts under
        base_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.admin_port = free_port()
        defaults: dict[str, Any] = {
            "listen": {"imap": f"127.0.0.1:{self.port}"},
            "store": {"url": f"sqlite:///{base_dir}/pushproxy.db"},
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            "log": {"level": "debug"},
        }
        self.config = _merge(defaults, config)
        if self.config["listen"].get("imaps") == "auto":
            self.imaps_port = free_port()
            self.config["listen"]["imaps"] = f"127.0.0.1:{self.imaps_port}"
        self.config_file = base_dir / "pushproxy.yaml"
        self.log_file = base_dir / "pushproxy.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> ProxyProcess:
        self.config_file.write_text(yaml.safe_dump(self.config))
        env = {**os.environ, "PYTHONPATH": python_path(), **self.env}
        # The log is appended to across restarts: only this run's lines say it is ready.
        seen = len(self.log_text()) if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pushproxy", "serve", "--config", str(self.config_file)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.base_dir,
                preexec_fn=self._limits if self.nofile is not None else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pushproxy exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "pushproxy ready" in (text := self.log_text()[seen:]) or "pushproxy started, but" in text:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"pushproxy did not start in {timeout}s:\n{self.log_tail()}")

    def _limits(self) -> None:
        import resource

        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def stop(self, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> ProxyProcess:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait_log(self, needle: str, timeout: float = 10) -> None:
        wait_for(lambda: needle in self.log_text(), timeout, lambda: f"{needle!r} in the proxy log:\n{self.log_tail()}")

    def wait_watching(self, count: int = 1, timeout: float = 15) -> None:
        """Until ``count`` watchers wait for changes upstream (mail delivered from now on is new to them)."""

        def ready() -> float:
            return self.metric("pushproxy_watchers", {"state": "idle"}) + self.metric(
                "pushproxy_watchers", {"state": "polling"}
            )

        wait_for(lambda: ready() >= count, timeout, lambda: f"{count} watcher(s) ready:\n{self.log_tail()}")

    def stored_uidnext(self, account: str, mailbox: str) -> int | None:
        """The UIDNEXT the proxy stored for a mailbox (its SQLite store), None before first sight."""
        url = str(self.config["store"]["url"])
        assert url.startswith("sqlite:///"), url
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5)) as db:
            row = db.execute(
                "SELECT uidnext FROM mailbox_state WHERE account = ? AND mailbox = ?", (account, mailbox)
            ).fetchone()
        return None if row is None else int(row[0])

    def imap(self, timeout: float = 10) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.port, timeout=timeout)

    def admin_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` matching ``labels`` on /metrics."""
        _, text = self.admin_get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            key, _, value = line.rpartition(" ")
            metric, _, label_text = key.partition("{")
            if metric != name:
                continue
            if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                continue
            total += float(value)
        return total
