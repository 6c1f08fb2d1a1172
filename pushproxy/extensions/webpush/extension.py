"""WEBPUSH (draft-gougeon-imap-webpush): mail clients subscribe Web Push endpoints through IMAP.

The capability ``WEBPUSH`` is advertised after login; GETVAPID, WEBPUSH,
ACKWEBPUSH, LWEBPUSH and SILWEBPUSH are answered by the proxy and never
forwarded.  The handlers are in :mod:`.commands`, the argument grammar in
:mod:`.grammar`; delivering mail events to the subscriptions is
:class:`pushproxy.extensions.webpush.delivery.WebPushDelivery`.

The extension owns a maintenance task (expiry of unacknowledged
subscriptions, the subscription gauge) and the verification pushes in
flight: :meth:`WebPushExtension.close` stops them.
"""

from __future__ import annotations

from pushproxy.extensions.base import Extension, SessionContext
from pushproxy.extensions.webpush.commands import WebPushCommands

__all__ = ["WebPushCommands", "WebPushExtension"]


class WebPushExtension(Extension):
    def __init__(self, handlers: WebPushCommands) -> None:
        super().__init__(
            name="webpush",
            capabilities=(b"WEBPUSH",),  # after login only: the commands are invalid before it
            commands={
                "GETVAPID": handlers.getvapid,
                "WEBPUSH": handlers.webpush,
                "ACKWEBPUSH": handlers.ackwebpush,
                "LWEBPUSH": handlers.lwebpush,
                "SILWEBPUSH": handlers.silwebpush,
            },
        )
        self.handlers = handlers

    async def session_closed(self, session: SessionContext) -> None:
        """Lift the silences bound to this connection (``SILWEBPUSH <id>`` without seconds)."""
        await self.handlers.session_closed(session.session_id)

    async def close(self) -> None:
        """Stop the maintenance task and the verification pushes in flight."""
        await self.handlers.close()
