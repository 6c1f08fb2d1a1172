"""Switch Dovecot's push_notification ox driver on for a user, from the user's own connection.

The ox driver pushes only for users whose server METADATA holds
``/private/vendor/vendor.dovecot/http-notify``.  When the ox endpoint is enabled
(``admin.ox_secret_file``) and a device registers, the registering extension calls
:func:`enable_ox_notify`: one ``SETMETADATA`` upstream on the session's own
connection, so no admin has to run ``doveadm`` per user.  It never changes the
client's answer: a server without METADATA (or a refusal) is logged and ignored,
and the watchers still push.
"""

from __future__ import annotations

import logging

from pushproxy.extensions.base import SessionContext, UpstreamCommandError

__all__ = ["HTTP_NOTIFY_KEY", "enable_ox_notify"]

log = logging.getLogger(__name__)

HTTP_NOTIFY_KEY = b"/private/vendor/vendor.dovecot/http-notify"
_TIMEOUT = 10.0


def _quoted(value: str) -> bytes | None:
    """An IMAP quoted string, or None where a literal would be needed (non-ASCII, controls)."""
    if not value or any(not 0x20 <= ord(c) < 0x7F for c in value):
        return None
    return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


async def enable_ox_notify(ctx: SessionContext) -> bool:
    """``SETMETADATA "" (/private/vendor/vendor.dovecot/http-notify "user=<login>")``; True if OK."""
    caps = ctx.upstream_capabilities
    login = ctx.login
    if not login or (caps and "METADATA" not in caps):
        return False
    value = _quoted(f"user={login}")
    if value is None:
        log.info("session %s: login name not sendable as a quoted string; ox METADATA not set", ctx.session_id)
        return False
    try:
        _, status = await ctx.upstream_command(b'SETMETADATA "" (' + HTTP_NOTIFY_KEY + b" " + value + b")", _TIMEOUT)
    except UpstreamCommandError as exc:
        log.info("session %s: setting the ox METADATA failed (%s)", ctx.session_id, exc)
        return False
    if status.status != b"OK":
        log.info("session %s: upstream refused the ox METADATA (%s)", ctx.session_id, status.status.decode())
        return False
    return True
