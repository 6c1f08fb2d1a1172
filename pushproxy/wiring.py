"""Which components exist for a given config, and how they connect.

A config with only ``listen``, ``upstream`` and ``store`` is a plain
transparent proxy: no store is opened, no capability added.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pushproxy.extensions.base import ExtensionRegistry
from pushproxy.proxy.server import ProxyService

if TYPE_CHECKING:
    from pushproxy.app import App

log = logging.getLogger("pushproxy.wiring")


async def build(app: App) -> None:
    cfg = app.config
    extensions = ExtensionRegistry()
    service = ProxyService(cfg, extensions=extensions)
    service.start()
    app.service = service
