"""Server responses as whole units: lines plus their literals (sans-IO).

:class:`ResponseAssembler` turns a byte stream from an IMAP server into
complete responses, each the exact bytes of one response with its literals
inline (``* 3 FETCH (BODY[] {5}\\r\\nhello)\\r\\n``), ready for the value
parser (:mod:`pushproxy.imap.parse`) and the typed readers
(:mod:`pushproxy.imap.data`, :mod:`pushproxy.imap.fetch`).

It is built on the one framer (:class:`~pushproxy.imap.framing.Framer` in
server mode), so both the relay and every reader of whole responses agree on
where a literal starts (status responses and continuation requests cannot
carry one) and where a line ends.  The work is linear in the bytes received
whatever the chunking: the framer searches each byte for a line end once,
and the response is collected in one growing buffer that is copied once when
complete.  :attr:`ResponseAssembler.work` counts the bytes touched (received,
collected, handed out) so that tests can check that bound without a clock.

A response over ``max_response`` bytes raises :class:`ResponseTooLarge`; an
absurd literal size :class:`MalformedResponse`: both are
:class:`~pushproxy.imap.parse.ParseError`, the core's one error type.
"""

from __future__ import annotations

from pushproxy.imap.framing import Framer, FramingError, Line, LinePart, LiteralChunk
from pushproxy.imap.parse import ParseError

__all__ = ["DEFAULT_MAX_RESPONSE", "MalformedResponse", "ResponseAssembler", "ResponseCollector", "ResponseTooLarge"]

DEFAULT_MAX_RESPONSE = 4 * 1024 * 1024


class MalformedResponse(ParseError):
    """Server bytes that are not a readable IMAP response."""


class ResponseTooLarge(MalformedResponse):
    """A response over the assembler's size limit."""


class ResponseCollector:
    """Frames of a server-mode Framer in, complete responses out.

    For a reader that frames the stream itself (the session, which forwards
    most of it): it hands over only the frames of the responses it wants
    whole.
    """

    __slots__ = ("_max", "_partial", "work")

    def __init__(self, max_response: int = DEFAULT_MAX_RESPONSE) -> None:
        self._max = max_response
        self._partial = bytearray()
        self.work = 0

    @property
    def pending(self) -> int:
        return len(self._partial)

    def add(self, frame: object) -> bytes | None:
        """The response this frame completes, if any."""
        kind = type(frame)
        if kind is Line:
            assert isinstance(frame, Line)
            piece, complete = frame.data, frame.literal is None
        elif kind is LiteralChunk:
            assert isinstance(frame, LiteralChunk)
            piece, complete = frame.data, False
        elif kind is LinePart:
            assert isinstance(frame, LinePart)
            piece, complete = frame.data, frame.end and frame.literal is None
        else:  # LineTooLong exists only in client mode
            raise MalformedResponse("unexpected frame")
        partial = self._partial
        if len(partial) + len(piece) > self._max:
            partial.clear()
            raise ResponseTooLarge(f"response larger than {self._max} bytes")
        self.work += len(piece)
        if complete and not partial:
            return piece
        partial += piece
        if not complete:
            return None
        self.work += len(partial)
        out = bytes(partial)
        partial.clear()
        return out


class ResponseAssembler:
    """Byte stream in, complete responses (bytes, literals inline) out."""

    __slots__ = ("_collector", "_framer", "_max", "_work_in")

    def __init__(self, max_response: int = DEFAULT_MAX_RESPONSE) -> None:
        # Lines may be as long as a whole response: the framer streams longer
        # ones as LineParts, which are collected like any other piece.
        self._framer = Framer(server=True, max_line=min(max_response, 65536))
        self._collector = ResponseCollector(max_response)
        self._max = max_response
        self._work_in = 0

    @property
    def work(self) -> int:
        """Bytes touched so far: received, collected and handed out."""
        return self._work_in + self._collector.work

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete response."""
        return self._collector.pending + self._framer.buffered

    def feed(self, data: bytes) -> list[bytes]:
        """The responses the new bytes complete (possibly none)."""
        self._work_in += len(data)
        try:
            frames = self._framer.receive_data(data)
        except FramingError as exc:
            raise MalformedResponse(str(exc)) from None
        out: list[bytes] = []
        add = self._collector.add
        for frame in frames:
            response = add(frame)
            if response is not None:
                out.append(response)
        # The framer buffers an unfinished line itself: bound it too.
        if self.pending > self._max:
            raise ResponseTooLarge(f"response larger than {self._max} bytes")
        return out
