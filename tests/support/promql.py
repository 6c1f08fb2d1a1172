"""Check PromQL expressions (alert rules, dashboard panels) against the series pushproxy exports.

One checker for the rule file, the Grafana dashboard and what a real Prometheus scraped:
the expression is parsed by a real PromQL parser (promql-parser, the grammar of
Prometheus) and walked with the label set of every intermediate result, so that

- every metric an expression selects is a series the proxy exports (or ``up``);
- every label it names -- in a matcher, ``by``/``without``, ``on``/``ignoring``,
  ``group_left``/``group_right`` -- exists on the series it applies to at that point
  (after an aggregation only the kept labels exist);
- both sides of a vector/vector operation without ``on``/``ignoring`` have the same
  label names (else they never match, and the alert never fires);
- a Grafana legend's ``{{label}}`` exists on the result.

``series`` maps a series name (``pushproxy_pushes_total``, ``..._bucket``) to its label
names: :func:`declared_series` reads them from the proxy's own registry (a series that only
appears after an event -- a failure reason, a push -- is declared there from the start);
the real-Prometheus test passes what Prometheus scraped instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import promql_parser as pq

# Added by Prometheus to every scraped series (target labels), and its synthetic series.
TARGET_LABELS = frozenset({"job", "instance"})
SYNTHETIC_SERIES = {"up": TARGET_LABELS}

Labels = frozenset[str] | None  # None: a scalar

# Grafana's variables, replaced by a value of the same kind before parsing.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def declared_series() -> dict[str, frozenset[str]]:
    """Every series name the proxy's /metrics can show, with its label names (target labels added)."""
    from prometheus_client.metrics import MetricWrapperBase

    from pushproxy import metrics
    from pushproxy.extensions import extension_classes

    extension_classes()  # each extension's metrics are defined at its import, as for /metrics
    out: dict[str, frozenset[str]] = dict(SYNTHETIC_SERIES)
    # prometheus_client has no public "labels of a metric that has no series yet": the
    # collector objects carry them (_collector_to_names, _labelnames, _type, _name).
    for collector in list(metrics.REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase):
            name, kind = collector._name, collector._type
            labels = frozenset(collector._labelnames) | TARGET_LABELS
            if kind == "counter":
                out[f"{name}_total"] = out[f"{name}_created"] = labels
            elif kind in ("histogram", "summary"):
                for suffix in ("_sum", "_count", "_created"):
                    out[name + suffix] = labels
                if kind == "histogram":
                    out[f"{name}_bucket"] = labels | {"le"}
                else:
                    out[name] = labels | {"quantile"}
            else:
                out[name] = labels
        else:  # ProcessCollector and the like: what they collect now
            for family in collector.collect():
                for sample in family.samples:
                    out[sample.name] = out.get(sample.name, frozenset()) | frozenset(sample.labels) | TARGET_LABELS
    return out


@dataclass
class Checked:
    expr: str
    metrics: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    labels: Labels = None  # the result's label names


def check(expr: str, series: Mapping[str, frozenset[str]]) -> Checked:
    """Parse ``expr`` and check it against ``series`` (see the module docstring)."""
    out = Checked(expr)
    try:
        ast = pq.parse(expr)
    except ValueError as exc:
        out.problems.append(f"does not parse: {exc}")
        return out
    out.labels = _Walker(series, out).labels(ast)
    return out


def grafana_expr(expr: str) -> str:
    """A panel's query as PromQL: Grafana's interval variables replaced by durations."""
    for variable, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, value)
    return expr


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend))


_SET_OPS = {"and", "or", "unless"}
_KEEP_INPUT_AGGREGATIONS = {"topk", "bottomk", "limitk"}


class _Walker:
    def __init__(self, series: Mapping[str, frozenset[str]], out: Checked) -> None:
        self.series = series
        self.out = out

    def problem(self, text: str) -> None:
        self.out.problems.append(text)

    def need(self, wanted: Iterable[str], have: Labels, where: str) -> None:
        for label in wanted:
            if have is None or label not in have:
                self.problem(f"label {label!r} ({where}) is not on {sorted(have or ())}")

    def labels(self, node: object) -> Labels:
        if isinstance(node, pq.VectorSelector):
            return self.selector(node)
        if isinstance(node, pq.MatrixSelector):
            return self.selector(node.vector_selector)
        if isinstance(node, pq.ParenExpr | pq.UnaryExpr | pq.SubqueryExpr):
            return self.labels(node.expr)
        if isinstance(node, pq.NumberLiteral | pq.StringLiteral):
            return None
        if isinstance(node, pq.Call):
            return self.call(node)
        if isinstance(node, pq.AggregateExpr):
            return self.aggregate(node)
        if isinstance(node, pq.BinaryExpr):
            return self.binary(node)
        self.problem(f"unsupported expression {type(node).__name__}: {node}")
        return frozenset()

    def selector(self, node: pq.VectorSelector) -> frozenset[str]:
        matchers = list(node.matchers.matchers)
        named = (m.value for m in matchers if m.name == "__name__" and str(m.op) == "MatchOp.Equal")
        name = node.name or next(named, None)
        if name is None:
            self.problem(f"selector without a metric name: {node}")
            return frozenset()
        self.out.metrics.add(name)
        have = self.series.get(name)
        if have is None:
            self.problem(f"metric {name!r} is not exported")
            return frozenset()
        self.need((m.name for m in matchers if m.name != "__name__"), have, f"matcher of {name}")
        return have

    def call(self, node: pq.Call) -> Labels:
        fn = node.func.name
        if fn in ("label_replace", "label_join"):
            self.problem(f"{fn}() is not supported by this checker")
        args = [self.labels(arg) for arg in node.args]
        if fn in ("absent", "absent_over_time"):
            arg = node.args[0]
            selector = arg.vector_selector if isinstance(arg, pq.MatrixSelector) else arg
            if isinstance(selector, pq.VectorSelector):
                eq = {m.name for m in selector.matchers.matchers if str(m.op) == "MatchOp.Equal"}
                return frozenset(eq - {"__name__"})
            return frozenset()
        if fn in ("time", "scalar", "pi"):
            return None
        vectors = [a for a in args if a is not None]
        if not vectors:
            return frozenset()  # vector(1), day_of_week(): a vector without labels
        if fn == "histogram_quantile":
            self.need(["le"], vectors[0], "histogram_quantile needs le")
            return vectors[0] - {"le"}
        return vectors[0]

    def aggregate(self, node: pq.AggregateExpr) -> Labels:
        op = str(node.op)
        have = self.labels(node.expr)
        if node.param is not None:
            self.labels(node.param)
        mod = node.modifier
        grouping = list(mod.labels) if mod is not None else []
        self.need(grouping, have, f"{op} {mod}")
        if op in _KEEP_INPUT_AGGREGATIONS:
            return have
        base = frozenset(have or ())
        if mod is None:
            result: frozenset[str] = frozenset()
        elif str(mod.type) == "AggModifierType.By":
            result = frozenset(grouping)
        else:
            result = base - set(grouping)
        if op == "count_values" and isinstance(node.param, pq.StringLiteral):
            result |= {node.param.val}
        return result

    def binary(self, node: pq.BinaryExpr) -> Labels:
        op = str(node.op)
        lhs, rhs = self.labels(node.lhs), self.labels(node.rhs)
        if lhs is None or rhs is None:
            return rhs if lhs is None else lhs
        mod = node.modifier
        matching = mod.matching if mod is not None else None
        where = f"{op} {mod}" if mod is not None else op
        if matching is None:
            if lhs != rhs:
                self.problem(f"{where}: the two sides never match, labels {sorted(lhs)} vs {sorted(rhs)}")
        elif str(matching.type) == "LabelModifierType.Include":  # on (...)
            self.need(matching.labels, lhs, f"{where}, left side")
            self.need(matching.labels, rhs, f"{where}, right side")
        elif lhs - set(matching.labels) != rhs - set(matching.labels):  # ignoring (...)
            self.problem(f"{where}: the two sides never match, labels {sorted(lhs)} vs {sorted(rhs)}")
        if op in _SET_OPS:
            return lhs | rhs if op == "or" else lhs
        card = str(mod.card) if mod is not None else "VectorMatchCardinality.OneToOne"
        group = list(mod.group_labels or ()) if mod is not None else []
        if card == "VectorMatchCardinality.ManyToOne":
            self.need(group, rhs, f"{where}, group_left labels")
            return lhs | set(group)
        if card == "VectorMatchCardinality.OneToMany":
            self.need(group, lhs, f"{where}, group_right labels")
            return rhs | set(group)
        return lhs
