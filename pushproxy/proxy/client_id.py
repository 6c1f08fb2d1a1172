"""The ID command (RFC 2971) that tells upstream who the client really is.

With ``upstream.forward_client_ip: id`` the proxy sends, before the first login,
``ID ("x-originating-ip" ... "x-originating-port" ... "x-connected-ip" ...
"x-connected-port" ... "x-session-id" ...)``; Dovecot believes these fields only
from ``login_trusted_networks``, i.e. from the proxy.  A client's own ID before
login is merged into that one (its fields first, every ``x-`` field it sent
dropped: a client must not choose the address upstream records), so upstream
never sees two IDs with conflicting fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from pushproxy.imap.parse import NIL, ParseError, parse_command
from pushproxy.imap.response import quote

_MAX_FIELDS = 30  # RFC 2971: at most 30 field-value pairs
_MAX_VALUE = 1024


@dataclass(frozen=True, slots=True)
class ClientAddress:
    client_ip: str
    client_port: int
    local_ip: str
    local_port: int
    session_id: str

    def id_fields(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-originating-ip", self.client_ip.encode()),
            (b"x-originating-port", str(self.client_port).encode()),
            (b"x-connected-ip", self.local_ip.encode()),
            (b"x-connected-port", str(self.local_port).encode()),
            (b"x-session-id", self.session_id.encode()),
        ]


def _quotable(value: bytes) -> bool:
    return all(0x20 <= c < 0x7F for c in value)


def id_command(tag: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    body = b" ".join(quote(k) + b" " + quote(v) for k, v in fields)
    return tag + b" ID (" + body + b")\r\n"


def merged_id_command(data: bytes, address: ClientAddress | None) -> bytes:
    """The client's ``ID`` command (literals inline) with the proxy's fields instead of any ``x-`` ones.

    Without ``address`` the ``x-`` fields are only dropped: upstream may trust the
    proxy's address (login_trusted_networks) and so believe whatever they say.

    Raises :class:`ParseError` when the client's command is not a valid ID.
    """
    cmd = parse_command(data)
    if len(cmd.args) != 1:
        raise ParseError("ID takes one argument")
    arg = cmd.args[0]
    fields: list[tuple[bytes, bytes]] = []
    if arg is not NIL:
        if not isinstance(arg, list) or len(arg) % 2:
            raise ParseError("ID takes NIL or a list of field-value pairs")
        for i in range(0, len(arg), 2):
            key, value = arg[i], arg[i + 1]
            if not isinstance(key, bytes) or not (isinstance(value, bytes) or value is NIL):
                raise ParseError("ID fields and values are strings")
            if key[:2].lower() == b"x-" or value is NIL or not (_quotable(key) and _quotable(value)):  # type: ignore[arg-type]
                continue  # (8-bit values would need a literal; an ID can live without them)
            fields.append((key[:_MAX_VALUE], value[:_MAX_VALUE]))  # type: ignore[index]
    ours = address.id_fields() if address is not None else []
    fields = fields[: _MAX_FIELDS - len(ours)] + ours
    if not fields:
        return cmd.tag + b" ID NIL\r\n"
    return id_command(cmd.tag, fields)
