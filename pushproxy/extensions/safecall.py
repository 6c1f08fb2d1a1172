"""The one error policy for extensions' hooks: what happens when an extension raises.

One log line naming the extension and the hook, with the exception's type and
the place it was raised (never a traceback, never the exception's text: it may
carry a token, a password or an endpoint), and one count in
``pushproxy_extension_errors_total{extension,hook}``.  The caller carries on
without that extension's answer.  :class:`~pushproxy.extensions.manager.ExtensionManager`
calls every hook under :func:`guarded`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Iterator

from pushproxy import metrics

__all__ = ["failed", "guarded"]

log = logging.getLogger("pushproxy.extensions")


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame that raised (the log line's only pointer into the code)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    _, package, inside = last.filename.rpartition("/pushproxy/")
    return f"{'pushproxy/' + inside if package else os.path.basename(last.filename)}:{last.lineno}"


def failed(name: str, hook: str, exc: BaseException) -> None:
    """The policy itself: one log line naming the extension and the hook, one count."""
    log.error("extension %s: %s failed (%s at %s)", name, hook, type(exc).__name__, _where(exc))
    metrics.EXTENSION_ERRORS.labels(extension=name, hook=hook).inc()


@contextlib.contextmanager
def guarded(name: str, hook: str, passthrough: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Run the block; an exception (other than ``passthrough``) is :func:`failed` and goes no further."""
    try:
        yield
    except passthrough:
        raise
    except Exception as exc:
        failed(name, hook, exc)
