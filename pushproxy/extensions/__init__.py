"""Which extensions this proxy has: discovery.

Two sources, in this order:

- :data:`EXTENSIONS`, the push protocols that ship with pushproxy (``"module:Class"``);
- the Python entry points of group ``pushproxy.extensions`` (:data:`ENTRY_POINT_GROUP`)
  of every installed distribution, in entry point name order: how a third-party
  package adds one (``[project.entry-points."pushproxy.extensions"]`` in its
  ``pyproject.toml``: ``myproto = "mypackage.extension:MyProto"``).  The tests
  add their ``eventlog`` extension this way (``tests/support/test_distribution.py``).

A discovered extension is active when its ``configure(config)`` says so; the
:class:`~pushproxy.extensions.manager.ExtensionManager` does the rest.  An
extension module must be cheap to import (heavy dependencies in ``start``):
``pushproxy --help`` imports every one to add its subcommands.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pushproxy.extensions.base import Extension

__all__ = ["ENTRY_POINT_GROUP", "EXTENSIONS", "extension_classes"]

EXTENSIONS: tuple[str, ...] = (
    "pushproxy.extensions.xapplepush.addon:XApplePush",
    "pushproxy.extensions.webpush.addon:WebPush",
    "pushproxy.extensions.deltachat.addon:DeltaChat",
)
ENTRY_POINT_GROUP = "pushproxy.extensions"


def _load(entry: str) -> type[Extension]:
    module, _, name = entry.partition(":")
    loaded: type[Extension] = getattr(importlib.import_module(module), name)
    return loaded


def extension_classes(entries: tuple[str, ...] = EXTENSIONS, *, installed: bool = True) -> list[type[Extension]]:
    """The listed extensions, then (``installed``) every installed distribution's entry points, each class once."""
    classes = [_load(entry) for entry in entries]
    points = metadata.entry_points(group=ENTRY_POINT_GROUP) if installed else ()
    for point in sorted(points, key=lambda p: p.name):
        cls = point.load()
        if cls not in classes:
            classes.append(cls)
    return classes
