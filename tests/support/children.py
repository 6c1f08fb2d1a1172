"""Ending a helper child process that waits for a line on its stdin (tests and bench/)."""

from __future__ import annotations

import contextlib
import subprocess


def end_child(proc: subprocess.Popen[str], line: str = "\n", timeout: float = 10.0) -> None:
    """Send ``line`` to the child's stdin (its cue to end), wait up to ``timeout`` seconds, then kill it."""
    if proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):  # it may have gone, or its stdin be closed already
            assert proc.stdin is not None
            proc.stdin.write(line)
            proc.stdin.flush()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
