"""The APNs metrics, on the shared registry of :mod:`pushproxy.metrics`.

=====================================================  =========  ======
name                                                   type       labels
=====================================================  =========  ======
pushproxy_apns_certificate_days_left                   gauge
pushproxy_apns_certificate_expiry_timestamp_seconds    gauge
=====================================================  =========  ======

- apns_certificate_days_left: days until the APNs client certificate expires
  (negative once expired);
  apns_certificate_expiry_timestamp_seconds: when it expires (its notAfter, Unix
  time), for alerts (``... - time() < 14 * 86400``). Both are set at start and
  every 6 hours, with certificate auth only: they read 0 with a ``.p8`` token key
  (which does not expire) or without APNs.

APNs pushes and registrations are counted in the core's per-service metrics
(``pushproxy_pushes_total``, ``pushproxy_push_failures_total``,
``pushproxy_push_latency_seconds``, ``pushproxy_registrations``) under
``service`` / ``kind`` = :data:`SERVICE`.
"""

from __future__ import annotations

import re
from typing import Protocol

from pushproxy import metrics

__all__ = [
    "APNS_CERTIFICATE_DAYS_LEFT",
    "APNS_CERTIFICATE_EXPIRY",
    "SERVICE",
    "ApnsMetrics",
    "PrometheusApnsMetrics",
    "set_registrations",
]

SERVICE = "apns"  # its label value in the core's per-service metrics

APNS_CERTIFICATE_DAYS_LEFT = metrics.gauge(
    "pushproxy_apns_certificate_days_left", "Days until the APNs client certificate expires (negative once expired)."
)
APNS_CERTIFICATE_EXPIRY = metrics.gauge(
    "pushproxy_apns_certificate_expiry_timestamp_seconds",
    "When the APNs client certificate expires (Unix time; 0 without a certificate).",
)

metrics.known_service(SERVICE)


def set_registrations(active: int) -> None:
    metrics.REGISTRATIONS.labels(kind=SERVICE, state="active").set(active)


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

    def cert_expires_at(self, timestamp: float) -> None:
        """When the certificate expires, Unix time (certificate auth only)."""


class PrometheusApnsMetrics:
    """ApnsMetrics on the shared registry."""

    _REASON = re.compile(r"[A-Za-z]{1,40}")

    def sent(self, status: str) -> None:
        metrics.PUSHES.labels(service=SERVICE, status=status).inc()

    def failed(self, reason: str) -> None:
        # Label values must stay few: anything that is not an APNs-style word is "other".
        label = reason if self._REASON.fullmatch(reason) else "other"
        metrics.PUSH_FAILURES.labels(service=SERVICE, reason=label).inc()

    def latency(self, seconds: float) -> None:
        metrics.PUSH_LATENCY.labels(service=SERVICE).observe(seconds)

    def cert_days_left(self, days: int) -> None:
        APNS_CERTIFICATE_DAYS_LEFT.set(days)

    def cert_expires_at(self, timestamp: float) -> None:
        APNS_CERTIFICATE_EXPIRY.set(timestamp)
