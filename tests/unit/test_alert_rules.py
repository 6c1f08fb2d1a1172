"""deploy/prometheus/pushproxy-alerts.yml: promtool's checks and unit tests, and every name it uses is exported."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.promql import check, declared_series

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "pushproxy-alerts.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "pushproxy-alerts.test.yml"

# What issue 24 asks the rules to cover, and the alert that does.
REQUIRED_ALERTS = {
    "upstream unreachable or refusing watcher logins": "PushproxyUpstreamUnreachable",
    "watcher logins failing for many accounts": "PushproxyWatcherLoginsFailing",
    "a push service failing (error ratio)": "PushproxyPushErrorRatioHigh",
    "APNs authentication failing": "PushproxyApnsAuthenticationFailing",
    "APNs certificate expiring within 14 days": "PushproxyApnsCertificateExpiringSoon",
    "accounts with registrations that no node watches": "PushproxyAccountsUnwatched",
    "a node missing": "PushproxyNodeDown",
    "the store unreachable": "PushproxyStoreDown",
    "the store refusing writes": "PushproxyStoreErrors",
    "push latency p99 over its objective": "PushproxyPushLatencyHigh",
    "connection limits being hit": "PushproxyConnectionLimitReached",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian's prometheus package: make deps installs it)")
    return path


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


def test_promtool_unit_tests_pass() -> None:
    proc = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for expectation in case.get("alert_rule_test", []):
            (firing if expectation.get("exp_alerts") else quiet).add(expectation["alertname"])
    alerts = {rule["alert"] for rule in rules()}
    assert alerts - firing == set(), "alerts that no unit test proves to fire"
    assert alerts - quiet == set(), "alerts that no unit test proves to stay quiet"
    assert firing | quiet <= alerts, "unit tests for alerts that do not exist"


def test_the_issue_s_conditions_each_have_an_alert() -> None:
    alerts = {rule["alert"] for rule in rules()}
    assert {name for name in REQUIRED_ALERTS.values() if name not in alerts} == set()


def test_every_rule_says_what_to_do() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, rule["alert"]
        assert len(annotations["description"]) > 200, f"{rule['alert']}: the description must say what to do"
        assert rule.get("for"), f"{rule['alert']}: no 'for' (one bad scrape would page)"


def test_every_metric_and_label_is_exported() -> None:
    series = declared_series()
    for rule in rules():
        checked = check(rule["expr"], series)
        assert checked.problems == [], f"{rule['alert']}: {checked.problems}"
        assert checked.metrics, rule["alert"]
        # {{ $labels.x }} in an annotation must be a label of the alert's series.
        result = set(checked.labels or ()) | set(rule["labels"])
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.([a-zA-Z_]\w*)", text):
                assert label in result, f"{rule['alert']}: $labels.{label} is not on {sorted(result)}"


def test_the_checker_catches_unknown_names() -> None:
    # The check above proves something only if it fails on a wrong name.
    series = declared_series()
    assert check("rate(pushproxy_no_such_metric_total[5m])", series).problems
    assert check('pushproxy_watchers{stat="idle"}', series).problems
    assert check("sum by (service) (pushproxy_watchers)", series).problems
    assert check("sum by (state) (pushproxy_watchers) / pushproxy_store_up", series).problems
    no_le = "histogram_quantile(0.99, sum by (service) (rate(pushproxy_push_latency_seconds_bucket[5m])))"
    assert check(no_le, series).problems
    assert check("sum by (state) (pushproxy_watchers)", series).problems == []
