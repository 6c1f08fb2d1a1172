"""A real Prometheus scraping a real proxy in front of a real Dovecot, with the shipped alert rules.

Debian's ``prometheus`` on loopback (its own TSDB in a temporary directory, 1 s scrape and
evaluation) scrapes ``pushproxy serve``; an iOS-style registration gives the account a
watcher and one mail a push to the APNs stand-in.  Then:

- every metric name and label that the rules and the dashboard use is in what Prometheus
  scraped -- or, for a labelled metric that has no series before its first event (a push
  failure reason), declared by the proxy with exactly those labels; where both exist they
  agree exactly;
- every dashboard query evaluates in Prometheus, and every rule without error; on this healthy
  system none is pending or firing;
- with Dovecot stopped, PushproxyUpstreamUnreachable goes pending (its real ``for: 5m``) and,
  in a copy of the rules with ``for: 1s``, firing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pushproxy.metrics import WATCHER_STATES
from tests.support import apns_env
from tests.support.apns_env import RawClient, apns_config, register
from tests.support.apns_standin import ApnsStandin
from tests.support.certs import ApnsTestCerts
from tests.support.dovecot import Dovecot, make_message
from tests.support.prometheus import PrometheusServer, prometheus_binary
from tests.support.promql import TARGET_LABELS, check, declared_series, grafana_expr
from tests.support.waiting import assert_quiet, wait_for

certs, apns = apns_env.certs, apns_env.apns

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "pushproxy-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "pushproxy.json"
ALERT = "PushproxyUpstreamUnreachable"

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None, reason="Debian's prometheus is not installed (make deps installs it)"
)


def fast_copy(directory: Path) -> Path:
    """The same rules in a group of their own, each with ``for: 1s``: firing within seconds."""
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        group["name"] += "-fast"
        for rule in group["rules"]:
            rule["for"] = "1s"
    path = directory / "pushproxy-alerts-fast.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and every dashboard query."""
    out = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        out += [(rule["alert"], rule["expr"]) for rule in group["rules"]]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        out += [(f"panel {panel['title']}", grafana_expr(t["expr"])) for t in panel.get("targets", [])]
    return out


def states(prom: PrometheusServer) -> dict[tuple[str, str], str]:
    return {key: rule["state"] for key, rule in prom.rules().items()}


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Any:
    made: list[PrometheusServer] = []

    def factory(targets: list[str], rule_files: list[Path]) -> PrometheusServer:
        prom = PrometheusServer(tmp_path / f"prometheus-{len(made)}", targets, rule_files)
        made.append(prom)
        return prom.start()

    yield factory
    for prom in made:
        prom.stop()


def test_rules_and_dashboard_against_a_real_prometheus(
    dovecot: Dovecot,
    proxy_factory: Any,
    apns: ApnsStandin,
    certs: ApnsTestCerts,
    prometheus_factory: Any,
    tmp_path: Path,
) -> None:
    proxy = proxy_factory(dovecot, apns=apns_config(certs, apns), watch={"backoff_max": 2})
    client = RawClient(proxy.port)
    assert b"a1 OK" in client.command(b"a1", b"LOGIN alice alicepw")
    assert b"a2 OK" in register(client, b"a2")
    proxy.wait_watching(1)
    dovecot.deliver("alice", make_message("for the push metrics"))
    apns.wait_for(1, timeout=15)
    client.close()

    target = f"127.0.0.1:{proxy.admin_port}"
    prom = prometheus_factory([target], [RULES, fast_copy(tmp_path)])
    wait_for(prom.targets_up, 30, lambda: f"the proxy scraped:\n{prom.log_tail()}", interval=0.2)
    wait_for(
        lambda: bool(prom.api("query", query='pushproxy_pushes_total{service="apns",status="200"} > 0')["result"]),
        30,
        "the push in Prometheus",
        interval=0.2,
    )

    # Every name the rules and the dashboard use: scraped, or declared and not yet observable.
    scraped = prom.series_labels('{job="pushproxy"}')
    declared = declared_series()
    for name in sorted(set(scraped) & set(declared)):
        assert scraped[name] == declared[name], f"{name}: scraped {sorted(scraped[name])}, declared"
    used: set[str] = set()
    for where, expr in expressions():
        checked = check(expr, {**declared, **scraped})
        assert checked.problems == [], f"{where}: {checked.problems}"
        used |= checked.metrics
    for name in sorted(used - set(scraped)):
        assert name in declared, f"{name} is neither scraped nor declared"
        # Only a labelled metric has no series before its first event; everything else must be scraped.
        assert declared[name] - TARGET_LABELS - {"le"}, f"{name} has no labels, so it must have been scraped"
    assert {"up", "pushproxy_watchers", "pushproxy_pushes_total", "process_open_fds"} <= set(scraped)
    print("checked against the proxy's declarations only:", sorted(used - set(scraped)))

    # Every dashboard query evaluates in Prometheus (no error such as a many-to-many match), and
    # those of the panels that must show something on this proxy do.
    answered: dict[str, int] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for t in panel.get("targets", []):
            query = grafana_expr(t["expr"]).replace("$job", "pushproxy").replace("$instance", ".*")
            answered[query] = len(prom.api("query", query=query)["result"])  # AssertionError unless success
    assert answered['sum(pushproxy_sessions_active{job=~"pushproxy", instance=~".*"})'] == 1
    assert answered['sum by (state) (pushproxy_watchers{job=~"pushproxy", instance=~".*"})'] == len(WATCHER_STATES)

    # Healthy: every rule evaluates without error, and none is pending or firing.
    def quiet() -> bool:
        rules = prom.rules()
        assert all(rule["health"] == "ok" for rule in rules.values()), {
            key: rule.get("lastError") for key, rule in rules.items() if rule["health"] != "ok"
        }
        return all(rule["state"] == "inactive" for rule in rules.values())

    wait_for(lambda: all(r["health"] == "ok" for r in prom.rules().values()), 15, "every rule evaluated")
    assert_quiet(quiet, 3.0, lambda: f"no alert on a healthy proxy: {states(prom)}")

    dovecot.stop()
    wait_for(
        lambda: (
            states(prom).get(("pushproxy", ALERT)) == "pending"
            and states(prom).get(("pushproxy-fast", ALERT)) == "firing"
        ),
        60,
        lambda: (
            f"{ALERT} pending (for: 5m) and firing (for: 1s): {states(prom)}\n"
            + "\n".join(line for line in proxy.admin_get("/metrics")[1].splitlines() if "pushproxy_watchers" in line)
            + f"\n{proxy.log_tail(30)}"
        ),
        interval=0.2,
    )
    # One account, one watcher: the state gauge counts it once (a state it left reads 0 again).
    assert sum(proxy.metric("pushproxy_watchers", {"state": s}) for s in WATCHER_STATES) == 1
    firing = [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]
    assert [a["labels"] for a in firing] == [
        {"alertname": ALERT, "instance": target, "job": "pushproxy", "severity": "critical"}
    ]
    assert "upstream IMAP server is unreachable" in firing[0]["annotations"]["description"]
