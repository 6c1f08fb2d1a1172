"""The core's Prometheus metrics, and the registry every extension's metrics are on.

The metrics live on a dedicated :data:`REGISTRY` rather than prometheus_client's
global one, so that tests can build as many applications as they like in one
process without "duplicated timeseries" errors.  ``/metrics`` on the admin
listener (:mod:`pushproxy.admin`) exposes exactly this registry.

The names below are an outside surface (dashboards and alerts depend on them):
add metrics freely, never rename one.  Each extension defines its own metrics
on :data:`REGISTRY` in its package (``pushproxy/extensions/<name>/metrics.py``:
``pushproxy_apns_*``, ``pushproxy_webpush_*``) and reports its pushes and
registrations here, under its own ``service`` / ``kind`` label value
(:func:`known_service`).  Discovery imports every extension before the admin
listener opens (``pushproxy.extensions``), so ``/metrics`` shows all of them.

==========================================  =========  ======================================
name                                        type       labels
==========================================  =========  ======================================
pushproxy_sessions_active                   gauge
pushproxy_sessions_total                    counter
pushproxy_session_bytes_total               counter    direction=client_to_upstream|
                                                       upstream_to_client
pushproxy_commands_intercepted_total        counter    command
pushproxy_connections_refused_total         counter    reason=total|per_ip|proxy_header|timeout|
                                                       fd_limit
pushproxy_logins_total                      counter
pushproxy_auth_failures_total               counter
pushproxy_session_timeouts_total            counter    kind=preauth
pushproxy_registrations                     gauge      kind=<extension's service>, state
pushproxy_watchers                          gauge      state=connecting|idle|polling|backoff|
                                                       auth_failed|stopped
pushproxy_watcher_reconnects_total          counter
pushproxy_watchers_wanted                   gauge
pushproxy_watchers_up                       gauge
pushproxy_watchers_logins_total             counter
pushproxy_watchers_logins_in_flight         gauge
pushproxy_watchers_connect_queue            gauge
pushproxy_event_dispatch_latency_seconds    histogram
pushproxy_extension_errors_total            counter    extension, hook
pushproxy_pushes_total                      counter    service=apns|webpush|..., status
pushproxy_push_failures_total               counter    service, reason
pushproxy_push_latency_seconds              histogram  service
pushproxy_push_queue                        gauge      service
pushproxy_store_up                          gauge
pushproxy_store_errors_total                counter    reason=full|read_only|busy|unreachable|
                                                       damaged|unavailable
pushproxy_cluster_leases_held               gauge
pushproxy_cluster_nodes_live                gauge
pushproxy_cluster_accounts_unwatched        gauge
pushproxy_cluster_takeovers_total           counter
pushproxy_push_ledger_conflicts_total       counter
pushproxy_loop_lag_seconds                  histogram
pushproxy_loop_lag_max_seconds              gauge
process_*                                   various    (Linux: memory, CPU, open fds)
==========================================  =========  ======================================

What they mean:

- sessions_active / sessions_total: client sessions open now / accepted since start.
- session_bytes_total: bytes relayed through client sessions, per direction.
- commands_intercepted_total: commands answered by an extension instead of the
  upstream server (XAPPLEPUSHSERVICE, WEBPUSH, ...), by command name.
- connections_refused_total: client connections closed with ``* BYE`` before a
  session started: over ``session.max_connections`` (total) or
  ``session.max_connections_per_ip`` (per_ip), a PROXY header that was invalid or
  came from an untrusted peer (proxy_header), no PROXY header in time (timeout),
  no file descriptor left to accept it (fd_limit: the listener pauses a second).
- logins_total: client logins (LOGIN / AUTHENTICATE) answered OK by upstream;
  auth_failures_total: LOGIN / AUTHENTICATE answered NO by upstream (each one
  grows the client IP's auth penalty); session_timeouts_total: sessions closed
  for not logging in within ``session.preauth_timeout`` of connecting.
- registrations: push registrations in the store by kind and state (``active``,
  ``expired``, ...).
- watchers: upstream watcher connections by state; watcher_reconnects_total:
  reconnects after a lost or failed upstream connection.
- extension_errors_total: exceptions an extension's hook raised (``on_event``,
  ``command XAPPLEPUSHSERVICE``, ``session_closed``, ...), each logged once and
  caught by the extension manager (:mod:`pushproxy.extensions.manager`): the
  core carried on without that extension's answer.  Any increase is a bug.
- watchers_up / watchers_wanted: watchers connected and watching / watchers this
  node wants up (the "3,400/10,000 up" of the ramp's progress log line);
  watchers_logins_total: watcher connections let through the connect gate
  (``watch.connect_rate``: start, restart, takeover and reconnects all go through
  it); watchers_logins_in_flight: those being opened and logged in now (at most
  ``watch.connect_in_flight``); watchers_connect_queue: those waiting for it.
- event_dispatch_latency_seconds: upstream change notification -> its pushes
  dispatched (includes the debounce delay).
- pushes_total: push requests by service and outcome (``status`` is the HTTP
  status code, or ``error`` when there was no response); push_failures_total:
  failed pushes by reason (APNs ``reason``, ``timeout``, ``gone``, ...);
  push_latency_seconds: one push request, send -> response; push_queue:
  pushes waiting to be sent or in flight (APNs: debounce windows, sends and
  their retries; WebPush: bursts waiting for their quiet period and send
  batches; Delta Chat: tokens with a POST to come), read from the sender at
  each scrape.
- store_up: 1 if the last store operation succeeded, else 0.
- store_errors_total: store operations that failed for a transient reason
  (a full or read-only disk, a lock held by another process past the busy
  timeout, an unreachable database server, ...); each episode is also one
  WARNING in the log, and registration commands answer ``NO [UNAVAILABLE]``
  with the reason meanwhile (see ``pushproxy/store/errors.py``).
- cluster_leases_held: accounts this node watches under a lease;
  cluster_nodes_live: nodes with a recent heartbeat (this one included);
  cluster_accounts_unwatched: accounts with registrations and no unexpired
  lease, i.e. no node watches them (as this node saw the leases at its last
  lease round, after its own takeovers); cluster_takeovers_total: leases this
  node took from a node whose lease had expired; push_ledger_conflicts_total:
  messages whose push another node (or another source on this node) had
  already claimed.

- loop_lag_seconds: how late the event loop ran a timer, sampled every 0.25 s
  (everything shares one loop: a long callback delays sessions, watchers and
  pushes alike); loop_lag_max_seconds: the largest of the last minute.

prometheus_client appends ``_created`` series to counters and histograms; they
are left on (the default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

__all__ = [
    "AUTH_FAILURES",
    "COMMANDS_INTERCEPTED",
    "CONNECTIONS_REFUSED",
    "CONNECTION_REFUSAL_REASONS",
    "EVENT_DISPATCH_LATENCY",
    "LOGINS",
    "LOOP_LAG",
    "LOOP_LAG_MAX",
    "PUSHES",
    "PUSH_FAILURES",
    "PUSH_LATENCY",
    "PUSH_QUEUE",
    "REGISTRATIONS",
    "REGISTRY",
    "SESSIONS_ACTIVE",
    "SESSIONS_TOTAL",
    "SESSION_BYTES",
    "SESSION_DIRECTIONS",
    "SESSION_TIMEOUTS",
    "STORE_ERRORS",
    "STORE_UP",
    "WATCHERS",
    "WATCHERS_CONNECT_QUEUE",
    "WATCHERS_LOGINS",
    "WATCHERS_LOGINS_IN_FLIGHT",
    "WATCHERS_UP",
    "WATCHERS_WANTED",
    "WATCHER_RECONNECTS",
    "WATCHER_STATES",
    "counter",
    "exposition",
    "gauge",
    "histogram",
    "known_service",
    "report_queue",
    "set_state_gauge",
    "with_labels",
]

REGISTRY = CollectorRegistry()

M = TypeVar("M", Counter, Gauge)


def with_labels(metric: M, values: Iterable[str]) -> M:
    """``metric`` (one label) with a series for each of ``values`` created now.

    Label values known in advance read 0 instead of being absent (absent
    series break rate() and alerts).
    """
    for value in values:
        metric.labels(value)
    return metric


# Every metric, the core's and the extensions', is made by one of these three, on REGISTRY.
def counter(name: str, text: str, labels: Sequence[str] = (), values: Iterable[str] = ()) -> Counter:
    """A counter on :data:`REGISTRY`; with one label, ``values`` are series from the start (:func:`with_labels`)."""
    return with_labels(Counter(name, text, labels, registry=REGISTRY), values)


def gauge(name: str, text: str, labels: Sequence[str] = (), values: Iterable[str] = ()) -> Gauge:
    """A gauge on :data:`REGISTRY`; with one label, ``values`` are series from the start (:func:`with_labels`)."""
    return with_labels(Gauge(name, text, labels, registry=REGISTRY), values)


def histogram(name: str, text: str, labels: Sequence[str] = (), *, buckets: Sequence[float]) -> Histogram:
    """A histogram on :data:`REGISTRY`."""
    return Histogram(name, text, labels, buckets=buckets, registry=REGISTRY)


SESSION_DIRECTIONS = ("client_to_upstream", "upstream_to_client")
CONNECTION_REFUSAL_REASONS = ("total", "per_ip", "proxy_header", "timeout", "fd_limit")
WATCHER_STATES = ("connecting", "idle", "polling", "backoff", "auth_failed", "stopped")

# Dispatch latency includes the debounce (1 s by default), hence the long tail.
_DISPATCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
_PUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- client sessions -------------------------------------------------------
SESSIONS_ACTIVE = gauge("pushproxy_sessions_active", "Client sessions open now.")
SESSIONS_TOTAL = counter("pushproxy_sessions", "Client sessions accepted.")
SESSION_BYTES = counter(
    "pushproxy_session_bytes", "Bytes relayed through client sessions.", ["direction"], SESSION_DIRECTIONS
)
_INTERCEPTED_HELP = "IMAP commands answered by a proxy extension instead of the upstream server."
COMMANDS_INTERCEPTED = counter("pushproxy_commands_intercepted", _INTERCEPTED_HELP, ["command"])
CONNECTIONS_REFUSED = counter(
    "pushproxy_connections_refused",
    "Client connections refused before a session started, by reason.",
    ["reason"],
    CONNECTION_REFUSAL_REASONS,
)
LOGINS = counter("pushproxy_logins", "Client logins answered OK by the upstream server.")
AUTH_FAILURES = counter("pushproxy_auth_failures", "Logins answered NO by the upstream server.")
SESSION_TIMEOUTS = counter(
    "pushproxy_session_timeouts", "Sessions closed by a deadline, by kind.", ["kind"], ("preauth",)
)

# --- registrations and watchers ---------------------------------------------
_REGISTRATIONS_HELP = "Push registrations in the store, by kind and state."
REGISTRATIONS = gauge("pushproxy_registrations", _REGISTRATIONS_HELP, ["kind", "state"])
WATCHERS = gauge("pushproxy_watchers", "Upstream watcher connections, by state.", ["state"], WATCHER_STATES)
_RECONNECTS_HELP = "Watcher reconnects after a lost or failed upstream connection."
WATCHER_RECONNECTS = counter("pushproxy_watcher_reconnects", _RECONNECTS_HELP)
_EXTENSION_ERRORS_HELP = "Exceptions raised by an extension's hook, caught by the extension manager."
EXTENSION_ERRORS = counter("pushproxy_extension_errors", _EXTENSION_ERRORS_HELP, ["extension", "hook"])
WATCHERS_WANTED = gauge(
    "pushproxy_watchers_wanted", "Watchers this node runs and wants up (every state but auth_failed and stopped)."
)
WATCHERS_UP = gauge("pushproxy_watchers_up", "Watchers connected and watching (idle or polling).")
WATCHERS_LOGINS = counter(
    "pushproxy_watchers_logins",
    "Watcher connections let through the connect gate (each a connect and a login attempt).",
)
WATCHERS_LOGINS_IN_FLIGHT = gauge(
    "pushproxy_watchers_logins_in_flight",
    "Watcher connections being opened and logged in now (bounded by the connect gate).",
)
WATCHERS_CONNECT_QUEUE = gauge(
    "pushproxy_watchers_connect_queue", "Watcher connections waiting for the connect gate (watch.connect_rate)."
)
EVENT_DISPATCH_LATENCY = histogram(
    "pushproxy_event_dispatch_latency_seconds",
    "Time from an upstream change notification to the dispatch of its pushes.",
    buckets=_DISPATCH_BUCKETS,
)

# --- push delivery, every extension's (``service`` is the extension's label value) ---
PUSHES = counter(
    "pushproxy_pushes",
    "Push requests sent, by service and outcome (HTTP status, or 'error' without a response).",
    ["service", "status"],
)
PUSH_FAILURES = counter(
    "pushproxy_push_failures", "Failed push requests, by service and reason.", ["service", "reason"]
)
PUSH_LATENCY = histogram(
    "pushproxy_push_latency_seconds",
    "Duration of one push request, from send to response.",
    ["service"],
    buckets=_PUSH_BUCKETS,
)


PUSH_QUEUE = gauge(
    "pushproxy_push_queue",
    "Pushes waiting to be sent or in flight (debounce windows, sends, retries), by service.",
    ["service"],
)


def known_service(service: str) -> None:
    """An extension's ``service`` label value (at its import): its latency and queue series exist from the start."""
    PUSH_LATENCY.labels(service=service)
    PUSH_QUEUE.labels(service=service)


def report_queue(service: str, size: Callable[[], float] | None) -> None:
    """The service's queue is ``size()`` at each scrape (a running sender's); None: 0 (it stopped)."""
    PUSH_QUEUE.labels(service=service).set_function(size or (lambda: 0))


# --- store -------------------------------------------------------------------
STORE_UP = gauge(
    "pushproxy_store_up",
    "1 while the store answers, 0 from its first failure until it answers again and what was kept in memory "
    "is written back (pushproxy.store.health).",
)
_STORE_ERRORS_HELP = "Store operations that failed for a transient reason, by reason."
STORE_ERRORS = counter(
    "pushproxy_store_errors",
    _STORE_ERRORS_HELP,
    ["reason"],
    ("full", "read_only", "busy", "unreachable", "damaged", "unavailable"),
)

# --- cluster (pushproxy.cluster) -------------------------------------------------
CLUSTER_LEASES_HELD = gauge("pushproxy_cluster_leases_held", "Accounts this node watches under a lease.")
CLUSTER_NODES_LIVE = gauge("pushproxy_cluster_nodes_live", "Nodes with a recent heartbeat, this one included.")
CLUSTER_ACCOUNTS_UNWATCHED = gauge(
    "pushproxy_cluster_accounts_unwatched",
    "Accounts with registrations that no node holds an unexpired lease for, at this node's last lease round.",
)
CLUSTER_TAKEOVERS = counter("pushproxy_cluster_takeovers", "Leases taken over from a node whose lease had expired.")
PUSH_LEDGER_CONFLICTS = counter(
    "pushproxy_push_ledger_conflicts", "Message pushes already claimed in the shared ledger."
)

# --- the event loop (pushproxy.looplag) ---------------------------------------------
LOOP_LAG = histogram(
    "pushproxy_loop_lag_seconds",
    "How late the event loop ran a timer (sampled every 0.25 s).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LOOP_LAG_MAX = gauge("pushproxy_loop_lag_max_seconds", "The largest event loop lag of the last minute.")

# Process metrics (memory, CPU, fds) read from /proc; a no-op elsewhere.
ProcessCollector(registry=REGISTRY)


def set_state_gauge(gauge: Gauge, counts: Mapping[str, int], states: Iterable[str] = ()) -> None:
    """Set a one-label gauge from a full census ``{state: count}``.

    States named in ``states`` but missing from ``counts`` are set to 0, so a
    state that emptied does not keep its last value.
    """
    for state in states:
        if state not in counts:
            gauge.labels(state).set(0)
    for state, count in counts.items():
        gauge.labels(state).set(count)


def exposition(accept_header: str = "") -> tuple[bytes, str]:
    """The registry in the exposition format the scraper asked for: (body, content type)."""
    encoder, content_type = choose_encoder(accept_header)
    return encoder(REGISTRY), content_type
