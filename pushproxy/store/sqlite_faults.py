"""Which SQLite errors are store faults, and which fault: the file system says what a plain I/O error means.

A store fault (full, read-only, busy, damaged, unavailable: the reasons of
:mod:`pushproxy.store.errors`) becomes :class:`StoreUnavailable`, which the
callers survive (one log line and a metric); any other SQLite error (a
constraint, bad SQL) is a bug and stays what it is.  These run on the SQLite
worker threads (:mod:`pushproxy.store.sqlite`), never on the loop: they may
look at the file system.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pushproxy.store.errors import (
    STORE_BUSY,
    STORE_DAMAGED,
    STORE_FULL,
    STORE_READ_ONLY,
    STORE_UNAVAILABLE,
    StoreUnavailable,
)

__all__ = ["classified", "sqlite_fault"]

T = TypeVar("T")


def classified(directory: Path | None, fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except sqlite3.DatabaseError as exc:
        fault = sqlite_fault(exc, directory)
        if fault is None:
            raise
        raise fault from exc


# Primary result codes (the low byte of an extended code): https://sqlite.org/rescode.html
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26


def sqlite_fault(exc: sqlite3.DatabaseError, directory: Path | None) -> StoreUnavailable | None:
    """The store fault an SQLite error is, or None when it is not one (a bug: a constraint, bad SQL).

    A failed write on a file system that went read-only, or that filled up
    between SQLite's checks, often comes back as a plain I/O error: the file
    system (``statvfs`` of the database's directory) tells which.
    """
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    detail = f"SQLite: {exc}"
    if primary == _SQLITE_FULL:
        return StoreUnavailable(detail, STORE_FULL)
    if primary == _SQLITE_READONLY:
        return StoreUnavailable(detail, STORE_READ_ONLY)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreUnavailable(detail, STORE_BUSY)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreUnavailable(detail, STORE_DAMAGED)
    if primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
        return StoreUnavailable(detail, _file_system_state(directory))
    return None


def _file_system_state(directory: Path | None) -> str:
    """Why writes in ``directory`` fail: statvfs first, then (ext4's emergency read-only state does
    not show there) creating and removing a probe file, whose errno says it."""
    if directory is None:
        return STORE_UNAVAILABLE
    try:
        fs = os.statvfs(directory)
    except OSError:
        return STORE_UNAVAILABLE
    if fs.f_flag & os.ST_RDONLY:
        return STORE_READ_ONLY
    if fs.f_bavail == 0 or fs.f_favail == 0:
        return STORE_FULL
    try:
        fd, probe = tempfile.mkstemp(prefix=".pushproxy-probe-", dir=directory)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return STORE_READ_ONLY
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return STORE_FULL
        return STORE_UNAVAILABLE
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return STORE_UNAVAILABLE
