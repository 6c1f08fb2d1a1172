"""Authentication-failure penalty per client IP (like Dovecot's auth_penalty).

Each failed login from an IP delays the ``NO`` of its next failed logins:
2 s, 4 s, 8 s ... up to ``max_delay``.  Only the address that failed is slowed
(the key is the client's IP as resolved from the socket or a trusted PROXY
header, never something the client says), the table is bounded (least recently
failed entries go first) and an entry is forgotten ``reset_after`` seconds after
its last failure.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(eq=False)
class AuthPenalty:
    max_delay: float
    reset_after: float
    max_entries: int = 65536
    clock: Callable[[], float] = time.monotonic
    # ip -> (count, last failure), least recently failed first
    _failures: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict, init=False, repr=False)

    def failures(self, ip: str) -> int:
        entry = self._failures.get(ip)
        if entry is None:
            return 0
        count, last = entry
        if self.clock() - last > self.reset_after:
            del self._failures[ip]
            return 0
        return count

    def delay(self, ip: str) -> float:
        """Seconds to hold back the NO of a failed login from ``ip`` (its earlier failures count)."""
        count = self.failures(ip)
        if count == 0 or self.max_delay <= 0:
            return 0.0
        return float(min(self.max_delay, 2 ** min(count, 16)))

    def failed(self, ip: str) -> None:
        count = self.failures(ip)
        self._failures[ip] = (count + 1, self.clock())
        self._failures.move_to_end(ip)
        while len(self._failures) > self.max_entries:
            self._failures.popitem(last=False)
