"""``make docker-test``: build the images and check the compose stack as a user would run it.

Run by the Makefile after tests/docker/engine.sh made a Docker engine answer.  Every
command it runs is printed first; README.md's and deploy/README.md's Docker sections
are these commands.  Any failure exits non-zero: nothing here skips.

1. Base images (``debian:bookworm-slim``, ``python:3.11-slim``, a PostgreSQL image):
   used if present, pulled if a registry answers, else made here -- debootstrap +
   ``docker import`` for Debian, small stand-ins built on it for the others (see
   tests/docker/base-images/).  Docker keeps them, so later runs reuse them.
2. A wheelhouse from the host's pip, then both images with the classic builder and
   ``--build-arg PIP_NO_INDEX=1`` (the air-gapped build of deploy/README.md).
3. For each Compose found (v1 ``docker-compose``; v2 ``docker compose`` where present):
   the demo stack plus a test override (APNs enabled towards a stand-in on the host,
   admin listener moved to another port), then the checks listed in :func:`check_sqlite`;
   then the PostgreSQL variant (:func:`check_postgres`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import imaplib
import os
import resource
import secrets
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.apns_standin import ApnsStandin
from tests.support.certs import ApnsTestCerts, _issue, make_apns_certs

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGES = Path(__file__).resolve().parent / "base-images"
WHEELHOUSE = ROOT / "deploy" / "docker" / "wheelhouse"
POSTGRES_IMAGE = "postgres:16-bookworm"
POSTGRES_STANDIN = "pushproxy-test/postgres:15-bookworm"
APNS_HOST = "apns-standin.test"  # resolved inside the container to the host (extra_hosts)
UID = 10143
ACCOUNT_ID = "0715A26B-CA09-4730-A419-793000CA982E"
TOKEN = "5a1e390218931890821908309283098109381029309829018310983092892829"
ADMIN_PORT_IN_CONTAINER = 9200  # not the image's default 9143: the healthcheck must follow it
HEALTH_TIMEOUT = 120.0
PUSH_TIMEOUT = 60.0


CHECKS_PASSED: list[str] = []


def say(text: str) -> None:
    print(f"docker-test: {text}", flush=True)


def passed(text: str) -> None:
    """One check of the list passed."""
    CHECKS_PASSED.append(text)
    say(f"ok: {text}")


def run(
    *cmd: str, timeout: float = 900, env: dict[str, str] | None = None, input: bytes | None = None, quiet: bool = False
) -> str:
    """Run a command (printed first); raise with its output on failure."""
    if not quiet:
        print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        raise CheckFailed(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-3000:]}\n{err[-3000:]}")
    return out


class CheckFailed(Exception):
    pass


def wait_until(what: str, probe: Callable[[], object], timeout: float, interval: float = 0.5) -> object:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, CheckFailed, imaplib.IMAP4.error) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True, check=False).returncode == 0


def try_pull(name: str) -> bool:
    say(f"{name} is not here; trying a registry")
    try:
        proc = subprocess.run(["docker", "pull", name], capture_output=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


# --- 1. base images -------------------------------------------------------------------------


def ensure_base_images() -> dict[str, str]:
    """Make sure the images the Dockerfiles and compose files name exist; return compose env."""
    if not image_exists("debian:bookworm-slim") and not try_pull("debian:bookworm-slim"):
        say("no registry: making debian:bookworm-slim with debootstrap")
        with tempfile.TemporaryDirectory(prefix="pushproxy-docker-test-", dir="/var/tmp") as tmp:
            rootfs = Path(tmp) / "rootfs"
            run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian")
            shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
            (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            print("+ tar -C ROOTFS -c . | docker import --change 'CMD [\"bash\"]' - debian:bookworm-slim", flush=True)
            subprocess.run(
                ["docker", "import", "--change", 'CMD ["bash"]', "-", "debian:bookworm-slim"],
                stdin=tar.stdout,
                check=True,
                capture_output=True,
                timeout=600,
            )
            if tar.wait(timeout=60) != 0:
                raise CheckFailed("tar of the debootstrap root failed")
    if not image_exists("python:3.11-slim") and not try_pull("python:3.11-slim"):
        say("no registry: building a python:3.11-slim stand-in on debian:bookworm-slim")
        build("-f", str(BASE_IMAGES / "python.Dockerfile"), "-t", "python:3.11-slim", str(BASE_IMAGES))
    env: dict[str, str] = {}
    if not image_exists(POSTGRES_IMAGE) and not try_pull(POSTGRES_IMAGE):
        if not image_exists(POSTGRES_STANDIN):
            say(f"no registry: building the PostgreSQL stand-in {POSTGRES_STANDIN}")
            build("-t", POSTGRES_STANDIN, str(BASE_IMAGES / "postgres"))
        env["PUSHPROXY_POSTGRES_IMAGE"] = POSTGRES_STANDIN
    return env


def build(*args: str) -> str:
    # The classic builder uses local base images as they are; it is what compose v1 uses too.
    return run("docker", "build", *args, env={"DOCKER_BUILDKIT": "0"}, timeout=1200)


# --- 2. the images ----------------------------------------------------------------------------


def build_images() -> None:
    say("wheelhouse for an offline image build")
    for old in WHEELHOUSE.glob("*.whl"):
        old.unlink()
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--wheel-dir",
        str(WHEELHOUSE),
        ".[postgres]",
        "setuptools>=68",
        "wheel",
    )
    build("--build-arg", "PIP_NO_INDEX=1", "-f", "deploy/docker/Dockerfile", "-t", "pushproxy:local", ".")
    build("-t", "pushproxy-demo-dovecot:local", "deploy/dovecot")


# --- 3. the stack -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_host_address() -> str:
    """The host's address as containers reach it: what ``host-gateway`` resolves to inside one."""
    out = run(
        "docker", "run", "--rm", "--add-host", "host.test:host-gateway", "debian:bookworm-slim",
        "getent", "hosts", "host.test",
        quiet=True,
    )  # fmt: skip
    address = out.split()[0] if out.split() else ""
    if not address:
        raise CheckFailed(f"cannot tell the host's address for containers: {out!r}")
    return address


def make_server_cert(certs: ApnsTestCerts, directory: Path) -> tuple[Path, Path]:
    """A server certificate for the stand-in under the name the container uses."""
    ca_cert = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = _issue(
        ca_cert,
        ca_key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, APNS_HOST)]),
        key,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=30),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName(APNS_HOST)],
    )
    cert_file, key_file = directory / "standin.pem", directory / "standin.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def engine_nofile_override() -> str:
    """The override's ``ulimits`` when this machine cannot grant docker-compose.yml's ``nofile``.

    A container's limit cannot exceed the engine's own hard limit unless the engine may raise it
    (CAP_SYS_RESOURCE); a sandboxed CI machine may cap it lower (e.g. 20,000), and runc then refuses
    to start the container.  The shipped file keeps the figure real deployments need; the test
    stack asks for what the engine here has, and says so in one line.
    """
    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    wanted = int(compose["services"]["pushproxy"]["ulimits"]["nofile"]["hard"])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        return ""
    print(f"docker-test: nofile hard limit here is {hard} < {wanted}: the test stack asks for {hard}")
    return f"    ulimits:\n      nofile:\n        soft: {hard}\n        hard: {hard}\n"


class Stack:
    """One compose project: the demo files plus the test override (and maybe postgres.yml)."""

    def __init__(
        self, compose: list[str], project: str, work: Path, standin: ApnsStandin, extra_files: list[str]
    ) -> None:
        self.compose = compose
        self.project = project
        self.imap_port, self.admin_port, self.lmtp_port = free_port(), free_port(), free_port()
        self.env = {
            "PUSHPROXY_IMAP_PORT": str(self.imap_port),
            "PUSHPROXY_ADMIN_PORT": str(free_port()),  # the unused default mapping (to 9143)
            "PUSHPROXY_LMTP_PORT": str(self.lmtp_port),
        }
        override = work / f"{project}.override.yml"
        override.write_text(
            f"""version: "2.4"
services:
  pushproxy:
    environment:
      PUSHPROXY_ADMIN__LISTEN: "0.0.0.0:{ADMIN_PORT_IN_CONTAINER}"
      PUSHPROXY_APNS__ENABLED: "true"
      PUSHPROXY_APNS__CERT_FILE: /run/test-apns/apns.pem
      PUSHPROXY_APNS__KEY_FILE: /run/test-apns/apns.key
      PUSHPROXY_APNS__CA_FILE: /run/test-apns/ca.pem
      PUSHPROXY_APNS__ENDPOINT: "{APNS_HOST}:{standin.port}"
      PUSHPROXY_APNS__DEBOUNCE: "0.2"
    volumes:
      - {work / "apns"}:/run/test-apns:ro
    ports:
      - "127.0.0.1:{self.admin_port}:{ADMIN_PORT_IN_CONTAINER}"
    extra_hosts:
      - "{APNS_HOST}:host-gateway"
{engine_nofile_override()}"""
        )
        self.files = ["-f", "docker-compose.yml", *(x for f in extra_files for x in ("-f", f)), "-f", str(override)]

    def __call__(self, *args: str, timeout: float = 600) -> str:
        return run(*self.compose, "-p", self.project, *self.files, *args, env=self.env, timeout=timeout)

    def container(self, service: str = "pushproxy") -> str:
        out = run(*self.compose, "-p", self.project, *self.files, "ps", "-q", service, env=self.env, quiet=True).strip()
        if not out:
            raise CheckFailed(f"no container for {service}")
        return out.splitlines()[0]

    def wait_healthy(self) -> str:
        say(f"waiting for {self.project}'s pushproxy to become healthy")
        container = self.container()

        def healthy() -> bool:
            status = run("docker", "inspect", "-f", "{{.State.Health.Status}}", container, quiet=True).strip()
            return status == "healthy"

        wait_until("health status healthy", healthy, HEALTH_TIMEOUT, 1.0)
        return container

    def exec(self, *cmd: str) -> str:
        return run("docker", "exec", self.container(), *cmd)

    def dump_logs(self) -> None:
        with contextlib.suppress(Exception):
            print(self("logs", "--no-color", "--tail", "60"), flush=True)

    def down(self) -> None:
        with contextlib.suppress(Exception):
            self("down", "-v", "--remove-orphans", "-t", "10")


def deliver(port: int, subject: str) -> None:
    msg = f"From: <sender@example.org>\r\nTo: <demo@localhost>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as lmtp:
        refused = lmtp.sendmail("<sender@example.org>", ["demo@localhost"], msg.encode())
    if refused:
        raise CheckFailed(f"LMTP refused: {refused}")


def login(port: int) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    client.login("demo", "demo")
    return client


def fetch_subject(port: int, subject: str) -> None:
    client = login(port)
    try:
        typ, data = client.select("INBOX")
        count = int(data[0] or b"0")
        typ, data = client.fetch(str(count), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if typ != "OK" or subject.encode() not in b"".join(p[1] if isinstance(p, tuple) else p for p in data):
            raise CheckFailed(f"FETCH through pushproxy did not return {subject!r}: {typ} {data!r}")
    finally:
        client.logout()


def register_device(stack: Stack) -> None:
    """Register like iOS Mail, and stay logged in until the account's watcher runs.

    The watcher needs the password captured from this session; it is handed over
    after the registration's answer, so a client that logs out at once can race it.
    """
    imaplib.Commands["XAPPLEPUSHSERVICE"] = ("AUTH", "SELECTED")
    client = login(stack.imap_port)
    try:
        typ, data = client._simple_command(  # type: ignore[attr-defined]
            "XAPPLEPUSHSERVICE",
            '"aps-version"',
            '"2"',
            '"aps-account-id"',
            f'"{ACCOUNT_ID}"',
            '"aps-device-token"',
            f'"{TOKEN}"',
            '"aps-subtopic"',
            '"com.apple.mobilemail"',
            '"mailboxes"',
            '("INBOX")',
        )
        if typ != "OK":
            raise CheckFailed(f"XAPPLEPUSHSERVICE: {typ} {data!r}")
        wait_until("the watcher to be ready", lambda: watching(stack.admin_port), 60)
    finally:
        client.logout()


def watching(admin_port: int) -> bool:
    """The account's watcher waits for changes upstream: mail delivered from now on is new to it."""
    text = metrics(admin_port).decode()
    return any(
        line.startswith(('pushproxy_watchers{state="idle"}', 'pushproxy_watchers{state="polling"}'))
        and float(line.rsplit(" ", 1)[1]) >= 1
        for line in text.splitlines()
    )


def expect_push(stack: Stack, standin: ApnsStandin, subject: str) -> None:
    wait_until("the watcher to be ready", lambda: watching(stack.admin_port), 60)
    before = len(standin.requests_for(TOKEN))
    deliver(stack.lmtp_port, subject)
    say(f"LMTP delivery of {subject!r}; waiting for the push at the APNs stand-in")
    standin.wait_for(before + 1, timeout=PUSH_TIMEOUT, token=TOKEN)
    passed(f"the LMTP delivery of {subject!r} was pushed to the APNs stand-in")


def state_fingerprint(stack: Stack) -> tuple[str, str]:
    keys = stack.exec("sha256sum", "/var/lib/pushproxy/vault.key", "/var/lib/pushproxy/vapid.pem")
    devices = stack.exec("pushproxy", "devices", "list", "--config", "/etc/pushproxy/pushproxy.yaml")
    if TOKEN[:8] not in devices or "1 device registration(s)" not in devices:
        raise CheckFailed(f"the registration is not in the store:\n{devices}")
    return keys, devices


def check_sqlite(stack: Stack, standin: ApnsStandin) -> None:
    """The default (SQLite) stack, every check of issue 15's list."""
    stack("up", "-d")
    container = stack.wait_healthy()
    passed("healthy, with the admin listener moved to port 9200")

    status = run("docker", "exec", container, "cat", "/proc/1/status")
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    if uids != [str(UID)] * 4:
        raise CheckFailed(f"pushproxy runs with uids {uids}, not {UID}")
    passed(f"the process runs as uid {UID}")

    deliver(stack.lmtp_port, "first message")
    fetch_subject(stack.imap_port, "first message")
    passed("login and FETCH through pushproxy work")

    register_device(stack)
    expect_push(stack, standin, "pushed message")
    before = state_fingerprint(stack)

    run("docker", "restart", "-t", "45", container)
    stack.wait_healthy()
    if state_fingerprint(stack) != before:
        raise CheckFailed("state changed across docker restart")
    # No client logs in again: the watcher logs in with the password from the vault.
    expect_push(stack, standin, "after restart")
    passed("keys and registration survive docker restart; the watcher came back from the vault")

    stack("up", "-d", "--force-recreate", "pushproxy")
    recreated = stack.wait_healthy()
    if recreated == container:
        raise CheckFailed("the container was not re-created")
    if state_fingerprint(stack) != before:
        raise CheckFailed("state changed across container re-creation")
    expect_push(stack, standin, "after re-creation")
    passed("keys and registration survive container re-creation")

    check_stop_drains(stack)


def check_stop_drains(stack: Stack) -> None:
    container = stack.container()
    client = login(stack.imap_port)
    client.select("INBOX")
    wait_until(
        "the session to show in the metrics",
        lambda: b"pushproxy_sessions_active 1.0" in metrics(stack.admin_port),
        30,
    )
    started = time.monotonic()
    run("docker", "stop", "-t", "45", container, timeout=120)
    took = time.monotonic() - started
    code = run("docker", "inspect", "-f", "{{.State.ExitCode}}", container, quiet=True).strip()
    logs = subprocess.run(["docker", "logs", container], capture_output=True, check=False)
    text = (logs.stdout + logs.stderr).decode(errors="replace")
    with contextlib.suppress(Exception):
        client.shutdown()
    if code != "0":
        raise CheckFailed(f"docker stop: exit code {code}, not 0:\n{text[-3000:]}")
    if "draining 1 session(s)" not in text or not text.rstrip().endswith("stopped"):
        raise CheckFailed(f"docker stop did not drain and stop cleanly:\n{text[-3000:]}")
    passed(f"docker stop drained the open session and exited 0 in {took:.1f} s")


def metrics(port: int) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return bytes(resp.read())


def check_postgres(stack: Stack, standin: ApnsStandin) -> None:
    stack("up", "-d")
    stack.wait_healthy()
    register_device(stack)
    expect_push(stack, standin, "stored in postgres")
    rows = run(
        "docker", "exec", stack.container("postgres"),
        "psql", "-U", "pushproxy", "-d", "pushproxy", "-tAc", "SELECT count(*) FROM apns_devices",
    ).strip()  # fmt: skip
    if rows != "1":
        raise CheckFailed(f"apns_devices in PostgreSQL has {rows!r} rows, not 1")
    logs = subprocess.run(["docker", "logs", stack.container()], capture_output=True, check=False)
    if b"sqlite" in (logs.stdout + logs.stderr).lower():
        raise CheckFailed("the postgres variant still mentions SQLite in its log")
    passed("the PostgreSQL variant stores its registrations in the postgres service")


def compose_commands() -> list[list[str]]:
    found: list[list[str]] = []
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        found.append(["docker", "compose"])
    if not found:
        raise CheckFailed("neither docker-compose nor docker compose is installed")
    return found


@contextlib.contextmanager
def apns_standin(work: Path) -> Iterator[ApnsStandin]:
    certs = make_apns_certs(work / "apns")
    server_cert, server_key = make_server_cert(certs, work)
    standin = ApnsStandin(server_cert, server_key, client_ca=certs.ca_cert)
    standin.host = docker_host_address()  # reachable from the containers, not published anywhere
    standin.start()
    say(f"APNs stand-in on {standin.endpoint} (the host's docker0 address), as {APNS_HOST} in the containers")
    # The container reads the client credentials as uid 10143.
    for f in (work / "apns").iterdir():
        os.chown(f, UID, UID)
    try:
        yield standin
    finally:
        standin.stop()


def main() -> int:
    started = time.monotonic()
    compose_env = ensure_base_images()
    build_images()
    os.environ.update(compose_env)
    with tempfile.TemporaryDirectory(prefix="pushproxy-docker-test-") as tmp:
        work = Path(tmp)
        with apns_standin(work) as standin:
            for compose in compose_commands():
                name = "v1" if compose == ["docker-compose"] else "v2"
                say(f"--- Compose {name}: {' '.join(compose)}")
                stack = Stack(compose, f"pushproxy-test-{name}", work, standin, [])
                try:
                    check_sqlite(stack, standin)
                except BaseException:
                    stack.dump_logs()
                    raise
                finally:
                    stack.down()
                env_file = work / "postgres.env"
                password = secrets.token_hex(12)
                env_file.write_text(
                    "POSTGRES_USER=pushproxy\nPOSTGRES_DB=pushproxy\n"
                    f"POSTGRES_PASSWORD={password}\n"
                    f"PUSHPROXY_STORE__URL=postgresql://pushproxy:{password}@postgres:5432/pushproxy\n"
                )
                os.environ["PUSHPROXY_POSTGRES_ENV"] = str(env_file)
                pg = Stack(compose, f"pushproxy-test-{name}-pg", work, standin, ["deploy/compose/postgres.yml"])
                try:
                    check_postgres(pg, standin)
                except BaseException:
                    pg.dump_logs()
                    raise
                finally:
                    pg.down()
    say(f"all checks passed in {time.monotonic() - started:.0f} s")
    print(f"docker-test: {len(CHECKS_PASSED)} passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CheckFailed, subprocess.SubprocessError, OSError) as exc:
        print(f"docker-test: FAILED: {exc}", file=sys.stderr, flush=True)
        print(f"docker-test: {len(CHECKS_PASSED)} passed, 1 failed", flush=True)
        sys.exit(1)
