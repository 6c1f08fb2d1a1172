"""Run Debian's ``prometheus`` for real on loopback: its own config and TSDB in a directory, the HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.proxy import free_port
from tests.support.waiting import wait_for


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class PrometheusServer:
    """One Prometheus scraping ``targets`` (host:port) under ``job`` every ``interval``, with ``rule_files``."""

    def __init__(
        self,
        base_dir: Path,
        targets: list[str],
        rule_files: list[Path],
        job: str = "pushproxy",
        interval: str = "1s",
    ) -> None:
        binary = prometheus_binary()
        assert binary is not None, "prometheus is not installed"
        self.binary = binary
        self.base_dir = base_dir
        base_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_file = base_dir / "prometheus.yml"
        self.log_file = base_dir / "prometheus.log"
        self.config_file.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": interval, "evaluation_interval": interval},
                    "rule_files": [str(path) for path in rule_files],
                    "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> PrometheusServer:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self.base_dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=log,
                cwd=self.base_dir,
            )
        wait_for(self._ready, timeout, lambda: f"prometheus ready:\n{self.log_tail()}", interval=0.2)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its ``data``; AssertionError unless the status is success."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def targets_up(self) -> bool:
        active = self.api("targets", state="active")["activeTargets"]
        return bool(active) and all(target["health"] == "up" for target in active)

    def series_labels(self, match: str) -> dict[str, frozenset[str]]:
        """Every series name Prometheus holds for ``match``, with the union of its label names."""
        out: dict[str, frozenset[str]] = {}
        for labels in self.api("series", **{"match[]": match}):
            name = labels.pop("__name__")
            out[name] = out.get(name, frozenset()) | frozenset(labels)
        return out

    def rules(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(group, alert name) -> the rule as /api/v1/rules reports it (state, health, alerts)."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for group in self.api("rules", type="alert")["groups"]:
            for rule in group["rules"]:
                out[(group["name"], rule["name"])] = rule
        return out
