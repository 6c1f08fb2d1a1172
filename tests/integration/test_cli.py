"""The command line as an admin uses it (subprocesses, real files)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.support.certs import ApnsTestCerts, make_apns_certs

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def certs() -> ApnsTestCerts:
    return make_apns_certs(Path(tempfile.mkdtemp(prefix="apns-cli-")))


def write_config(tmp_path: Path, **sections: object) -> Path:
    cfg = {"store": {"url": f"sqlite:///{tmp_path}/pp.db"}, **sections}
    path = tmp_path / "pushproxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_every_subcommand_has_help() -> None:
    for args in (
        [],
        ["serve"],
        ["check-config"],
        ["apns", "check"],
        ["apns", "test"],
        ["devices", "list"],
        ["devices", "remove"],
        ["subscriptions", "list"],
        ["vapid", "show"],
        ["vapid", "rotate"],
    ):
        out = cli(*args, "--help")
        assert out.returncode == 0 and "usage:" in out.stdout, args


def test_check_config_example_and_compose() -> None:
    for path in ("deploy/pushproxy.example.yaml", "deploy/compose/pushproxy.yaml"):
        out = cli("check-config", "--config", path)
        assert out.returncode == 0, out.stderr
        assert '"listen"' in out.stdout


def test_check_config_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen:\n  imap: nope\nbogus: 1\n")
    out = cli("check-config", "--config", str(bad))
    assert out.returncode == 2
    assert "bogus: unknown key" in out.stderr and "listen.imap" in out.stderr
    out = cli("check-config", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "cannot read config file" in out.stderr


def test_check_config_masks_secrets_and_env_overrides(tmp_path: Path) -> None:
    path = write_config(tmp_path, watch={"credentials": "master", "master_user": "admin"})
    out = cli(
        "check-config",
        "--config",
        str(path),
        env={
            "PUSHPROXY_WATCH__MASTER_PASSWORD": "hunter2",
            "PUSHPROXY_UPSTREAM__PORT": "1993",
            "PUSHPROXY_STORE__URL": "postgresql://u:pw@db/pp",
        },
    )
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout and '"port": 1993' in out.stdout
    assert ":pw@" not in out.stdout


def test_apns_check(tmp_path: Path, certs: ApnsTestCerts) -> None:
    good = write_config(tmp_path, apns={"cert_file": str(certs.client_cert), "key_file": str(certs.client_key)})
    out = cli("apns", "check", "--config", str(good))
    assert out.returncode == 0, out.stderr
    assert certs.topic in out.stdout and "days left" in out.stdout
    expired = write_config(tmp_path, apns={"cert_file": str(certs.expired_cert), "key_file": str(certs.expired_key)})
    out = cli("apns", "check", "--config", str(expired))
    assert out.returncode == 1 and "expired" in out.stderr
    untrusted = write_config(
        tmp_path, apns={"cert_file": str(certs.untrusted_cert), "key_file": str(certs.untrusted_key)}
    )
    out = cli("apns", "check", "--config", str(untrusted))
    assert out.returncode == 1 and "ignored by iOS Mail" in out.stderr
    p12 = write_config(
        tmp_path,
        apns={"cert_file": str(certs.client_p12), "p12_password_file": str(certs.client_p12_password_file)},
    )
    assert cli("apns", "check", "--config", str(p12)).returncode == 0


def test_devices_and_vapid(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    out = cli("devices", "list", "--config", str(path))
    assert out.returncode == 0 and "0 device registration(s)" in out.stdout
    out = cli("vapid", "show", "--config", str(path))
    key = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 0 and len(key) == 87 and key.startswith("B")
    assert (tmp_path / "vapid.pem").stat().st_mode & 0o077 == 0
    assert cli("vapid", "show", "--config", str(path)).stdout.strip() == key
    out = cli("vapid", "rotate", "--config", str(path))
    assert out.returncode == 0
    assert out.stdout.strip().splitlines()[-1] != key
