"""What upstream is told of the client in ID commands before login (``upstream.forward_client_ip: id``).

The command builders are :mod:`pushproxy.proxy.client_id` (sans-IO); this is
the session's part that sends them: the proxy's own ID before the first login
(its answer swallowed through the ledger), and a client's own ID before login,
merged with the proxy's fields.
"""

from __future__ import annotations

from pushproxy.extensions.base import Reply
from pushproxy.imap.parse import ParseError
from pushproxy.proxy.client_id import ClientAddress, id_command, merged_id_command
from pushproxy.proxy.ledger import CommandLedger
from pushproxy.proxy.session_io import SessionIO


class UpstreamId:
    def __init__(self, io: SessionIO, ledger: CommandLedger, address: ClientAddress | None) -> None:
        self._io = io
        self._ledger = ledger
        self._address = address
        self._sent = False  # the ID carrying the client's address went upstream

    def before_login(self) -> None:
        """A login goes upstream: first the client's address, once (answers swallowed)."""
        if self._address is None or self._sent:
            return
        tag = self._ledger.next_own_tag(b"PPI")
        self._ledger.sent_own(tag)
        self._sent = True
        self._io.to_upstream(id_command(tag, self._address.id_fields()))

    def client_id(self, tag: bytes, data: bytes) -> Reply | None:
        """The client's own ID (the whole command) before login, sent merged; a Reply when it is refused."""
        try:
            command = merged_id_command(data, self._address)
        except ParseError as exc:
            return Reply("BAD", f"Invalid arguments: {exc}")
        self._sent = self._address is not None
        self._ledger.sent(tag)
        self._io.to_upstream(command)
        return None
