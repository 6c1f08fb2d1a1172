"""The extensions of this proxy: the list the core iterates.

Each entry is ``"module:Class"``; the module must be cheap to import (heavy
dependencies are imported in the extension's ``start``) and must not import
:mod:`pushproxy.config` at module level (``TYPE_CHECKING`` only), because
:mod:`pushproxy.config` imports the list to build its model from every
extension's ``section`` and ``settings``.  An extension is active when its
``configure(config)`` says so.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pushproxy.config import Config
    from pushproxy.extensions.base import Extension

EXTENSIONS: tuple[str, ...] = (
    "pushproxy.extensions.xapplepush.addon:XApplePush",
    "pushproxy.extensions.webpush.addon:WebPush",
    "pushproxy.extensions.deltachat.addon:DeltaChat",
    "pushproxy.extensions.eventlog:EventLog",  # test-only, off unless eventlog.path is set
)


def extension_classes(entries: tuple[str, ...] = EXTENSIONS) -> list[type[Extension]]:
    classes = []
    for entry in entries:
        module, _, name = entry.partition(":")
        classes.append(getattr(importlib.import_module(module), name))
    return classes


def load_extensions(config: Config, entries: tuple[str, ...] = EXTENSIONS) -> list[Extension]:
    """An instance of every listed extension that the config enables, in list order."""
    enabled = []
    for cls in extension_classes(entries):
        ext = cls()
        if ext.configure(config):
            enabled.append(ext)
    return enabled
