"""Delta Chat's METADATA commands, as the proxy answers them (RFC 5464).

Delta Chat (chatmail/core ``src/imap.rs``) registers for push with
``SETMETADATA "INBOX" (/private/devicetoken "openpgp:...")`` (cores before
2.58: the same with a ``{n+}`` literal) once the server advertises METADATA
and signals push: ``XDELTAPUSH``, or (2.58+) a
``/shared/vendor/deltachat/maxsmtprecipients`` value in ``GETMETADATA ""``.

What the proxy takes over (the claims of :class:`~pushproxy.extensions.base.Claim`):

- SETMETADATA whose first line names ``/private/devicetoken``: stored here,
  never relayed; the command's other entries, if any, go upstream first
  (when the upstream has METADATA; else the command is refused, nothing set);
- SETMETADATA whose first line ends in a literal (the token may come after
  it, in a part the claim cannot see): read whole here, as the router reads
  every intercepted command (at most 64 KiB, else ``BAD [TOOBIG]``), and
  handled as above (without the token: its entries set upstream);
- every SETMETADATA / GETMETADATA when the upstream lacks METADATA: answered
  here (only ``/private/devicetoken`` can be set; GETMETADATA returns what
  the proxy itself has: ``maxsmtprecipients`` when configured);
- GETMETADATA of ``maxsmtprecipients`` when ``deltachat.max_smtp_recipients``
  is set: run upstream, its answer relayed, the value added when upstream
  has none.

Everything else passes through untouched.  ``/private/devicetoken`` is
write-only here: GETMETADATA does not return stored tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from pushproxy.accounts import canonical_mailbox
from pushproxy.extensions.base import Reply, SessionContext, UpstreamCommandError
from pushproxy.imap.commands import mailbox_arg
from pushproxy.imap.data import MalformedResponse, parse_capabilities, read_response
from pushproxy.imap.metadata import (
    GetMetadata,
    ends_in_literal,
    first_line_entries,
    metadata_response,
    parse_getmetadata,
    parse_metadata_response,
    parse_setmetadata,
    setmetadata_command,
)
from pushproxy.imap.parse import Command, ParseError, StatusResponse
from pushproxy.imap.response import quote

DEVICETOKEN = "/private/devicetoken"
MAXSMTPRECIPIENTS = "/shared/vendor/deltachat/maxsmtprecipients"
_UPSTREAM_TIMEOUT = 30.0


def upstream_has_metadata(ctx: SessionContext, mailbox: str | None) -> bool:
    caps = ctx.upstream_capabilities
    return "METADATA" in caps or (mailbox == "" and "METADATA-SERVER" in caps)


async def upstream_metadata(ctx: SessionContext, mailbox: str | None) -> bool:
    """:func:`upstream_has_metadata`; when the login's answer named no capabilities, upstream is asked."""
    if ctx.upstream_capabilities:
        return upstream_has_metadata(ctx, mailbox)
    try:
        untagged, _ = await ctx.upstream_command(b"CAPABILITY", timeout=_UPSTREAM_TIMEOUT)
    except UpstreamCommandError:
        return False
    caps: frozenset[str] = frozenset()
    for raw in untagged:
        try:
            caps |= parse_capabilities(read_response(raw)) or frozenset()
        except MalformedResponse:
            continue
    return "METADATA" in caps or (mailbox == "" and "METADATA-SERVER" in caps)


def wants_setmetadata(line: bytes, ctx: SessionContext) -> bool:
    """Claim: a SETMETADATA that names the device token or may name it after a literal, or any when
    upstream cannot answer it.

    The claim sees the first line only, and a literal's body is never read on the relay path: a
    command whose first line ends in a literal (the mailbox, an entry name or a value) may carry
    the token further on, so it is read whole here (at most the router's ``MAX_INTERCEPTED``) and
    its entries other than the token are set upstream (:func:`set_other_entries`).
    """
    first = first_line_entries(line)
    if first is None:  # unreadable: whoever answers METADATA says BAD
        return ends_in_literal(line) or not upstream_has_metadata(ctx, "INBOX")
    return DEVICETOKEN in first.entries or not first.complete or not upstream_has_metadata(ctx, first.mailbox)


def wants_getmetadata(line: bytes, ctx: SessionContext, max_smtp_recipients: int | None) -> bool:
    first = first_line_entries(line)
    if first is None:
        return not upstream_has_metadata(ctx, "INBOX")
    if not upstream_has_metadata(ctx, first.mailbox):
        return True
    return max_smtp_recipients is not None and first.mailbox == "" and MAXSMTPRECIPIENTS in first.entries


@dataclass(frozen=True, slots=True)
class TokenChange:
    """What a SETMETADATA asks of the device token: ``token`` None removes the account's tokens."""

    token: str | None


def token_change(cmd: Command, max_size: int) -> tuple[TokenChange | None, list[tuple[str, bytes | None]]] | Reply:
    """The device-token change and the other entries of a SETMETADATA, or the reply refusing it."""
    try:
        parsed = parse_setmetadata(cmd.args)
    except ParseError as exc:
        return Reply("BAD", f"Invalid SETMETADATA arguments: {exc}")
    tokens = [value for name, value in parsed.entries if name == DEVICETOKEN]
    others = [(name, value) for name, value in parsed.entries if name != DEVICETOKEN]
    if len(tokens) > 1:
        return Reply("BAD", f"{DEVICETOKEN} given twice")
    if not tokens:
        return None, others
    value = tokens[0]
    if value is None:
        return TokenChange(None), others
    if len(value) > max_size:
        return Reply("NO", "Device token too long", f"METADATA MAXSIZE {max_size}")
    if not value or any(b < 0x21 or b > 0x7E for b in value):
        return Reply("NO", "A device token must be printable ASCII without spaces")
    return TokenChange(value.decode("ascii")), others


async def set_other_entries(ctx: SessionContext, mailbox: str, others: list[tuple[str, bytes | None]]) -> Reply | None:
    """The entries of a claimed SETMETADATA that are not the device token, set upstream; None when done."""
    if not others:
        return None
    if not await upstream_metadata(ctx, mailbox):
        return Reply("NO", f"Only {DEVICETOKEN} can be set on this server")
    needs_literal = any(value is not None and quote(value).startswith(b"{") for _, value in others)
    if needs_literal and "LITERAL+" not in ctx.upstream_capabilities:
        return Reply("NO", "Values that need a literal cannot be relayed to this server (it lacks LITERAL+)")
    try:
        untagged, status = await ctx.upstream_command(
            setmetadata_command(_mailbox_wire(mailbox), others), timeout=_UPSTREAM_TIMEOUT
        )
    except UpstreamCommandError:
        return Reply("NO", "Upstream server unavailable, try again later", "UNAVAILABLE")
    _relay_untagged(ctx, untagged)  # what upstream said meanwhile (EXISTS, EXPUNGE ...), as if relayed
    if status.status != b"OK":
        return Reply("NO" if status.status == b"NO" else "BAD", "SETMETADATA failed upstream", _code(status))
    return None


async def get_metadata(cmd: Command, ctx: SessionContext, max_smtp_recipients: int | None) -> Reply:
    """A claimed GETMETADATA: upstream's answer (when it has METADATA) plus what the proxy has."""
    try:
        request = parse_getmetadata(cmd.args)
    except ParseError as exc:
        return Reply("BAD", f"Invalid GETMETADATA arguments: {exc}")
    ours = _own_entries(request, max_smtp_recipients)
    answered: set[str] = set()
    reply = Reply("OK", "GETMETADATA completed.")
    if await upstream_metadata(ctx, request.mailbox):
        try:
            untagged, status = await ctx.upstream_command(_getmetadata_command(request), timeout=_UPSTREAM_TIMEOUT)
        except UpstreamCommandError:
            return Reply("NO", "Upstream server unavailable, try again later", "UNAVAILABLE")
        if status.status != b"OK":
            return Reply("NO" if status.status == b"NO" else "BAD", "GETMETADATA failed upstream", _code(status))
        for raw in untagged:
            parsed = parse_metadata_response(raw)
            if parsed is not None:
                answered.update(parsed[1])
        _relay_untagged(ctx, untagged)
        reply = Reply("OK", "GETMETADATA completed.", _code(status))
    missing = [(name, value) for name, value in ours if name not in answered]
    if missing:
        ctx.reply_untagged(metadata_response(request.mailbox, missing))
    return reply


def _own_entries(request: GetMetadata, max_smtp_recipients: int | None) -> list[tuple[str, bytes | None]]:
    if max_smtp_recipients is None or request.mailbox != "":
        return []
    for name in request.entries:
        if name == MAXSMTPRECIPIENTS or (request.depth != "0" and MAXSMTPRECIPIENTS.startswith(name + "/")):
            return [(MAXSMTPRECIPIENTS, str(max_smtp_recipients).encode())]
    return []


def _relay_untagged(ctx: SessionContext, untagged: list[bytes]) -> None:
    for raw in untagged:
        ctx.reply_untagged(raw[2:].rstrip(b"\r\n") if raw.startswith(b"* ") else raw.rstrip(b"\r\n"))


def _code(status: StatusResponse) -> str | None:
    """Upstream's response code (e.g. ``METADATA LONGENTRIES 3``), passed on when it is plain ASCII."""
    code = status.code
    if code is None or len(code) > 200 or any(b < 0x20 or b > 0x7E or b in b"[]" for b in code):
        return None
    return code.decode("ascii")


def _mailbox_wire(mailbox: str) -> bytes:
    return b'""' if mailbox == "" else mailbox_arg(canonical_mailbox(mailbox))


def _getmetadata_command(request: GetMetadata) -> bytes:
    options = []
    if request.maxsize is not None:
        options.append(b"MAXSIZE %d" % request.maxsize)
    if request.depth != "0":
        options.append(b"DEPTH " + request.depth.encode())
    head = b"GETMETADATA " + (b"(" + b" ".join(options) + b") " if options else b"")
    entries = b" ".join(quote(name) for name in request.entries)
    return head + _mailbox_wire(request.mailbox) + b" (" + entries + b")"
