"""The tests' own distribution, ``pushproxy-test-extensions``: how the test-only extensions get into the proxy.

pushproxy ships only real push protocols (``pushproxy.extensions.EXTENSIONS``).
The tests add theirs (``eventlog``: :mod:`tests.support.eventlog`) the way a
third-party package does: an entry point of group ``pushproxy.extensions`` in an
installed distribution's metadata.  :func:`install` writes that metadata (the
``.dist-info`` directory pip would write for a package declaring
``[project.entry-points."pushproxy.extensions"] eventlog = "tests.support.eventlog:EventLog"``)
into a directory that the test session puts on ``sys.path`` and on every
subprocess's ``PYTHONPATH`` (``tests/conftest.py``), so every venv sees it
without installing anything.  A proxy started without that directory on its
path has no eventlog, as in production; with it, a config still has to list
``eventlog`` in ``extensions`` to load it.
"""

from __future__ import annotations

import os
from pathlib import Path

NAME = "pushproxy_test_extensions"
VERSION = "0"
ENTRY_POINTS = {"eventlog": "tests.support.eventlog:EventLog"}
ROOT = Path(__file__).resolve().parents[2]  # where the ``tests`` package is imported from


def install(directory: Path) -> Path:
    """Write the distribution's metadata into ``directory``; returns it (the path entry to add)."""
    info = directory / f"{NAME}-{VERSION}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {NAME.replace('_', '-')}\nVersion: {VERSION}\n")
    points = "".join(f"{name} = {target}\n" for name, target in ENTRY_POINTS.items())
    (info / "entry_points.txt").write_text(f"[pushproxy.extensions]\n{points}")
    return directory


def python_path(*more: str) -> str:
    """A ``PYTHONPATH`` for a subprocess: the tests' entries (the distribution, the repository) and ``more``."""
    entries = [*(os.environ.get("PYTHONPATH", "").split(os.pathsep)), str(ROOT), *more]
    return os.pathsep.join(dict.fromkeys(e for e in entries if e))
