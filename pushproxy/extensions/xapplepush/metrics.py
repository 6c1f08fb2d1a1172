"""What the APNs pusher reports, and its Prometheus implementation (the shared registry)."""

from __future__ import annotations

import re
from typing import Protocol

__all__ = ["ApnsMetrics", "PrometheusApnsMetrics"]


class ApnsMetrics(Protocol):
    """What the pusher reports (see :class:`PrometheusApnsMetrics` for pushproxy.metrics)."""

    def sent(self, status: str) -> None:
        """One attempt finished: its HTTP status ("200", "410", ...), or "error" without a response."""

    def failed(self, reason: str) -> None:
        """One attempt did not succeed: APNs' reason ("BadDeviceToken", ...), "timeout" or "transport"."""

    def latency(self, seconds: float) -> None:
        """Duration of one attempt."""

    def cert_days_left(self, days: int) -> None:
        """Days until the certificate expires (certificate auth only)."""


class PrometheusApnsMetrics:
    """ApnsMetrics on the shared registry of :mod:`pushproxy.metrics`."""

    _REASON = re.compile(r"[A-Za-z]{1,40}")

    def sent(self, status: str) -> None:
        from pushproxy import metrics

        metrics.PUSHES.labels(service="apns", status=status).inc()

    def failed(self, reason: str) -> None:
        from pushproxy import metrics

        # Label values must stay few: anything that is not an APNs-style word is "other".
        label = reason if self._REASON.fullmatch(reason) else "other"
        metrics.PUSH_FAILURES.labels(service="apns", reason=label).inc()

    def latency(self, seconds: float) -> None:
        from pushproxy import metrics

        metrics.PUSH_LATENCY.labels(service="apns").observe(seconds)

    def cert_days_left(self, days: int) -> None:
        from pushproxy import metrics

        metrics.APNS_CERTIFICATE_DAYS_LEFT.set(days)
