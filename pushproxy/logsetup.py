"""Logging: text for people, JSON lines for log pipelines.  Secrets never reach here."""

from __future__ import annotations

import json
import logging
import sys
import time

from pushproxy.config import LogConfig


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(cfg: LogConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    # aiohttp.server logs a malformed request from any peer (e.g. TLS bytes on the admin port) at DEBUG
    # with a traceback: a hostile peer must not be able to put tracebacks into the log.
    for noisy in ("aiosqlite", "asyncio", "hpack", "h2", "aiohttp.server"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    # Twisted's own logs go through the standard library too.
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    globalLogBeginner.beginLoggingTo([STDLibLogObserver(name="twisted")], redirectStandardIO=False)
