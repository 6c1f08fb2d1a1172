"""Install Twisted's asyncio reactor before anything imports ``twisted.internet.reactor``.

The upstream watchers (an aioimaplib protocol, :mod:`pushproxy.watch.upstream`),
the push senders (aioapns, aiohttp) and the admin endpoint (aiohttp) run on
asyncio; the IMAP listeners run on Twisted.  With Twisted's AsyncioSelectorReactor both share one
event loop, so a watcher event, an extension handler and a session's bytes never
cross threads.  The loop itself is the standard one or uvloop
(``runtime.event_loop``); uvloop implements the same ``add_reader`` /
``add_writer`` interface the reactor drives, with its polling in C.
"""

from __future__ import annotations

import asyncio
import logging
import sys


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A fresh loop of the requested kind: ``asyncio``, ``uvloop`` or ``auto`` (uvloop if installed)."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError("runtime.event_loop is uvloop but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def install_asyncio_reactor(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """Install (once) and return the loop the reactor runs on."""
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor

        from pushproxy.proxy.transport import asyncio_loop_of

        loop = asyncio_loop_of(reactor)
        if loop is None:
            raise RuntimeError(
                "a non-asyncio Twisted reactor was installed before pushproxy could install the asyncio one"
            )
        return loop  # type: ignore[no-any-return]
    from twisted.internet import asyncioreactor

    loop = new_event_loop(kind)
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    return loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def quiet_tls_teardown(loop: asyncio.AbstractEventLoop) -> None:
    """Log a TLS connection's failure after it was given up as one DEBUG line, not an ERROR with a traceback.

    A watcher that stops (SIGTERM, a lost lease, a changed registration) while
    its TLS handshake is under way aborts the TCP transport; uvloop's SSL
    protocol may still have a read queued, which then fails on the closed
    handle (``RuntimeError: unable to perform operation on <TCPTransport
    closed=True>``) and reaches the loop's exception handler as "Fatal error on
    SSL protocol".  Nothing is lost: the connection was already abandoned.
    Everything else goes to the default handler.
    """

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        message = str(context.get("message", ""))
        exc = context.get("exception")
        transport = context.get("transport")
        closed = transport is not None and _is_closing(transport)
        given_up = (isinstance(exc, RuntimeError) and "closed" in str(exc)) or isinstance(exc, ConnectionError)
        if "SSL" in message and (given_up or closed):
            logging.getLogger("pushproxy.tls").debug("%s after the connection was given up: %r", message, exc)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _is_closing(transport: object) -> bool:
    is_closing = getattr(transport, "is_closing", None)
    try:
        return bool(is_closing()) if callable(is_closing) else False
    except Exception:
        return False
