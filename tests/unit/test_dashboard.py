"""deploy/grafana/pushproxy.json: a current Grafana dashboard whose every query names exported series."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.promql import check, declared_series, grafana_expr, legend_labels

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "pushproxy.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What issue 24 asks the dashboard to show, and a metric each needs.
REQUIRED = {
    "sessions and connections": {"pushproxy_sessions_active", "pushproxy_connections_refused_total"},
    "logins and failures": {
        "pushproxy_logins_total",
        "pushproxy_auth_failures_total",
        "pushproxy_session_timeouts_total",
    },
    "watchers by state": {"pushproxy_watchers", "pushproxy_watchers_up", "pushproxy_watchers_wanted"},
    "push sends, errors, latency by protocol": {
        "pushproxy_pushes_total",
        "pushproxy_push_failures_total",
        "pushproxy_push_latency_seconds_bucket",
    },
    "APNs / WebPush queue": {"pushproxy_push_queue"},
    "APNs / WebPush state": {"pushproxy_apns_certificate_expiry_timestamp_seconds", "pushproxy_webpush_subscriptions"},
    "store and cluster health": {
        "pushproxy_store_up",
        "pushproxy_cluster_nodes_live",
        "pushproxy_cluster_leases_held",
        "pushproxy_cluster_accounts_unwatched",
    },
    "process memory and file descriptors": {
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    },
    "event loop lag": {"pushproxy_loop_lag_seconds_bucket", "pushproxy_loop_lag_max_seconds"},
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in data["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold theirs


def targets(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels(data):
        for target in panel.get("targets", []):
            yield panel, target


def test_current_schema_and_datasource_variable() -> None:
    data = dashboard()
    assert data["schemaVersion"] >= 39  # Grafana 10.3 and later (41: Grafana 12)
    assert data["uid"] == "pushproxy" and data["id"] is None  # importable anywhere
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(data):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["type"] in ("timeseries", "stat"), panel["title"]  # no deprecated "graph"
        assert panel.get("description"), f"{panel['title']}: say what it shows"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == DATASOURCE


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_query_names_exported_series_and_labels() -> None:
    series = declared_series()
    data = dashboard()
    seen = 0
    for panel, target in targets(data):
        expr = target["expr"]
        assert 'job=~"$job"' in expr and 'instance=~"$instance"' in expr, f"{panel['title']}: {expr}"
        checked = check(grafana_expr(expr), series)
        assert checked.problems == [], f"{panel['title']}: {expr}: {checked.problems}"
        for label in legend_labels(target.get("legendFormat", "")):
            assert label in (checked.labels or ()), f"{panel['title']}: legend {{{{{label}}}}} not on {expr}"
        seen += 1
    assert seen >= 20
    for variable in data["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert found, variable["definition"]
        checked = check(found.group(1).replace("$job", ".*"), series)
        assert checked.problems == [], variable["definition"]
        assert found.group(2) in (checked.labels or ()), variable["definition"]


def test_it_shows_what_an_operator_looks_at() -> None:
    series = declared_series()
    used: set[str] = set()
    for _, target in targets(dashboard()):
        used |= check(grafana_expr(target["expr"]), series).metrics
    missing = {what: names - used for what, names in REQUIRED.items() if names - used}
    assert missing == {}
