"""Sans-IO IMAP framing: a byte stream in, lines and literal chunks out.

The framer knows nothing of sockets (h11 style: ``receive_data(bytes)`` returns
events).  It finds line ends and the literal announcements that can only stand
at a line's end (``{n}``, ``{n+}``, ``{n-}``, ``~{n}``, ``~{n+}``), then hands
the next ``n`` bytes on as :class:`LiteralChunk` slices of the input without
looking at them: message bodies are never scanned, so a bulk FETCH costs one
slice per read.

Both directions use it.  In server mode (responses from upstream), status
responses (``OK``/``NO``/``BAD``/``BYE``/``PREAUTH``, tagged or not) and
continuation requests cannot carry literals, so a human-readable text that
happens to end in ``{5}`` does not desynchronise the stream; an overlong
response line is streamed on as :class:`LinePart` pieces instead of being
buffered.  In client mode an overlong line is discarded (up to its end, and any
non-synchronising literal it announced) and reported once as
:class:`LineTooLong` so the session can answer ``BAD``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Framer",
    "FramingError",
    "Line",
    "LineFrame",
    "LinePart",
    "LineTooLong",
    "LiteralChunk",
    "LiteralSpec",
    "parse_literal_spec",
]

# ``~`` (BINARY), digits, optional ``+``/``-`` (LITERAL+/LITERAL-), at line end.
_LITERAL_RE = re.compile(rb"(~?)\{(\d{1,20})([+-]?)\}\r?\n\Z")
_SERVER_STATUS = frozenset({b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"})
_TAIL_KEEP = 40  # enough to hold "~{<20 digits>+}\r\n"
_HEAD_KEEP = 128  # enough to recover the tag of an overlong line


class FramingError(Exception):
    """The byte stream cannot be framed (e.g. an absurd literal size)."""


# The frame classes are plain slotted dataclasses (not frozen: a frozen one's
# __init__ goes through object.__setattr__, and the relay makes one per line).


@dataclass(slots=True, unsafe_hash=True)  # hashable by value; nothing mutates one after parsing
class LiteralSpec:
    size: int
    nonsync: bool  # {n+} or {n-}: the sender does not wait for "+"
    binary: bool

    @property
    def sync(self) -> bool:
        return not self.nonsync


def parse_literal_spec(line: bytes) -> LiteralSpec | None:
    """The literal announced at the end of ``line`` (which includes its line end), if any."""
    if not line.endswith(b"}\r\n") and not line.endswith(b"}\n"):
        return None
    m = _LITERAL_RE.search(line, max(0, len(line) - _TAIL_KEEP))
    if m is None:
        return None
    return LiteralSpec(int(m.group(2)), m.group(3) != b"", m.group(1) == b"~")


@dataclass(slots=True)
class Line:
    """A complete line, line end included, exactly as received.

    ``continued`` is true when the line goes on a command or response whose
    previous line announced a literal (so it is not the start of a new one).
    """

    data: bytes
    literal: LiteralSpec | None
    continued: bool


@dataclass(slots=True, repr=False)
class LiteralChunk:
    """A piece of a literal's body; ``last`` marks the piece that completes it."""

    data: bytes
    last: bool

    def __repr__(self) -> str:
        return f"LiteralChunk({len(self.data)} bytes, last={self.last})"


@dataclass(slots=True, repr=False)
class LinePart:
    """Server mode only: a piece of a line too long to buffer; forward it as is.

    The piece with ``end=True`` finishes the line; its ``literal`` says whether
    a literal follows.
    """

    data: bytes
    end: bool
    literal: LiteralSpec | None = None

    def __repr__(self) -> str:
        return f"LinePart({len(self.data)} bytes, end={self.end}, literal={self.literal!r})"


@dataclass(slots=True, repr=False, eq=False)  # compared by identity, as before
class LineTooLong:
    """Client mode only: a line over the limit was discarded.

    ``head`` is its first bytes (for the tag), ``continued`` as for Line,
    ``skipped_literal`` the size of a non-synchronising literal it announced
    that was discarded too (0 if none).  A synchronising literal announced by
    it is not expected: the client waits for a ``+`` that never comes, and gets
    the session's BAD instead.
    """

    head: bytes
    continued: bool
    skipped_literal: int

    def __repr__(self) -> str:
        return f"LineTooLong({self.head[:20]!r}..., skipped_literal={self.skipped_literal})"


LineFrame = Line | LiteralChunk | LinePart | LineTooLong

MAX_LITERAL = 1 << 62


class Framer:
    """Incremental framer for one direction of an IMAP connection."""

    def __init__(self, *, server: bool, max_line: int = 65536) -> None:
        self.server = server
        self.max_line = max_line
        self._buf = bytearray()
        self._literal_left = 0
        self._literal_discard = False
        self._continued = False
        # Overlong-line state.
        self._overlong = False
        self._head = b""
        self._tail = b""
        #: True when the frames of the last :meth:`receive_data` call, joined,
        #: are exactly the bytes it was given: nothing carried in from an
        #: earlier read, nothing held back for a later one, nothing discarded.
        #: A relay that forwards every one of those frames unchanged can then
        #: forward the received object itself (zero copy).
        self.exact = True

    # -- state visible to the session ---------------------------------------------
    @property
    def in_literal(self) -> bool:
        return self._literal_left > 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def cancel_literal(self) -> None:
        """The peer refused a synchronising literal: its bytes will not come.

        The line that announced it is finished; the next line is a new command.
        """
        self._literal_left = 0
        self._literal_discard = False
        self._continued = False

    def skip_literal(self, size: int) -> None:
        """Discard the next ``size`` bytes (a refused non-synchronising literal)."""
        self._literal_left = size
        self._literal_discard = True

    # -- the work ------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[LineFrame]:
        """Frame ``data``; afterwards :attr:`exact` says whether the frames are exactly ``data``.

        The common cases cost one C-level search for the line end and one
        object per frame: a line whose byte before the line end is not ``}``
        cannot announce a literal and skips the literal parser; a read that is
        all literal body comes back as the same ``bytes`` object.
        """
        events: list[LineFrame] = []
        append = events.append
        exact = not self._buf  # bytes carried in from an earlier read are not in ``data``
        max_line = self.max_line
        pos = 0
        end = len(data)
        while pos < end:
            left = self._literal_left
            if left:
                take = left if left < end - pos else end - pos
                left -= take
                self._literal_left = left
                if not self._literal_discard:
                    append(LiteralChunk(data if take == end else data[pos : pos + take], not left))
                else:
                    exact = False
                    if not left:
                        self._literal_discard = False
                pos += take
                if not left:
                    self._continued = True
                continue
            nl = data.find(b"\n", pos)
            if self._overlong:
                pos = self._continue_overlong(data, pos, nl, events)
                exact = exact and self.server
                continue
            if nl < 0:
                self._buf += data[pos:]
                if len(self._buf) > max_line:
                    self._start_overlong(events)
                    exact = exact and self.server
                break
            if self._buf:
                self._buf += data[pos : nl + 1]
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = data if pos == 0 and nl + 1 == end else data[pos : nl + 1]
            pos = nl + 1
            n = len(line)
            if n > max_line:
                # The whole line arrived at once but is over the limit.
                self._head = line[:_HEAD_KEEP]
                self._finish_overlong(line, line[-_TAIL_KEEP:], events)
                exact = exact and self.server
                continue
            # A literal is announced only by a "}" right before the line end.
            if n > 2 and (line[-2] == 0x7D or (line[-2] == 0x0D and line[-3] == 0x7D)):
                self._emit_line(line, events)
            else:
                append(Line(line, None, self._continued))
                self._continued = False
        if self._buf:
            exact = False  # a partial line waits for the next read
        self.exact = exact
        return events

    def _literal_of(self, line: bytes) -> LiteralSpec | None:
        spec = parse_literal_spec(line)
        if spec is None:
            return None
        if self.server and not self._continued and not self._server_line_takes_literal(line):
            return None
        if spec.size > MAX_LITERAL:
            raise FramingError("literal size out of range")
        return spec

    @staticmethod
    def _server_line_takes_literal(line: bytes) -> bool:
        if line.startswith(b"+"):
            return False
        parts = line.split(b" ", 3)
        if len(parts) < 2:
            return False
        word = parts[1].upper()
        if word in _SERVER_STATUS:
            return False
        if line.startswith(b"*") and word.isdigit() and len(parts) > 2:
            return True  # "* 12 FETCH ..."
        return line.startswith(b"*")

    def _emit_line(self, line: bytes, events: list[LineFrame]) -> None:
        spec = self._literal_of(line)
        events.append(Line(line, spec, self._continued))
        self._announced(spec)

    def _announced(self, spec: LiteralSpec | None) -> None:
        """The line just emitted announced the literal ``spec`` (or none): what the next bytes are."""
        if spec is not None and spec.size:
            self._literal_left = spec.size
            self._literal_discard = False
            self._continued = False
        else:
            # A zero-length literal is complete at once; the line after it continues.
            self._continued = spec is not None

    # -- overlong lines -----------------------------------------------------------
    def _start_overlong(self, events: list[LineFrame]) -> None:
        self._overlong = True
        buf = bytes(self._buf)
        self._buf.clear()
        self._head = buf[:_HEAD_KEEP]
        self._tail = buf[-_TAIL_KEEP:]
        if self.server:
            events.append(LinePart(buf, end=False))

    def _continue_overlong(self, data: bytes, pos: int, nl: int, events: list[LineFrame]) -> int:
        if nl < 0:
            piece = data[pos:]
            self._tail = (self._tail + piece)[-_TAIL_KEEP:]
            if self.server and piece:
                events.append(LinePart(piece, end=False))
            return len(data)
        piece = data[pos : nl + 1]
        tail = (self._tail + piece)[-_TAIL_KEEP:]
        self._overlong = False
        self._tail = b""
        self._finish_overlong(piece, tail, events)
        return nl + 1

    def _finish_overlong(self, piece: bytes, tail: bytes, events: list[LineFrame]) -> None:
        """``piece`` ends the overlong line whose last bytes are ``tail``."""
        spec = parse_literal_spec(tail)
        if self.server:
            if spec is not None and not self._continued and not self._server_line_takes_literal(self._head):
                spec = None
            events.append(LinePart(piece, end=True, literal=spec))
            self._announced(spec)
        else:
            skipped = spec.size if spec is not None and spec.nonsync else 0
            events.append(LineTooLong(self._head, self._continued, skipped))
            self._continued = False
            if skipped:
                self.skip_literal(skipped)
        self._head = b""
