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

import argparse
import importlib
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pushproxy.config import Config, ConfigError, config_error, unknown_section
from pushproxy.extensions.safecall import guarded
from pushproxy.store import tables

if TYPE_CHECKING:
    from pydantic import BaseModel

    from pushproxy.extensions.base import Extension
    from pushproxy.store.schema import SchemaPart

__all__ = [
    "ENTRY_POINT_GROUP",
    "EXTENSIONS",
    "add_subcommands",
    "check_sections",
    "extension_classes",
    "extension_sections",
]

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


def check_sections(config: Config, classes: Sequence[type[Extension]]) -> None:
    """Validate every extension's section by its own model; one ConfigError with every problem, under its name.

    A top-level key that neither the core nor any of ``classes`` claims is an unknown key.
    """
    claimed = {cls.section for cls in classes if cls.section is not None}
    problems = [unknown_section(key) for key in config.extension_keys() if key not in claimed]
    for cls in classes:
        if cls.section is not None and cls.settings is not None:
            try:
                config.section(cls.section, cls.settings)
            except ConfigError as exc:
                problems.extend(exc.problems)
    if problems:
        raise config_error(problems, config)


def extension_sections() -> dict[str, type[BaseModel]]:
    """Every discovered extension's section and the model that validates it (for ``load_config``)."""
    return {cls.section: cls.settings for cls in extension_classes() if cls.section and cls.settings}


def add_subcommands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Every discovered extension's admin subcommands (``Extension.cli``: before any config is read)."""
    for cls in extension_classes():
        with guarded(cls.__name__, "cli"):
            cls.cli(subparsers)


def _schema_parts() -> list[SchemaPart | None]:
    return [cls.schema for cls in extension_classes()]


# Every store migrates the tables of every discovered extension, enabled or not (pushproxy.store.tables).
tables.add_part_source(_schema_parts)
