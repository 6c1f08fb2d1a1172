"""The Delta Chat metrics, on the shared registry of :mod:`pushproxy.metrics`.

==========================================  =========  =====================================
name                                        type       labels
==========================================  =========  =====================================
pushproxy_deltachat_notifications_total     counter    outcome=sent|coalesced|gone|dropped
pushproxy_deltachat_retrying                gauge
==========================================  =========  =====================================

- deltachat_notifications: per token and new message: ``sent`` (the gateway
  answered 2xx), ``coalesced`` (folded into a POST already waiting for the
  same token), ``gone`` (410: the token was removed), ``dropped`` (another
  4xx, or still failing after ``deltachat.retry_deadline``);
- deltachat_retrying: tokens waiting for a retry (429, 5xx, timeouts).

Each POST is counted in the core's per-service metrics
(``pushproxy_pushes_total``, ``pushproxy_push_failures_total``,
``pushproxy_push_latency_seconds``) and the tokens in
``pushproxy_registrations``, under ``service`` / ``kind`` = :data:`SERVICE`.
"""

from __future__ import annotations

from pushproxy import metrics

__all__ = ["NOTIFICATIONS", "RETRYING", "SERVICE", "set_registrations"]

SERVICE = "deltachat"  # its label value in the core's per-service metrics

NOTIFICATIONS = metrics.counter(
    "pushproxy_deltachat_notifications",
    "Delta Chat notifications, by outcome (sent, coalesced, gone, dropped).",
    ["outcome"],
    ("sent", "coalesced", "gone", "dropped"),
)
RETRYING = metrics.gauge("pushproxy_deltachat_retrying", "Delta Chat tokens waiting for a retry of their notification.")

metrics.known_service(SERVICE)


def set_registrations(active: int) -> None:
    metrics.REGISTRATIONS.labels(kind=SERVICE, state="active").set(active)


def request(status: str, seconds: float) -> None:
    """One POST to the gateway: its HTTP status ("200", "410", ...) or "error", and its duration."""
    metrics.PUSHES.labels(service=SERVICE, status=status).inc()
    metrics.PUSH_LATENCY.labels(service=SERVICE).observe(seconds)


def failure(reason: str) -> None:
    """A POST that did not succeed: "http_<status>", "timeout" or "transport"."""
    metrics.PUSH_FAILURES.labels(service=SERVICE, reason=reason).inc()
