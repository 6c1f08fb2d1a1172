"""Connection limits: in total and per client IP (after PROXY header resolution)."""

from __future__ import annotations

from collections import Counter


class ConnectionLimiter:
    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> str | None:
        """Count the connection in, or say why not (``"total"`` / ``"per_ip"``)."""
        if self.total >= self.max_total:
            return "total"
        if self._per_ip[ip] >= self.max_per_ip:
            return "per_ip"
        self.total += 1
        self._per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self._per_ip[ip] - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            del self._per_ip[ip]

    def count(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)
