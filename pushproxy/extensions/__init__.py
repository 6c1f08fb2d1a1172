"""Which extensions this proxy has: discovery, and the config's ``extensions`` list.

Two sources, in this order (together: the extensions *available* here, by name):

- :data:`EXTENSIONS`, the push protocols that ship with pushproxy (name -> ``"module:Class"``);
- the Python entry points of group ``pushproxy.extensions`` (:data:`ENTRY_POINT_GROUP`)
  of every installed distribution, in entry point name order: how a third-party
  package adds one (``[project.entry-points."pushproxy.extensions"]`` in its
  ``pyproject.toml``: ``myproto = "mypackage.extension:MyProto"``; the entry point's
  name is the extension's name).  An entry point whose name is already taken is
  not loaded (pushproxy's own come first).  The tests add their ``eventlog``
  extension this way (``tests/support/distribution.py``).

The config's ``extensions`` list says which available ones this proxy *loads*
(default: pushproxy's own, :data:`EXTENSIONS`): installing a package never changes
what a proxy does until its name is listed.  A name that is not available is a
config error naming the available ones; the section of an available extension
that is not listed is refused (:func:`pushproxy.config_sections.check_extensions`).
A loaded extension is active when its ``configure(config)`` says so (e.g.
``webpush.enabled``); the :class:`~pushproxy.extensions.manager.ExtensionManager`
does the rest.  Every available extension's admin subcommands and tables are
there whether it is listed or not (they come before any config is read).  An
extension module must be cheap to import (heavy dependencies in ``start``):
``pushproxy --help`` imports every one to add its subcommands.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pushproxy.config import Catalogue, Config
from pushproxy.extensions.safecall import guarded
from pushproxy.store import tables

if TYPE_CHECKING:
    from pushproxy.extensions.base import Extension
    from pushproxy.store.schema import SchemaPart

__all__ = [
    "ENTRY_POINT_GROUP",
    "EXTENSIONS",
    "add_subcommands",
    "available",
    "catalogue",
    "check_sections",
    "extension_classes",
]

EXTENSIONS: dict[str, str] = {
    "xapplepush": "pushproxy.extensions.xapplepush.addon:XApplePush",
    "webpush": "pushproxy.extensions.webpush.addon:WebPush",
    "deltachat": "pushproxy.extensions.deltachat.addon:DeltaChat",
}
ENTRY_POINT_GROUP = "pushproxy.extensions"


def _load(entry: str) -> type[Extension]:
    module, _, name = entry.partition(":")
    loaded: type[Extension] = getattr(importlib.import_module(module), name)
    return loaded


def available(entries: Mapping[str, str] = EXTENSIONS, *, installed: bool = True) -> dict[str, type[Extension]]:
    """The listed extensions by name, then (``installed``) every installed distribution's entry points."""
    found = {name: _load(entry) for name, entry in entries.items()}
    points = metadata.entry_points(group=ENTRY_POINT_GROUP) if installed else ()
    for point in sorted(points, key=lambda p: p.name):
        if point.name not in found:
            found[point.name] = point.load()
    return found


def extension_classes(entries: Mapping[str, str] = EXTENSIONS, *, installed: bool = True) -> list[type[Extension]]:
    """Every available extension's class (:func:`available`), in discovery order."""
    return list(available(entries, installed=installed).values())


def catalogue(found: Mapping[str, type[Extension]] | None = None) -> Catalogue:
    """What the config needs to know of the available extensions: names, sections, models, the default list."""
    found = available() if found is None else found
    return Catalogue({name: (cls.section, cls.settings) for name, cls in found.items()}, tuple(EXTENSIONS))


def check_sections(config: Config, found: Mapping[str, type[Extension]] | None = None) -> list[type[Extension]]:
    """The classes of the extensions ``config`` enables (its ``extensions`` list), every section checked.

    Each enabled extension's section is validated by its own model; a top-level key that is
    neither the core's nor an enabled extension's section is an error; one ConfigError names
    every problem, under its section's name.
    """
    found = available() if found is None else found
    return [found[name] for name in config.check_extensions(catalogue(found))]


def add_subcommands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Every discovered extension's admin subcommands (``Extension.cli``: before any config is read)."""
    for cls in extension_classes():
        with guarded(cls.__name__, "cli"):
            cls.cli(subparsers)


def _schema_parts() -> list[SchemaPart | None]:
    return [cls.schema for cls in extension_classes()]


# Every store migrates the tables of every discovered extension, enabled or not (pushproxy.store.tables).
tables.add_part_source(_schema_parts)
