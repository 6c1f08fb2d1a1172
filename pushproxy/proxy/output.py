"""What the client is owed: gathered while one read is handled, then written in one go.

After a failed login the client IP's auth penalty holds all of it back
(:meth:`ClientOutput.hold_back`) until the penalty is served.
"""

from __future__ import annotations

from pushproxy.proxy.session_io import SessionIO


class ClientOutput:
    __slots__ = ("_io", "delayed", "lines")

    def __init__(self, io: SessionIO) -> None:
        self._io = io
        self.lines: list[bytes] = []  # the session and its response router append; flush writes
        self.delayed: list[bytes] | None = None  # held back by the auth penalty

    def flush(self) -> None:
        lines = self.lines
        if lines:
            if self.delayed is not None:
                self.delayed.extend(lines)
            else:
                self._io.to_client(lines[0] if len(lines) == 1 else b"".join(lines))
            lines.clear()

    def hold_back(self) -> None:
        self.delayed = []

    def release(self) -> None:
        """The penalty is served: what was held back goes now."""
        delayed, self.delayed = self.delayed, None
        if delayed:
            self._io.to_client(b"".join(delayed))

    def drop_held(self) -> None:
        """The session closed during the penalty: nothing held back is sent."""
        self.delayed = None

    def unhold(self) -> None:
        """Before a BYE: what was held back goes first, with what is pending."""
        if self.delayed is not None:
            self.lines[:0] = self.delayed
            self.delayed = None
