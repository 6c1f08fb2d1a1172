"""File systems that fail on purpose, for the SQLite fault tests (they need root; they skip otherwise).

- :func:`small_tmpfs`: a tmpfs of a few hundred KiB, and :func:`fill` to fill
  it to the last byte (what "disk full" is);
- :func:`ext4_remount_ro`: an ext4 file system on a loop device mounted with
  ``errors=remount-ro``, and :func:`force_read_only` to make the kernel do
  what it does on a real I/O error (``trigger_fs_error``): the file system goes
  read-only under the open files;
- :func:`lock_holder`: a second process holding the database's write lock
  (``BEGIN EXCLUSIVE``) until it is told to let go.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.children import end_child


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a test file system needs root")


@contextlib.contextmanager
def small_tmpfs(size_kib: int = 512) -> Iterator[Path]:
    _require_root()
    where = Path(tempfile.mkdtemp(prefix="pp-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        with contextlib.suppress(OSError):
            where.rmdir()


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; the filler file (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    fs = os.statvfs(directory)
    assert fs.f_bavail == 0, fs
    return filler


@contextlib.contextmanager
def ext4_remount_ro(size_mib: int = 16) -> Iterator[tuple[Path, Path]]:
    """(mount point, sysfs directory of the file system) of a fresh ext4 mounted ``errors=remount-ro``."""
    _require_root()
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (e2fsprogs)")
    work = Path(tempfile.mkdtemp(prefix="pp-ext4-"))
    image, where = work / "fs.img", work / "mnt"
    where.mkdir()
    with image.open("wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    done = subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(f"cannot mount a loop device here: {done.stderr.strip()}")
    try:
        source = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(where)], check=True, capture_output=True, text=True
        ).stdout.strip()
        sysfs = Path("/sys/fs/ext4") / Path(source).name
        if not (sysfs / "trigger_fs_error").exists():
            pytest.skip("this kernel has no /sys/fs/ext4/<dev>/trigger_fs_error")
        yield where, sysfs
    finally:
        # Lazy: the process under test may still hold files there; the loop device goes with the last one.
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def force_read_only(sysfs: Path) -> None:
    """What ext4 does on an I/O error with errors=remount-ro: the file system goes read-only at once."""
    (sysfs / "trigger_fs_error").write_text("pushproxy test: forced error\n")


_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def lock_holder(db: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the write lock of ``db`` for as long as the block runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        end_child(proc)
