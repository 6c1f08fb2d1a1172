"""Logging setup: a peer's malformed input never becomes a traceback in the log, even at DEBUG."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: setup_logging replaces the root handlers and starts Twisted's global log
# observer, process-wide state the rest of the suite must not inherit.
PROBE = """
import logging
from pushproxy.config import LogConfig
from pushproxy.logsetup import setup_logging
setup_logging(LogConfig(level="debug"))
server = logging.getLogger("aiohttp.server")
print(logging.getLogger().level == logging.DEBUG, server.isEnabledFor(logging.DEBUG), server.isEnabledFor(logging.INFO))
"""


def test_debug_level_keeps_aiohttp_server_tracebacks_out() -> None:
    # aiohttp.server logs each malformed request (TLS bytes on the admin port, say) at DEBUG with exc_info.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "False", "True"]
