"""Install Twisted's asyncio reactor before anything imports ``twisted.internet.reactor``.

aioimaplib, aioapns and aiohttp run on asyncio; the IMAP listeners run on
Twisted.  With Twisted's AsyncioSelectorReactor both share one event loop, so a
watcher event, an extension handler and a session's bytes never cross threads.
"""

from __future__ import annotations

import asyncio
import sys


def install_asyncio_reactor() -> asyncio.AbstractEventLoop:
    """Install (once) and return the loop the reactor runs on."""
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor

        loop = getattr(reactor, "_asyncioEventloop", None)
        if loop is None:
            raise RuntimeError(
                "a non-asyncio Twisted reactor was installed before pushproxy could install the asyncio one"
            )
        return loop  # type: ignore[no-any-return]
    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    return loop
