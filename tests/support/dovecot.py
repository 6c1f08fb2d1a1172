"""Run a throw-away Dovecot 2.3 server on loopback ports for tests, demos and benchmarks.

Typical use::

    with Dovecot(new_base_dir()) as dc:
        dc.start()
        dc.deliver("alice", make_message("hi"))
        imap = imaplib.IMAP4(dc.host, dc.imap_port)

Everything the instance needs (config, TLS material, passwd files, mail, logs)
lives under ``base_dir`` (``new_base_dir()`` gives a suitable fresh one).  Dovecot's
runtime directory (sockets) is ``base_dir/run``; when that path is too long for AF_UNIX
socket names it becomes a symlink to a short directory under /tmp, removed on stop.

Mail is stored as a dedicated unprivileged system user (``pushproxy-mail``, created
with ``useradd --system`` on first use) because Dovecot refuses to access mail as root.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import email.utils
import fcntl
import ipaddress
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import tempfile
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.ports import free_ports

__all__ = [
    "MAIL_SYSTEM_USER",
    "Dovecot",
    "DovecotError",
    "DovecotUnavailable",
    "DovecotUser",
    "dovecot_available",
    "find_dovecot",
    "make_message",
    "new_base_dir",
]

MAIL_SYSTEM_USER = "pushproxy-mail"
DEFAULT_USERS: dict[str, str] = {"alice": "alicepw", "bob": "bobpw"}
LOOPBACK = "127.0.0.1"

# sun_path is 108 bytes; Dovecot's longest socket name below base_dir is ~30 chars
# ("login/imap-urlauth", "token-login/tokenlogin", "indexer-worker", ...).
_MAX_RUN_DIR_LEN = 60
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_DOVEADM_TIMEOUT = 30.0


# running instances, stopped at interpreter exit if a test run forgot (or crashed before) it
_LIVE: weakref.WeakSet[Dovecot] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for dc in list(_LIVE):
        with contextlib.suppress(Exception):
            dc.kill()


class DovecotError(RuntimeError):
    """Dovecot failed to start / a doveadm command failed."""


class DovecotUnavailable(DovecotError):
    """Dovecot cannot be run here (binary missing, not root, ...)."""


@dataclass
class DovecotUser:
    name: str
    password: str


# --------------------------------------------------------------------------- helpers


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_dovecot() -> tuple[str, str]:
    """Return the paths of the ``dovecot`` and ``doveadm`` binaries or raise DovecotUnavailable."""
    dovecot = _which("dovecot")
    doveadm = _which("doveadm")
    if dovecot is None or doveadm is None:
        raise DovecotUnavailable("dovecot binaries not found (apt-get install dovecot-imapd dovecot-lmtpd)")
    return dovecot, doveadm


def dovecot_available() -> str | None:
    """None if a Dovecot instance can be started here, else the reason why not."""
    try:
        find_dovecot()
    except DovecotUnavailable as exc:
        return str(exc)
    if os.geteuid() != 0:
        return "the Dovecot test server must be started as root"
    return None


TMP_ROOT = Path(tempfile.gettempdir()) / "pushproxy-dovecot"


def new_base_dir() -> Path:
    """A fresh world-traversable directory for one instance: ``/tmp/pushproxy-dovecot/dc-XXXX``.

    Prefer this over pytest's tmp_path: pytest resets /tmp/pytest-of-<user> to mode 0700
    whenever *any* pytest session starts, which cuts the unprivileged Dovecot processes
    off from their mail in concurrently running sessions.  The caller removes it.
    """
    TMP_ROOT.mkdir(mode=0o755, exist_ok=True)
    TMP_ROOT.chmod(0o755)
    return Path(tempfile.mkdtemp(prefix="dc-", dir=TMP_ROOT))


def _ensure_mail_user() -> tuple[int, int]:
    """Create (idempotently, race-safe) the unprivileged system user that owns mail."""
    try:
        pw = pwd.getpwnam(MAIL_SYSTEM_USER)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    lock_path = Path(tempfile.gettempdir()) / "pushproxy-mail-useradd.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pw = pwd.getpwnam(MAIL_SYSTEM_USER)
        except KeyError:
            useradd = _which("useradd") or "useradd"
            proc = subprocess.run(
                [
                    useradd,
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--comment",
                    "pushproxy test mail storage",
                    MAIL_SYSTEM_USER,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            try:
                pw = pwd.getpwnam(MAIL_SYSTEM_USER)
            except KeyError:
                raise DovecotError(f"could not create system user {MAIL_SYSTEM_USER}: {proc.stderr.strip()}") from None
    return pw.pw_uid, pw.pw_gid


def _make_traversable(path: Path) -> None:
    """Make sure unprivileged Dovecot processes can walk down to ``path``.

    Adds o+x (search, not read) to ancestors owned by us that lack it, e.g. pytest's
    0700 /tmp/pytest-of-root.
    """
    euid = os.geteuid()
    for p in [path, *path.parents]:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if st.st_mode & stat.S_IXOTH:
            continue
        if st.st_uid != euid:
            raise DovecotError(f"{p} is not traversable by the Dovecot users (mode {oct(st.st_mode)})")
        p.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _generate_tls(tls_dir: Path) -> tuple[Path, Path, Path]:
    """Create a throw-away CA and a server cert for localhost/127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_file = tls_dir / "ca.pem"
    cert_file = tls_dir / "server.pem"
    key_file = tls_dir / "server.key"
    if ca_file.exists() and cert_file.exists() and key_file.exists():
        return ca_file, cert_file, key_file
    tls_dir.mkdir(parents=True, exist_ok=True)

    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(days=1)
    not_after = now + datetime.timedelta(days=3650)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pushproxy test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address(LOOPBACK))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ca_file, cert_file, key_file


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def _quote_local_part(local: str) -> str:
    if _DOT_ATOM.fullmatch(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def make_message(
    subject: str,
    body: str = "hello",
    sender: str = "sender@example.org",
    to: str = "alice@localhost",
    size: int | None = None,
) -> bytes:
    """Build a simple RFC 5322 text/plain message with CRLF line endings.

    ``size``: pad the body with filler lines so the whole message is about that many bytes.
    """
    if not body.endswith("\n"):
        body += "\n"
    encoded_body = body.encode("utf-8")
    cte = "7bit" if encoded_body.isascii() else "8bit"
    headers = (
        f"From: {sender}\n"
        f"To: {to}\n"
        f"Subject: {subject}\n"
        f"Date: {email.utils.formatdate(localtime=True)}\n"
        f"Message-ID: {email.utils.make_msgid(domain='pushproxy.test')}\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        f"Content-Transfer-Encoding: {cte}\n"
        "\n"
    ).encode()
    msg = _crlf(headers + encoded_body)
    if size is not None and size > len(msg):
        line = b"x" * 74 + b"\r\n"
        missing = size - len(msg)
        pad = line * (missing // len(line))
        rest = missing - len(pad)
        if rest >= 3:
            pad += b"x" * (rest - 2) + b"\r\n"
        msg += pad
    return msg


# --------------------------------------------------------------------------- runner


class Dovecot:
    """A private Dovecot instance (imap + lmtp) listening on free loopback ports."""

    host: str = LOOPBACK

    def __init__(
        self,
        base_dir: Path,
        *,
        users: dict[str, str] | None = None,
        master_user: tuple[str, str] | None = None,
        notify: bool = True,
        tls: bool = True,
        login_trusted_networks: str | None = None,
        haproxy: bool = False,
        push_notification_url: str | None = None,
        metadata: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        for name, password in self.users.items():
            self._check_credentials(name, password)
        self.master_user = master_user
        if master_user is not None:
            self._check_credentials(*master_user)
        self.notify = notify
        self.tls = tls
        # Trust ID x-originating-ip / PROXY headers from these networks (client IP forwarding tests).
        self.login_trusted_networks = login_trusted_networks
        self.haproxy = haproxy
        # Dovecot's own push_notification plugin, ox driver, sending (PUT) to this URL on every
        # LMTP delivery (plus IMAP METADATA, which the driver needs); set before start().
        self.push_notification_url = push_notification_url
        self.metadata = metadata  # IMAP METADATA (RFC 5464) on, entries kept in a file dict per user
        self.instance_name = f"pushproxy-dc-{uuid.uuid4().hex[:10]}"

        self.conf_file = self.base_dir / "dovecot.conf"
        self.passwd_file = self.base_dir / "users.passwd"
        self.master_passwd_file = self.base_dir / "master-users.passwd"
        self.mail_dir = self.base_dir / "mail"
        self.state_dir = self.base_dir / "state"
        self.run_dir = self.base_dir / "run"
        self.tls_dir = self.base_dir / "tls"
        self.log_file = self.base_dir / "dovecot.log"
        self.stderr_file = self.base_dir / "dovecot.stderr"
        self.ca_file = self.tls_dir / "ca.pem"
        self.cert_file = self.tls_dir / "server.pem"
        self.key_file = self.tls_dir / "server.key"

        imap_port, imaps_port, lmtp_port = free_ports(3)
        self.imap_port: int = imap_port
        self.imaps_port: int = imaps_port if tls else 0
        self.lmtp_port: int = lmtp_port

        # haproxy=True: an extra IMAP listener that requires a PROXY header.
        self.haproxy_port: int = free_ports(1)[0] if haproxy else 0

        self._proc: subprocess.Popen[bytes] | None = None
        self._short_run_dir: Path | None = None
        self._capability_cache: str | None = None
        self._started_once = False

    # ------------------------------------------------------------------ public API

    @property
    def user_list(self) -> list[DovecotUser]:
        return [DovecotUser(n, p) for n, p in self.users.items()]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 10) -> None:
        """Start Dovecot and wait until IMAP (and LMTP) answer with a greeting."""
        if self.running:
            return
        self._cleanup_processes(signal.SIGKILL)
        self._prepare()
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            try:
                self._spawn(timeout)
                break
            except DovecotError as exc:
                if attempt + 1 < attempts and "Address already in use" in str(exc):
                    # another process grabbed one of our ports between picking and binding
                    imap_port, imaps_port, lmtp_port = free_ports(3)
                    self.imap_port, self.lmtp_port = imap_port, lmtp_port
                    self.imaps_port = imaps_port if self.tls else 0
                    self._write_config()
                    continue
                raise
        self._started_once = True
        _LIVE.add(self)

    def stop(self) -> None:
        """Clean shutdown (SIGTERM to the master); waits until all processes are gone.

        Dovecot's master sleeps a fixed second after asking its children to close their
        listeners before it terminates the rest.  To keep tests fast, the children get their
        SIGTERM right away (what shutdown_clients=yes does anyway: IMAP clients get
        "* BYE Server shutting down"), and once only the master and the log process are left
        and the log is quiet, the master's wait is cut short with SIGKILL.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            # The master only kills the remaining mail processes (imap with a connected
            # client, stats) after that fixed sleep; do what shutdown_clients would do now.
            time.sleep(0.02)
            log_title = f"dovecot-{self.instance_name}/log".encode()
            for pid, cmd in self._process_table():
                if pid != proc.pid and not cmd.startswith(log_title):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                if self._only_master_and_log_left(proc.pid):
                    self._settle_log(quiet=0.05, timeout=0.5)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._cleanup_processes(signal.SIGTERM)
        self._proc = None
        _LIVE.discard(self)
        self._remove_short_run_dir()

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the master and all its children, leave state as is."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._cleanup_processes(signal.SIGKILL)
        self._proc = None
        _LIVE.discard(self)

    def restart(self, timeout: float = 10) -> None:
        """Stop (if running) and start again on the same ports with the same mail data."""
        self.stop()
        self.start(timeout=timeout)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Dovecot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<Dovecot {self.instance_name} imap={self.host}:{self.imap_port} "
            f"imaps={self.imaps_port} lmtp={self.lmtp_port} running={self.running}>"
        )

    def add_user(self, name: str, password: str) -> None:
        """Add (or change the password of) a user; takes effect in the running server too."""
        self._check_credentials(name, password)
        self.users[name] = password
        if not self.base_dir.exists():
            return
        self._write_passwd_files()
        if self.running:
            self._wait_for_passdb(name, password)

    def add_users(self, users: dict[str, str]) -> None:
        """Add several users with one rewrite of the passwd file (one wait for auth to see it, not one per user)."""
        for name, password in users.items():
            self._check_credentials(name, password)
        self.users.update(users)
        if not self.base_dir.exists() or not users:
            return
        self._write_passwd_files()
        if self.running:
            for name, password in users.items():  # the first wait covers the reload; the rest return at once
                self._wait_for_passdb(name, password)

    def deliver(self, rcpt: str, message: bytes | str, *, mailbox: str | None = None) -> None:
        """Deliver ``message`` to ``rcpt`` (user name or address) via LMTP.

        ``mailbox``: deliver into that folder instead of INBOX (LMTP ``user+mailbox``
        detail delivery; the folder is created if missing).
        """
        data = message.encode("utf-8") if isinstance(message, str) else message
        data = _crlf(data)
        local, _, domain = rcpt.partition("@")
        domain = domain or "localhost"
        if mailbox is not None:
            if not mailbox.isascii() or "\r" in mailbox or "\n" in mailbox:
                self._doveadm_save(local, data, mailbox)
                return
            local = f"{local}+{mailbox}"
        address = f"<{_quote_local_part(local)}@{domain}>"
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=30) as lmtp:
            refused = lmtp.sendmail("<sender@example.org>", [address], data)
        if refused:
            raise DovecotError(f"LMTP refused {address}: {refused}")

    def create_mailbox(self, user: str, name: str) -> None:
        """Create (and subscribe) a mailbox for ``user``; no error if it already exists."""
        proc = self.doveadm("mailbox", "create", "-s", "-u", user, name, check=False)
        if proc.returncode != 0 and "already exists" not in proc.stderr.lower():
            raise DovecotError(f"doveadm mailbox create failed: {proc.stderr.strip()}")

    def login_attempts(self, user: str) -> int:
        """IMAP login attempts (successful or failed) for ``user`` seen in the log so far.

        Master-user logins ("alice*admin") count for the target user (alice).
        """
        self._settle_log()
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        target = re.escape(user)
        # success, logged by imap-login once authenticated (for master logins: the target user)
        ok = re.compile(rf" imap-login: Info: Login: user=<{target}>,")
        # failure, logged by the auth process (auth_verbose) for the user whose password was
        # checked (for master logins: the master user).  Only requests from a login process
        # carry a <session>, which excludes doveadm lookups.
        failed = re.compile(
            rf" auth: Info: passwd-file\({target},[^,()]*,(?:master,)?<[^>]*>\): "
            r"(?:Password mismatch|unknown user)"
        )
        count = 0
        for line in text.splitlines():
            if ok.search(line) or failed.search(line):
                count += 1
        return count

    def doveadm(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``doveadm -c <our config> ARGS`` (the server must be running for most commands)."""
        _, doveadm = find_dovecot()
        raw = subprocess.run(
            [doveadm, "-c", str(self.conf_file), *args],
            input=input,
            capture_output=True,
            timeout=_DOVEADM_TIMEOUT,
            check=False,
        )
        proc = subprocess.CompletedProcess(
            raw.args,
            raw.returncode,
            raw.stdout.decode("utf-8", "replace"),
            raw.stderr.decode("utf-8", "replace"),
        )
        if check and proc.returncode != 0:
            raise DovecotError(f"doveadm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for f in (self.stderr_file, self.log_file):
            try:
                content = f.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                continue
            parts.append(f"--- {f.name}\n" + "\n".join(content))
        return "\n".join(parts)

    def processes(self) -> list[int]:
        """PIDs of live (non-zombie) processes belonging to this instance."""
        return [pid for pid, _ in self._process_table()]

    # ------------------------------------------------------------------ internals

    def _process_table(self) -> list[tuple[int, bytes]]:
        """(pid, cmdline) of live processes in our process group or carrying our instance name."""
        pgid = self._proc.pid if self._proc is not None else None
        title = f"dovecot-{self.instance_name}/".encode()
        found: list[tuple[int, bytes]] = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    st = f.read()
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            fields = st[st.rfind(b")") + 2 :].split()
            if len(fields) < 3 or fields[0] in (b"Z", b"X"):
                continue
            in_group = pgid is not None and int(fields[2]) == pgid
            if in_group or cmdline.startswith(title) or self._is_our_master(cmdline):
                found.append((int(entry.name), cmdline))
        return found

    def _only_master_and_log_left(self, master_pid: int) -> bool:
        log_title = f"dovecot-{self.instance_name}/log".encode()
        return all(pid == master_pid or cmd.startswith(log_title) for pid, cmd in self._process_table())

    @staticmethod
    def _check_credentials(name: str, password: str) -> None:
        bad = set(":\r\n\0")
        if not name or bad & set(name) or bad & set(password) or "*" in name:
            raise ValueError(f"unsupported user name/password: {name!r}")

    def _is_our_master(self, cmdline: bytes) -> bool:
        args = cmdline.split(b"\0")
        return bool(args) and args[0].endswith(b"dovecot") and str(self.conf_file).encode() in args

    def _cleanup_processes(self, sig: signal.Signals) -> None:
        deadline = time.monotonic() + 10
        escalated = sig == signal.SIGKILL
        sent = False
        while True:
            pids = self.processes()
            if not pids:
                return
            if not sent or (not escalated and time.monotonic() > deadline - 5):
                if sent:
                    sig, escalated = signal.SIGKILL, True
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                sent = True
            if time.monotonic() > deadline:
                raise DovecotError(f"dovecot processes {pids} of {self.instance_name} did not exit")
            time.sleep(0.05)

    def _prepare(self) -> None:
        uid, gid = _ensure_mail_user()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        _make_traversable(self.base_dir)
        for d in (self.state_dir, self.tls_dir):
            d.mkdir(exist_ok=True)
        self.mail_dir.mkdir(exist_ok=True)
        os.chown(self.mail_dir, uid, gid)
        self.mail_dir.chmod(0o750)
        self._setup_run_dir()
        _generate_tls(self.tls_dir)
        self._write_passwd_files()
        self._write_config()
        pid_file = self.run_dir / "master.pid"
        pid_file.unlink(missing_ok=True)

    def _setup_run_dir(self) -> None:
        if len(str(self.run_dir)) <= _MAX_RUN_DIR_LEN and not self.run_dir.is_symlink():
            self.run_dir.mkdir(exist_ok=True)
            return
        if self._short_run_dir is None or not self._short_run_dir.is_dir():
            self._short_run_dir = Path(tempfile.mkdtemp(prefix="dc-", dir="/tmp"))
            self._short_run_dir.chmod(0o755)
        if self.run_dir.is_symlink() or self.run_dir.exists():
            if self.run_dir.is_symlink() or self.run_dir.is_file():
                self.run_dir.unlink()
            else:
                shutil.rmtree(self.run_dir)
        self.run_dir.symlink_to(self._short_run_dir)

    def _remove_short_run_dir(self) -> None:
        if self._short_run_dir is not None:
            shutil.rmtree(self._short_run_dir, ignore_errors=True)
            self._short_run_dir = None

    @property
    def _dovecot_base_dir(self) -> Path:
        return self._short_run_dir if self._short_run_dir is not None else self.run_dir

    def _write_atomic(self, path: Path, content: str, mode: int = 0o644) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(content)
        tmp.chmod(mode)
        os.replace(tmp, path)

    def _write_passwd_files(self) -> None:
        # passwd-file format: user:password:uid:gid:gecos:home:shell:extra
        self._write_atomic(
            self.passwd_file,
            "".join(f"{n}:{{PLAIN}}{p}::::::\n" for n, p in self.users.items()),
        )
        if self.master_user is not None:
            n, p = self.master_user
            self._write_atomic(self.master_passwd_file, f"{n}:{{PLAIN}}{p}::::::\n")

    def _write_config(self) -> None:
        uid, gid = _ensure_mail_user()
        self._write_atomic(self.conf_file, self._render_config(uid, gid))

    def _render_config(self, uid: int, gid: int) -> str:
        master_passdb = ""
        if self.master_user is not None:
            master_passdb = f"""
# master users: "user*master" + master password logs in as "user"
# (SASL PLAIN with authzid=user, authcid=master works too)
passdb {{
  driver = passwd-file
  master = yes
  args = scheme=PLAIN username_format=%u {self.master_passwd_file}
}}
"""
        imaps_listener = ""
        if self.tls:
            imaps_listener = f"""
  inet_listener imaps {{
    address = {self.host}
    port = {self.imaps_port}
    ssl = yes
  }}"""
        if self.haproxy:
            imaps_listener += f"""
  inet_listener imap_haproxy {{
    address = {self.host}
    port = {self.haproxy_port}
    haproxy = yes
  }}"""
        trusted = ""
        if self.login_trusted_networks:
            trusted = f"login_trusted_networks = {self.login_trusted_networks}\n"
            if self.haproxy:
                trusted += f"haproxy_trusted_networks = {self.login_trusted_networks}\n"
        imap_extra = ""
        if not self.notify:
            imap_extra = f"  imap_capability = {self._capability_without_notify()}\n"
        push_global = push_lmtp = ""
        if self.metadata and not self.push_notification_url:
            imap_extra += "  imap_metadata = yes\n"
            push_global = "\nmail_attribute_dict = file:%h/dovecot-attributes\n"
        if self.push_notification_url:
            # The ox driver only pushes for users whose server METADATA has
            # /private/vendor/vendor.dovecot/http-notify (kept in the attribute dict).
            imap_extra += "  imap_metadata = yes\n"
            push_lmtp = "  mail_plugins = $mail_plugins notify push_notification\n"
            push_global = f"""
mail_attribute_dict = file:%h/dovecot-attributes
plugin {{
  push_notification_driver = ox:url={self.push_notification_url}
}}
"""
        ssl = "no"
        if self.tls:
            ssl = f"yes\nssl_cert = <{self.cert_file}\nssl_key = <{self.key_file}"
        return f"""# Generated by tests/support/dovecot.py -- throw-away test instance.
instance_name = {self.instance_name}
base_dir = {self._dovecot_base_dir}
state_dir = {self.state_dir}
protocols = imap lmtp
listen = {self.host}
shutdown_clients = yes

log_path = {self.log_file}
auth_verbose = yes
verbose_proctitle = yes
{trusted}
login_log_format_elements = user=<%u> method=%m rip=%r lip=%l mpid=%e %c session=<%{{session}}>

default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = {min(uid, 100)}
first_valid_gid = {min(gid, 100)}
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:~/Maildir
mailbox_list_index = {"yes" if self.notify else "no"}

disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_master_user_separator = *

ssl = {ssl}
ssl_min_protocol = TLSv1.2

recipient_delimiter = +
lda_mailbox_autocreate = yes
lda_mailbox_autosubscribe = yes

namespace inbox {{
  inbox = yes
  separator = /
  mailbox "Sent Messages" {{
    auto = subscribe
    special_use = \\Sent
  }}
  mailbox Notes {{
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
}}
{master_passdb}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_file}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_file}
  default_fields = uid={uid} gid={gid} home={self.mail_dir}/%u
}}

service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.imap_port}
  }}{imaps_listener}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {self.host}
    port = {self.lmtp_port}
  }}
}}
# no growing login delays for repeated failed logins from 127.0.0.1
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

protocol imap {{
  mail_max_userip_connections = 100
{imap_extra}}}
protocol lmtp {{
  # "alice@localhost" -> "alice"
  auth_username_format = %Ln
  lmtp_save_to_detail_mailbox = yes
{push_lmtp}}}
{push_global}"""

    def _capability_without_notify(self) -> str:
        """The post-login capability list of this Dovecot build, minus NOTIFY."""
        if self._capability_cache is None:
            self._capability_cache = _probe_capability()
        caps = [c for c in self._capability_cache.split() if c.upper() != "NOTIFY"]
        return " ".join(caps)

    def _spawn(self, timeout: float) -> None:
        dovecot, _ = find_dovecot()
        stderr = open(self.stderr_file, "ab")
        try:
            self._proc = subprocess.Popen(
                [dovecot, "-F", "-c", str(self.conf_file)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            stderr.close()
        try:
            self._wait_for_greeting(self.imap_port, b"* OK", timeout)
            self._wait_for_greeting(self.lmtp_port, b"220 ", timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_for_greeting(self, port: int, prefix: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise DovecotError(f"dovecot exited with status {self._proc.returncode}\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, port), timeout=2) as s:
                    line = s.makefile("rb").readline()
                if line.startswith(prefix):
                    return
                last_error = DovecotError(f"unexpected greeting {line!r}")
            except OSError as exc:
                last_error = exc
            time.sleep(0.05)
        raise DovecotError(f"dovecot did not greet on port {port} within {timeout}s ({last_error})\n{self.log_tail()}")

    def _wait_for_passdb(self, name: str, password: str, timeout: float = 5) -> None:
        # passwd-file is re-read when its mtime/size changes, but the check runs at most once
        # per second per auth process, so poll until the new entry is visible.
        deadline = time.monotonic() + timeout
        while True:
            proc = self.doveadm("auth", "test", name, password, check=False)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise DovecotError(f"user {name} not visible to dovecot auth: {proc.stdout}{proc.stderr}")
            time.sleep(0.2)

    def _doveadm_save(self, user: str, data: bytes, mailbox: str) -> None:
        self.create_mailbox(user, mailbox)
        self.doveadm("save", "-u", user, "-m", mailbox, input=data)

    def _settle_log(self, quiet: float = 0.1, timeout: float = 1.0) -> None:
        """Wait until the log file stopped growing (the log process writes asynchronously)."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            try:
                size = self.log_file.stat().st_size
            except FileNotFoundError:
                size = 0
            if size == last:
                return
            last = size
            time.sleep(quiet)


_CAPABILITY_CACHE: dict[str, str] = {}


def _probe_capability() -> str:
    """Start a scratch instance once per process to learn the real post-login CAPABILITY."""
    dovecot, _ = find_dovecot()
    if dovecot in _CAPABILITY_CACHE:
        return _CAPABILITY_CACHE[dovecot]
    import imaplib

    with tempfile.TemporaryDirectory(prefix="dc-probe-", dir="/tmp") as tmp:
        probe = Dovecot(Path(tmp), users={"probe": "probepw"}, notify=True, tls=False)
        with probe:
            probe.start()
            imap = imaplib.IMAP4(probe.host, probe.imap_port, timeout=10)
            try:
                imap.login("probe", "probepw")
                typ, data = imap.capability()
            finally:
                with contextlib.suppress(Exception):
                    imap.logout()
    if typ != "OK" or not data or not data[0]:
        raise DovecotError(f"could not probe capabilities: {typ} {data}")
    caps = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
    _CAPABILITY_CACHE[dovecot] = caps
    return caps
