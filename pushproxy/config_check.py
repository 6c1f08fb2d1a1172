"""``check-config``: the files a configuration names, checked the way ``serve`` will use them.

A config can be valid YAML with valid values and still fail at start: a TLS key that
is not there, an APNs certificate the service user cannot read, a state directory it
cannot write.  :func:`check_files` finds those without starting anything.  Access is
checked for the user running the command: run it as the service user (``sudo -u
pushproxy pushproxy check-config ...``, or ``docker run ... check-config``).

Problems are errors (``serve`` would fail) or warnings (it would start, but a secret
is readable by other users).  Files ``serve`` generates when missing (vault key, VAPID
key, SQLite database) only need a writable directory.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pushproxy.config import Config

__all__ = ["FileReport", "check_files"]


@dataclass
class FileReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def readable(self, key: str, path: Path | None, *, secret: bool = False) -> None:
        """A file ``serve`` reads (when set): it must exist and be readable; secrets not by others."""
        if path is not None:
            _check_readable(self, key, path, secret=secret)

    def generated(self, key: str, path: Path) -> None:
        """A file ``serve`` creates when missing."""
        _check_generated(self, key, path)


def _check_readable(report: FileReport, key: str, path: Path, *, secret: bool) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        report.errors.append(f"{key}: {path} does not exist")
        return
    except OSError as exc:
        report.errors.append(f"{key}: {path}: {exc.strerror}")
        return
    if not stat.S_ISREG(st.st_mode):
        report.errors.append(f"{key}: {path} is not a regular file")
        return
    if not os.access(path, os.R_OK):
        report.errors.append(f"{key}: {path} is not readable by uid {os.geteuid()} (mode {stat.S_IMODE(st.st_mode):o})")
        return
    if secret and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) & ~stat.S_IRGRP:
        report.warnings.append(
            f"{key}: {path} has mode {stat.S_IMODE(st.st_mode):o}: other users can access this secret; "
            "chmod 600 (or 640)"
        )


def _check_generated(report: FileReport, key: str, path: Path) -> None:
    """A file ``serve`` creates if missing: it must be readable, or its directory writable."""
    try:
        path.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:  # e.g. a directory on the way that this user cannot search
        report.errors.append(f"{key}: {path}: {exc.strerror} (uid {os.geteuid()})")
        return
    else:
        _check_readable(report, key, path, secret=True)
        if not os.access(path, os.W_OK) and key == "store.url":
            report.errors.append(f"{key}: {path} is not writable by uid {os.geteuid()}")
        return
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        report.errors.append(f"{key}: {path} does not exist and {parent} is not writable by uid {os.geteuid()}")


def check_files(cfg: Config, *, push: bool) -> FileReport:
    """Check every file of the core's sections the configuration refers to for the features it enables.

    ``push``: some extension is enabled, so the store and the watchers' credentials are used.
    The extensions check their own files into the same report
    (``ExtensionManager.check_files``).
    """
    report = FileReport()

    def readable(key: str, path: Path | None, *, secret: bool = False) -> None:
        if path is not None:
            _check_readable(report, key, path, secret=secret)

    if cfg.listen.imaps or cfg.listen.tls_cert_file or cfg.listen.tls_key_file:
        if cfg.listen.imaps and (cfg.listen.tls_cert_file is None or cfg.listen.tls_key_file is None):
            report.errors.append("listen.imaps needs listen.tls_cert_file and listen.tls_key_file")
        readable("listen.tls_cert_file", cfg.listen.tls_cert_file)
        readable("listen.tls_key_file", cfg.listen.tls_key_file, secret=True)
    if cfg.upstream.security != "none":
        readable("upstream.ca_file", cfg.upstream.ca_file)
    readable("admin.ox_secret_file", cfg.admin.ox_secret_file, secret=True)

    if not push:
        return report
    if cfg.store.url.startswith("sqlite:///") and cfg.store.url.rstrip("/").rpartition("/")[2] != ":memory:":
        _check_generated(report, "store.url", Path("/" + cfg.store.url[len("sqlite://") :].lstrip("/")))
    if cfg.watch.credentials == "vault":
        _check_generated(report, "watch.vault_key_file", cfg.vault_key_path())
    if cfg.watch.credentials == "master":
        readable("watch.master_password_file", cfg.watch.master_password_file, secret=True)
    return report
