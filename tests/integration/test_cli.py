"""The command line as an admin uses it (subprocesses, real files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.certs import ApnsTestCerts, make_apns_certs
from tests.support.distribution import python_path
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": python_path(), **(env or {})},
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ApnsTestCerts:
    return make_apns_certs(tmp_path_factory.mktemp("apns-cli"))


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
    out = cli("check-config", "--config", "deploy/compose/pushproxy.yaml")
    assert out.returncode == 0, out.stderr
    assert '"listen"' in out.stdout
    # The example names production files (TLS certificate and key) that this machine lacks:
    # its values are valid, and those files are the only complaint.
    out = cli("check-config", "--config", "deploy/pushproxy.example.yaml")
    assert '"listen"' in out.stdout
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert out.returncode == 2 and errors, out.stderr
    assert all(line.endswith("does not exist") for line in errors), out.stderr


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


def test_version() -> None:
    from importlib import metadata

    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"pushproxy {metadata.version('pushproxy')}"


def test_invalid_environment_variable_is_named(tmp_path: Path) -> None:
    """Regression: a bad PUSHPROXY_... value was reported as an error in the YAML file."""
    path = write_config(tmp_path)
    out = cli("check-config", "--config", str(path), env={"PUSHPROXY_UPSTREAM__PORT": "not-a-port"})
    assert out.returncode == 2
    assert "invalid configuration in the environment" in out.stderr
    assert "upstream.port (environment variable PUSHPROXY_UPSTREAM__PORT)" in out.stderr
    assert str(path) not in out.stderr
    out = cli("check-config", "--config", str(path), env={"PUSHPROXY_APNS__TOPICC": "x"})
    assert (
        out.returncode == 2 and "apns.topicc (environment variable PUSHPROXY_APNS__TOPICC): unknown key" in out.stderr
    )


def test_check_config_reports_missing_files(tmp_path: Path, certs: ApnsTestCerts) -> None:
    """Regression: check-config exited 0 although the files the config names did not exist."""
    missing = tmp_path / "nowhere"
    path = write_config(
        tmp_path,
        listen={
            "imaps": "127.0.0.1:1993",
            "tls_cert_file": str(missing / "tls.pem"),
            "tls_key_file": str(missing / "tls.key"),
        },
        apns={"enabled": True, "cert_file": str(missing / "apns.pem"), "key_file": str(certs.client_key)},
        admin={"ox_secret_file": str(missing / "ox.secret")},
    )
    out = cli("check-config", "--config", str(path))
    assert out.returncode == 2, out.stderr
    for key in ("listen.tls_cert_file", "listen.tls_key_file", "apns.cert_file", "admin.ox_secret_file"):
        assert f"error: {key}: {missing}" in out.stderr, (key, out.stderr)
    assert "apns.key_file" not in out.stderr


def test_check_config_warns_about_readable_secrets(tmp_path: Path, certs: ApnsTestCerts) -> None:
    key = tmp_path / "apns.key"
    key.write_bytes(certs.client_key.read_bytes())
    key.chmod(0o644)
    path = write_config(tmp_path, apns={"enabled": True, "cert_file": str(certs.client_cert), "key_file": str(key)})
    out = cli("check-config", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert f"warning: apns.key_file: {key} has mode 644" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check files as another user")
def test_check_config_checks_access_as_the_running_user(certs: ApnsTestCerts) -> None:
    """A key only root can read is an error for the service user (here: nobody).

    The check runs in a forked child that dropped to uid 65534: the interpreter of this
    venv may live where nobody cannot execute it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pp-cli-") as tmp:  # /tmp is searchable by nobody
        _check_as_nobody(Path(tmp), certs)


def _check_as_nobody(tmp_path: Path, certs: ApnsTestCerts) -> None:
    import json as jsonlib

    from pushproxy.cli import file_report
    from pushproxy.config import load_config

    key = tmp_path / "apns.key"
    key.write_bytes(certs.client_key.read_bytes())
    key.chmod(0o600)
    cert = tmp_path / "apns.pem"
    cert.write_bytes(certs.client_cert.read_bytes())
    cert.chmod(0o644)
    tmp_path.chmod(0o755)
    cfg = load_config(write_config(tmp_path, apns={"enabled": True, "cert_file": str(cert), "key_file": str(key)}))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, check, report, exit without running pytest's teardown
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, jsonlib.dumps(file_report(cfg).errors).encode())
        except BaseException as exc:
            os.write(write_end, jsonlib.dumps([f"child failed: {exc!r}"]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        errors = jsonlib.loads(pipe.read() or b"null")
    os.waitpid(pid, 0)
    assert errors is not None
    assert f"apns.key_file: {key} is not readable by uid 65534 (mode 600)" in errors, errors
    assert f"store.url: {tmp_path}/pp.db does not exist and {tmp_path} is not writable by uid 65534" in errors, errors
    assert not any("apns.cert_file" in e for e in errors), errors


def test_check_config_probe(tmp_path: Path, dovecot) -> None:
    path = write_config(
        tmp_path,
        upstream={
            "host": "127.0.0.1",
            "port": dovecot.imap_port,
            "security": "starttls",
            "ca_file": str(dovecot.ca_file),
        },
    )
    out = cli("check-config", "--config", str(path), "--probe")
    assert out.returncode == 0, out.stderr
    assert f"upstream 127.0.0.1:{dovecot.imap_port} (starttls) answers; capabilities:" in out.stdout
    assert "IMAP4REV1" in out.stdout and "IDLE" in out.stdout

    closed = write_config(tmp_path, upstream={"host": "127.0.0.1", "port": free_port(), "security": "none"})
    out = cli("check-config", "--config", str(closed), "--probe")
    assert out.returncode == 2 and "unreachable: Connection refused" in out.stderr, out.stderr


def test_health_follows_the_configured_admin_port(dovecot, proxy_factory, tmp_path: Path) -> None:
    proxy = proxy_factory(dovecot)
    config = write_config(tmp_path, admin={"listen": f"0.0.0.0:{proxy.admin_port}"})
    out = cli("health", "--config", str(config))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    other = write_config(tmp_path, admin={"listen": f"127.0.0.1:{free_port()}"})
    out = cli("health", "--config", str(other))
    assert out.returncode == 1 and "unhealthy" in out.stderr


def test_serve_logs_the_error_before_stopped(tmp_path: Path, certs: ApnsTestCerts) -> None:
    """Regression: serve logged "stopped" before the error that stopped it."""
    path = write_config(
        tmp_path,
        listen={"imap": f"127.0.0.1:{free_port()}"},
        admin={"listen": ""},
        apns={"enabled": True, "cert_file": str(certs.expired_cert), "key_file": str(certs.expired_key)},
    )
    out = cli("serve", "--config", str(path))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    error = next(i for i, line in enumerate(lines) if "expired" in line)
    stopped = next(i for i, line in enumerate(lines) if line.rstrip().endswith("stopped"))
    assert error < stopped, out.stderr
    assert "Traceback" not in out.stderr


def test_readyz_and_start_report_an_unreachable_upstream(dovecot, proxy_factory) -> None:
    """Regression: serve said "ready" and /readyz answered 200 with the upstream down."""
    proxy = proxy_factory(dovecot)
    status, body = proxy.admin_get("/readyz")
    assert status == 200 and '"upstream": true' in body, body
    assert "pushproxy ready (upstream 127.0.0.1" in proxy.log_text()

    dead = proxy_factory(dovecot, start=False)
    dead.config["upstream"] = {"host": "127.0.0.1", "port": free_port(), "security": "none"}
    dead.start()
    status, body = dead.admin_get("/readyz")
    assert status == 503 and '"upstream": false' in body, body
    text = dead.log_text()
    assert "pushproxy started, but upstream 127.0.0.1:" in text and "unreachable: Connection refused" in text
    assert "pushproxy ready" not in text
