"""The Web Push sender's metrics on the shared registry of :mod:`pushproxy.metrics`."""

from __future__ import annotations

from pushproxy import metrics


class PrometheusWebPushMetrics:
    def webpush_request(self, status: int | None, seconds: float) -> None:
        metrics.PUSHES.labels(service="webpush", status=str(status) if status is not None else "error").inc()
        metrics.PUSH_LATENCY.labels(service="webpush").observe(seconds)

    def webpush_result(self, outcome: str) -> None:
        if outcome != "ok":
            metrics.PUSH_FAILURES.labels(service="webpush", reason=outcome).inc()
