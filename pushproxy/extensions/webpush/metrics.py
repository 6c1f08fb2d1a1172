"""The Web Push metrics, on the shared registry of :mod:`pushproxy.metrics`.

=========================================  =========  ======================================
name                                       type       labels
=========================================  =========  ======================================
pushproxy_webpush_subscriptions            gauge      state=inactive|active|silenced
pushproxy_webpush_verifications_total      counter    result=sent|acknowledged|expired|
                                                      rate_limited
pushproxy_webpush_payload_fallbacks_total  counter    level=envelope|flags|sync
=========================================  =========  ======================================

- webpush_subscriptions: Web Push subscriptions by state;
  webpush_verifications_total: verification pushes by result;
  webpush_payload_fallbacks_total: pushes sent in a smaller form than the
  richest because the batch did not fit (``envelope``: without the message,
  ``flags``: UIDs and flags only, ``sync``: ``* SYNC``), or that the push
  service refused as too large (``sync``).

Web Push requests are counted in the core's per-service metrics
(``pushproxy_pushes_total``, ``pushproxy_push_failures_total``,
``pushproxy_push_latency_seconds``) under ``service`` = :data:`SERVICE`.
"""

from __future__ import annotations

from pushproxy import metrics

__all__ = [
    "SERVICE",
    "WEBPUSH_PAYLOAD_FALLBACKS",
    "WEBPUSH_PAYLOAD_LEVELS",
    "WEBPUSH_SUBSCRIPTIONS",
    "WEBPUSH_SUBSCRIPTION_STATES",
    "WEBPUSH_VERIFICATIONS",
    "WEBPUSH_VERIFICATION_RESULTS",
    "PrometheusWebPushMetrics",
]

SERVICE = "webpush"  # its label value in the core's per-service metrics

# Label values known in advance: their series read 0 instead of being absent.
WEBPUSH_SUBSCRIPTION_STATES = ("inactive", "active", "silenced")
WEBPUSH_VERIFICATION_RESULTS = ("sent", "acknowledged", "expired", "rate_limited")
WEBPUSH_PAYLOAD_LEVELS = ("envelope", "flags", "sync")

WEBPUSH_SUBSCRIPTIONS = metrics.gauge(
    "pushproxy_webpush_subscriptions", "Web Push subscriptions, by state.", ["state"], WEBPUSH_SUBSCRIPTION_STATES
)
WEBPUSH_VERIFICATIONS = metrics.counter(
    "pushproxy_webpush_verifications",
    "Web Push subscription verification pushes, by result.",
    ["result"],
    WEBPUSH_VERIFICATION_RESULTS,
)
WEBPUSH_PAYLOAD_FALLBACKS = metrics.counter(
    "pushproxy_webpush_payload_fallbacks",
    "Web Push payloads that were too large and fell back to a smaller notification level.",
    ["level"],
    WEBPUSH_PAYLOAD_LEVELS,
)

metrics.known_service(SERVICE)


class PrometheusWebPushMetrics:
    def webpush_request(self, status: int | None, seconds: float) -> None:
        metrics.PUSHES.labels(service=SERVICE, status=str(status) if status is not None else "error").inc()
        metrics.PUSH_LATENCY.labels(service=SERVICE).observe(seconds)

    def webpush_result(self, outcome: str) -> None:
        if outcome != "ok":
            metrics.PUSH_FAILURES.labels(service=SERVICE, reason=outcome).inc()
