"""A real, throwaway PostgreSQL server on a loopback port (pytest plugin).

Fixtures:

- ``postgres_server`` (session): one server for the whole run, in a temp dir,
  listening on 127.0.0.1 and on a unix socket in that dir.  Skipped with the
  reason when the server binaries (Debian package ``postgresql``) are missing.
- ``postgres_dsn`` (function): a fresh, empty database on that server.

initdb and the server refuse to run as root: under root they run as the
``postgres`` system user the Debian package creates, with a data dir it owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.proxy import free_port

SUPERUSER = "pushproxy_test"
PASSWORD = "pg-test-password"  # loopback-only throwaway server


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<ver>/bin with initdb and pg_ctl, or the one on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="pp-pg-"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log_file = self.base / "postgres.log"
        self.port = 0
        self._opts = ""
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' system user to run PostgreSQL as")

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )

    def start(self) -> PostgresServer:
        self.socket_dir.mkdir()
        pwfile = self.base / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._user is not None:
            for p in (self.base, self.socket_dir, pwfile):
                os.chown(p, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.base, 0o700)
        os.chmod(pwfile, 0o600)
        init = self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
            timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        last_error = ""
        for _ in range(3):  # the free port can be taken between choosing and binding it
            self.port = free_port()
            opts = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.socket_dir} "
                "-c fsync=off -c full_page_writes=off -c max_connections=200"
            )
            started = self._pg_ctl_start(opts)
            if started.returncode == 0:
                self._opts = opts
                return self
            last_error = f"{started.stdout}\n{started.stderr}\n{self.log_tail()}"
        raise RuntimeError(f"PostgreSQL did not start:\n{last_error}")

    def _pg_ctl_start(self, opts: str) -> subprocess.CompletedProcess[str]:
        return self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )

    def crash(self) -> None:
        """Stop the server the hard way (``pg_ctl -m immediate``: no checkpoint, clients cut), keeping its data."""
        out = self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {out.stdout}\n{out.stderr}")

    def restart(self) -> None:
        """Start it again on the same port and data (after :meth:`crash`: crash recovery first)."""
        started = self._pg_ctl_start(self._opts)
        if started.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not restart:\n{started.stdout}\n{started.stderr}\n{self.log_tail()}")

    def stop(self) -> None:
        if self.data_dir.exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def dsn(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through the unix socket as the superuser; its output (tuples only)."""
        out = self._run(
            "psql",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr}")
        return out.stdout

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        self.psql(f"CREATE DATABASE {name}")
        return name


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install -y postgresql")
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except BaseException:
        with contextlib.suppress(Exception):
            server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A DSN (with password, over TCP loopback) for a fresh empty database."""
    name = postgres_server.create_database()
    yield postgres_server.dsn(name)
    deadline = time.monotonic() + 10
    while True:  # pools closed by the test may take a moment to disconnect
        try:
            postgres_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
