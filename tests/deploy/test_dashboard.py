"""The shipped Grafana dashboard: standard JSON Grafana imports as is (and the sidecar loads from
a ConfigMap), and every PromQL expression of it runs against a real Prometheus that scraped a real
``otelbridge serve`` fed with the sample calls, returning series.

Template variables are resolved as Grafana would against that Prometheus: ``$agent`` is tried as
All (``.*``) and as one real agent, ``$deployment`` as All and as that agent's deployment,
``$instance`` as All, ``$log_metric`` as each LogMetric the variable's query finds;
``$__rate_interval`` and ``$__range`` get values that cover the whole test session (its data is
seconds old, not a steady stream).

With several replicas (pods sharing PostgreSQL) every panel aggregates across them: the panels
that matter are also run by promtool against the series of two pods and a failover between them
(the leader dies, the next one's counters start from 0), and the "Replicas" row shows the
replicas and which one leads.

The "SLOs" row reads the recording rules of deploy/prometheus/otelbridge.slo.rules.yaml (loaded in
the session's Prometheus): the error budget left and the burn rate by deployment of both default
SLOs, also checked by promtool against known data with those rules.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.prometheus import (
    DASHBOARD,
    SAMPLE_AGENT,
    SLO_RULES,
    STRING_LOG_METRIC,
    Stack,
    promtool,
    scalar,
    stack,
)

__all__ = ["stack"]  # the shared session fixture, imported for pytest

pytestmark = pytest.mark.prometheus

BUILTINS = {"__rate_interval": "5m", "__range": "1h", "__interval": "1m"}
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
#: a deployment of SAMPLE_AGENT in the samples (the other sample agent's is dep_L1mHoOsFaQfD)
SAMPLE_DEPLOYMENT = "dep_tjfIZ4SOcMz9"
#: the metrics whose series carry ``cartesia_deployment_id`` (contract 2.1.0); the turn and tool
#: call counters and the LogMetrics do not
DEPLOYMENT_METRICS = {
    "cartesia_calls_total",
    "cartesia_call_duration_seconds",
    "cartesia_tts_ttfb_seconds",
    "cartesia_stt_ttfb_seconds",
    "cartesia_turn_duration_seconds",
    "cartesia_turn_response_latency_seconds",
    "cartesia_turns_interrupted_total",
}
#: a metric and its selector in an expression
SELECTOR = re.compile(r"\b(cartesia_\w+)\{([^}]*)\}")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # collapsed rows hold their panels


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [
        (panel["title"], target)
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def test_dashboard_is_standard_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] == "otelbridge"
    assert board["id"] is None  # importable anywhere, the sidecar too
    assert 36 <= board["schemaVersion"] <= 41
    assert "__inputs" not in board  # the sidecar does not resolve import-time inputs
    panels = list(all_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
    declared = variables()
    assert declared["datasource"]["type"] == "datasource"
    assert declared["datasource"]["query"] == "prometheus"
    for name in ("agent", "deployment"):
        assert declared[name]["includeAll"] and declared[name]["allValue"] == ".*", name
        assert declared[name]["multi"] is True, name
    used = {a or b for _, t in targets() for a, b in VARIABLE.findall(t["expr"])}
    assert used - set(BUILTINS) <= set(declared), "expressions use undeclared variables"
    assert {"agent", "deployment"} <= used


def test_panels_do_not_overlap() -> None:
    """Rows span the width and every panel sits below its row's header and above the next row;
    no two panels share a grid cell (Grafana would push one of them down)."""
    panels = list(all_panels(dashboard()["panels"]))
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            assert (pos["x"], pos["w"], pos["h"]) == (0, 24, 1), panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]
    rows = [p for p in dashboard()["panels"] if p["type"] == "row"]
    assert all(not row.get("collapsed") for row in rows)
    starts = [row["gridPos"]["y"] for row in rows]
    assert starts == sorted(starts) and starts[0] == 0
    for panel in dashboard()["panels"]:  # in the JSON, each panel follows its row
        if panel["type"] == "row":
            current = panel["gridPos"]["y"]
            following = [r["gridPos"]["y"] for r in rows if r["gridPos"]["y"] > current]
            end = following[0] if following else None
            continue
        assert panel["gridPos"]["y"] > current, panel["title"]
        assert end is None or panel["gridPos"]["y"] + panel["gridPos"]["h"] <= end, panel["title"]


def test_deployment_selector_on_exactly_the_metrics_with_the_label() -> None:
    """``$deployment`` filters every call-quality metric that carries ``cartesia_deployment_id``
    and none that does not (a matcher on a missing label with a real id would empty the panel)."""
    checked: set[str] = set()
    for title, target in targets():
        for metric, selector in SELECTOR.findall(target["expr"]):
            base = re.sub(r"_(bucket|count|sum)$", "", metric)
            has = 'cartesia_deployment_id=~"$deployment"' in selector
            assert has == (base in DEPLOYMENT_METRICS), f"{title} [{target['refId']}]: {metric}{{{selector}}}"
            checked.add(base)
        if "log_metric" in target["expr"]:
            assert "$deployment" not in target["expr"], title
    assert checked >= DEPLOYMENT_METRICS | {"cartesia_turns_total", "cartesia_tool_calls_total"}


def test_latency_panels_show_exemplars_per_agent() -> None:
    latency = [
        (title, t)
        for title, t in targets()
        if re.search(r"_(ttfb|response_latency)_seconds_bucket", t["expr"])
    ]
    per_agent = [(title, t) for title, t in latency if "by (cartesia_agent_id, le)" in t["expr"]]
    assert {title for title, _ in per_agent} == {
        "TTS TTFB p50 / p95 per agent",
        "STT TTFB p50 / p95 per agent",
        "Response latency p50 / p95 per agent",
    }
    quantiles = re.findall(r"histogram_quantile\((0\.\d+)", " ".join(t["expr"] for _, t in per_agent))
    assert sorted(quantiles) == ["0.5"] * 3 + ["0.95"] * 3
    assert all(t.get("exemplar") is True for _, t in per_agent)
    panels = {p["title"]: p for p in all_panels(dashboard()["panels"])}
    for title in ("TTS TTFB p95", "STT TTFB p95", "Response latency p95"):
        assert panels[title]["type"] == "stat", title
    (overview,) = [p for p in dashboard()["panels"] if p["type"] == "row" and p["title"] == "Overview"]
    stat = panels["Response latency p95"]
    assert stat["gridPos"]["y"] == overview["gridPos"]["y"] + 1
    assert "cartesia_turn_response_latency_seconds_bucket" in stat["targets"][0]["expr"]


def test_p95_by_deployment_panel_groups_by_deployment() -> None:
    (panel,) = [p for p in all_panels(dashboard()["panels"]) if p["title"] == "p95 by deployment"]
    assert panel["type"] == "timeseries"
    metrics = []
    for target in panel["targets"]:
        expr = target["expr"]
        assert expr.startswith("histogram_quantile(0.95, sum by (cartesia_deployment_id, le) (rate("), expr
        assert "{{cartesia_deployment_id}}" in target["legendFormat"]
        metrics += re.findall(r"\b(cartesia_\w+)_bucket\{", expr)
    assert sorted(metrics) == ["cartesia_tts_ttfb_seconds", "cartesia_turn_response_latency_seconds"]
    assert len({t["legendFormat"] for t in panel["targets"]}) == len(panel["targets"])


def label_values(stack: Stack, definition: str) -> list[str]:
    """What Grafana's Prometheus variable query ``definition`` gives (the forms the dashboard
    uses: ``label_values(label)``, ``label_values(metric, label)`` where the metric may have a
    selector, its variables already substituted, ``metrics(regex)``)."""
    prometheus = stack.prometheus
    if m := re.fullmatch(r"label_values\((\w+)\)", definition):
        values: list[str] = prometheus.api(f"label/{m.group(1)}/values")
        return values
    if m := re.fullmatch(r"label_values\((\w+(?:\{[^}]*\})?), (\w+)\)", definition):
        series = prometheus.api("series", **{"match[]": m.group(1)})
        return sorted({s[m.group(2)] for s in series if m.group(2) in s})
    if m := re.fullmatch(r"metrics\((.+)\)", definition):
        names: list[str] = prometheus.api("label/__name__/values")
        return [n for n in names if re.fullmatch(m.group(1), n)]
    raise AssertionError(f"variable query form not handled here: {definition}")


def resolve(stack: Stack, name: str, **chosen: str) -> list[str]:
    """The values of variable ``name``, the variables its query uses (a chained variable: the
    deployments of ``$agent``) set to ``chosen`` or else to All."""
    variable = variables()[name]
    definition = substitute(variable["definition"], {**BUILTINS, "agent": ".*", "instance": ".*", **chosen})
    values = label_values(stack, definition)
    regex = variable.get("regex") or ""
    if regex:
        pattern = re.compile(regex.strip("/"))
        values = [m.group(1) if m.groups() else m.group(0) for v in values if (m := pattern.search(v))]
    return values


def test_template_variables_resolve(stack: Stack) -> None:
    agents = resolve(stack, "agent")
    assert {"agent_CPVNPkNa1Hedcm4pMbXDuC", SAMPLE_AGENT} <= set(agents)
    assert resolve(stack, "instance") == [f"127.0.0.1:{stack.serve.admin_port}"]
    log_metrics = resolve(stack, "log_metric")
    # the sample calls' numeric LogMetrics, whatever unit suffix the daemon gives them
    assert {m.split("_ms")[0].rsplit("_seconds", 1)[0] for m in log_metrics} >= {
        "agent_turn",
        "llm_first_chunk",
        "llm_first_text",
    }, log_metrics
    assert not any(m.startswith(STRING_LOG_METRIC[0]) for m in log_metrics)  # counters have no _count
    # the deployments of all agents, `none` for the calls without one (the synthetic call) ...
    assert {SAMPLE_DEPLOYMENT, "dep_L1mHoOsFaQfD", "none"} <= set(resolve(stack, "deployment"))
    # ... and, chained to $agent, those of the chosen agent only
    deployments = resolve(stack, "deployment", agent=SAMPLE_AGENT)
    assert SAMPLE_DEPLOYMENT in deployments
    assert "dep_L1mHoOsFaQfD" not in deployments


def substitutions(stack: Stack, expr: str) -> list[dict[str, str]]:
    """The variable values ``expr`` is run with: All, then one real agent (its values are regex
    alternatives in Grafana, a plain id here), each with All deployments and one real one if it
    uses ``$deployment``, and every LogMetric if it uses ``$log_metric``."""
    assert SAMPLE_AGENT in resolve(stack, "agent")
    assert SAMPLE_DEPLOYMENT in resolve(stack, "deployment", agent=SAMPLE_AGENT)
    log_metrics = resolve(stack, "log_metric") if "log_metric" in expr else [""]
    deployments = [".*", SAMPLE_DEPLOYMENT] if "deployment" in expr else [".*"]
    return [
        {**BUILTINS, "agent": agent, "deployment": deployment, "instance": ".*", "log_metric": log_metric}
        for agent in (".*", SAMPLE_AGENT)
        for deployment in deployments
        for log_metric in log_metrics
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"no value for ${name}"
        return values[name]

    return VARIABLE.sub(value, expr)


def test_every_expression_returns_series(stack: Stack) -> None:
    failures: list[str] = []
    checked = 0
    for title, target in targets():
        for values in substitutions(stack, target["expr"]):
            expr = substitute(target["expr"], values)
            try:
                result = stack.prometheus.query(expr)
            except AssertionError as exc:  # Prometheus refused the query: the message says why
                failures.append(f"{title} [{target['refId']}]: {exc}")
                continue
            checked += 1
            finite = [r for r in result if math.isfinite(float(r["value"][1]))]
            if not finite:
                failures.append(
                    f"{title} [{target['refId']}] agent={values['agent']} deployment={values['deployment']}: "
                    f"{'no series' if not result else 'only NaN/Inf'}: {expr}"
                )
    assert checked > 0
    assert failures == [], "\n".join(dict.fromkeys(failures))


def test_string_log_metric_panel_finds_the_value(stack: Stack) -> None:
    (target,) = [t for title, t in targets() if title.startswith("String LogMetric")]
    expr = substitute(target["expr"], {**BUILTINS, "agent": SAMPLE_AGENT})
    result = stack.prometheus.query(expr)
    name, value = STRING_LOG_METRIC
    assert [(r["metric"].get("__name__"), r["metric"].get("cartesia_log_metric_value")) for r in result] == [
        (f"cartesia_log_metric_{name}_total", value)
    ]


def test_p95_by_deployment_puts_deployments_side_by_side(stack: Stack) -> None:
    """With All deployments the panel has a series per deployment: both sample deployments."""
    (panel,) = [p for p in all_panels(dashboard()["panels"]) if p["title"] == "p95 by deployment"]
    for target in panel["targets"]:
        expr = substitute(target["expr"], {**BUILTINS, "agent": ".*", "deployment": ".*"})
        result = stack.prometheus.query(expr)
        finite = {
            r["metric"].get("cartesia_deployment_id") for r in result if math.isfinite(float(r["value"][1]))
        }
        assert {SAMPLE_DEPLOYMENT, "dep_L1mHoOsFaQfD"} <= finite, (target["refId"], result)
        assert all(set(r["metric"]) == {"cartesia_deployment_id"} for r in result), result


# --- replicas -----------------------------------------------------------------------------------
#: what tells the replicas of one otelbridge apart (and its version, which differs across a
#: rolling upgrade): aggregated away, as in the alert rules
REPLICA = "instance, pod, otel_scope_version"
#: gauges of the leader's state: a follower reports 0 or its copy of the shared database's value,
#: so they are the largest value across a deployment's replicas, never their sum
LEADER_GAUGES = (
    "otelbridge_spool_depth",
    "otelbridge_spool_size_bytes",
    "otelbridge_inbox_depth",
    "otelbridge_calls_open",
)
#: the row that shows the replicas one by one, on purpose
REPLICAS_ROW = "Replicas"


def row_of() -> dict[str, str]:
    """Panel title -> the title of the row it sits in (rows are not nested in this dashboard)."""
    rows: dict[str, str] = {}
    current = ""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
        rows[panel["title"]] = current
    return rows


def test_panels_do_not_tell_replicas_apart() -> None:
    """Outside the "Replicas" row no query groups by a replica's labels (a failover would split a
    line in two, or a per-replica total would restart at 0), and the leader-only gauges are the
    largest value across the replicas of a deployment (``max without``), or the largest overall."""
    rows = row_of()
    for title, target in targets():
        expr = target["expr"]
        if rows[title] == REPLICAS_ROW:
            continue
        for clause in re.findall(r"\b(?:by|on) \(([^)]*)\)", expr):
            assert not {label.strip() for label in clause.split(",")} & {"instance", "pod"}, (
                f"{title}: {expr}"
            )
        assert "{{instance}}" not in target.get("legendFormat", ""), title
        for gauge in LEADER_GAUGES:
            for use in re.finditer(rf"\b{gauge}\{{", expr):
                assert expr[: use.start()].endswith(f"max without ({REPLICA}) ("), f"{title}: {expr}"


def replica_panels() -> dict[str, dict[str, Any]]:
    rows = row_of()
    return {
        p["title"]: p
        for p in dashboard()["panels"]
        if p["type"] != "row" and rows[p["title"]] == REPLICAS_ROW
    }


def test_replicas_row_shows_the_leader_and_the_replicas(stack: Stack) -> None:
    """The "Replicas" row: how many replicas report, how many lead (1; the threshold colours 0 and
    2 red, as the leader alerts page), which one leads and since when. Against the session's one
    ``serve``: one replica, leading."""
    panels = replica_panels()
    assert set(panels) == {"Replica count", "Leaders", "Leader", "Leader by replica"}
    exprs = {title: panel["targets"][0]["expr"] for title, panel in panels.items()}
    assert exprs["Replica count"] == 'count(otelbridge_leader{instance=~"$instance"})'
    assert exprs["Leaders"] == 'sum(otelbridge_leader{instance=~"$instance"})'
    steps = panels["Leaders"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [(None, "red"), (1, "green"), (2, "red")]
    assert panels["Leader"]["options"]["textMode"] == "name"
    assert "{{instance}}" in panels["Leader"]["targets"][0]["legendFormat"]
    assert panels["Leader by replica"]["type"] == "timeseries"
    values = {**BUILTINS, "instance": ".*"}
    query = stack.prometheus.query
    assert scalar(query(substitute(exprs["Replica count"], values))) == 1
    assert scalar(query(substitute(exprs["Leaders"], values))) == 1
    (leader,) = query(substitute(exprs["Leader"], values))
    assert leader["metric"]["instance"] == f"127.0.0.1:{stack.serve.admin_port}"


# Two replicas: pod A leads and dies after minute 20 (its series stale at 21); pod B, a follower
# until then, leads from 22 with its leader-only counters from 0 and its gauges from 23. Both
# receive webhooks all along; both report the shared inbox and spool depth.
POD_A = 'job="otelbridge",namespace="voice",instance="10.1.0.11:9464",pod="otelbridge-0"'
POD_B = 'job="otelbridge",namespace="voice",instance="10.1.0.12:9464",pod="otelbridge-1"'
SELF = 'otel_scope_name="otelbridge.self",otel_scope_version="3.0.0"'
CALLS = (
    f'otel_scope_name="otelbridge",cartesia_agent_id="{SAMPLE_AGENT}",'
    f'cartesia_deployment_id="{SAMPLE_DEPLOYMENT}"'
)
FAILOVER_SERIES = [
    (f"otelbridge_leader{{{POD_A},{SELF}}}", "1x20 stale"),
    (f"otelbridge_leader{{{POD_B},{SELF}}}", "0x21 1x38"),
    (f"otelbridge_calls_open{{{POD_A},{SELF}}}", "7x20 stale"),
    (f"otelbridge_calls_open{{{POD_B},{SELF}}}", "0x22 7x37"),
    (f"otelbridge_inbox_depth{{{POD_A},{SELF}}}", "4x20 stale"),
    (f"otelbridge_inbox_depth{{{POD_B},{SELF}}}", "4x60"),
    (f'otelbridge_spool_depth{{{POD_A},{SELF},signal="traces"}}', "5x20 stale"),
    (f'otelbridge_spool_depth{{{POD_B},{SELF},signal="traces"}}', "5x60"),
    (f"otelbridge_spool_size_bytes{{{POD_A},{SELF}}}", "1000x20 stale"),
    (f"otelbridge_spool_size_bytes{{{POD_B},{SELF}}}", "0x22 1000x37"),
    (f'otelbridge_webhooks_total{{{POD_A},{SELF},type="call_turn",outcome="accepted"}}', "0+10x20 stale"),
    (f'otelbridge_webhooks_total{{{POD_B},{SELF},type="call_turn",outcome="accepted"}}', "0+10x60"),
    (f'cartesia_calls_total{{{POD_A},{CALLS},cartesia_call_status="completed"}}', "0+4x20 stale"),
    (f'cartesia_calls_total{{{POD_B},{CALLS},cartesia_call_status="completed"}}', "_x22 0+4x38"),
    (
        f'cartesia_turn_duration_seconds_count{{{POD_A},{CALLS},cartesia_turn_role="assistant"}}',
        "0+10x20 stale",
    ),
    (
        f'cartesia_turn_duration_seconds_count{{{POD_B},{CALLS},cartesia_turn_role="assistant"}}',
        "_x22 0+10x38",
    ),
    (f"cartesia_turns_interrupted_total{{{POD_A},{CALLS}}}", "0+2x20 stale"),
    (f"cartesia_turns_interrupted_total{{{POD_B},{CALLS}}}", "_x22 0+2x38"),
]
#: (panel, refId, evaluation time, expected): exact samples by labels, or a (low, high) range for a
#: sum of rates or increases (Prometheus extrapolates them a little)
FAILOVER_CHECKS: list[tuple[str, str, str, dict[str, float] | tuple[float, float]]] = [
    # the leader's gauge, not the follower's 0 (before) nor a gap (after)
    ("Open calls", "A", "10m", {"{}": 7}),
    ("Open calls", "A", "40m", {"{}": 7}),
    ("Inbox depth and open calls", "B", "10m", {"{}": 7}),
    # two copies of the shared value are one value
    ("Inbox depth and open calls", "A", "10m", {"{}": 4}),
    ("Spool depth by signal", "A", "10m", {'{signal="traces"}': 5}),
    ("Spool bytes and oldest request age", "A", "10m", {"{}": 1000}),
    ("Spool bytes and oldest request age", "A", "40m", {"{}": 1000}),
    # 80 calls on pod A, 152 on pod B: a counter that stops and one that starts at 0 add up
    ("Calls ended", "A", "60m", (225, 240)),
    # each replica's own receipts, summed: 20 a minute while both run, 10 after
    ("Webhooks per minute by outcome", "A", "10m", (19.5, 20.5)),
    ("Webhooks per minute by outcome", "A", "40m", (9.5, 10.5)),
    # 2 of 10 answers cut off on either pod: 20% before and after the switch, one series
    ("Barge-in rate by deployment", "A", "10m", (0.199, 0.201)),
    ("Barge-in rate by deployment", "A", "40m", (0.199, 0.201)),
    ("Replica count", "A", "10m", {"{}": 2}),
    ("Replica count", "A", "40m", {"{}": 1}),
    ("Leaders", "A", "10m", {"{}": 1}),
    ("Leaders", "A", "40m", {"{}": 1}),
    ("Leader", "A", "10m", {'{instance="10.1.0.11:9464", pod="otelbridge-0"}': 1}),
    ("Leader", "A", "40m", {'{instance="10.1.0.12:9464", pod="otelbridge-1"}': 1}),
    (
        "Leader by replica",
        "A",
        "10m",
        {
            '{instance="10.1.0.11:9464", pod="otelbridge-0"}': 1,
            '{instance="10.1.0.12:9464", pod="otelbridge-1"}': 0,
        },
    ),
    ("Leader by replica", "A", "40m", {'{instance="10.1.0.12:9464", pod="otelbridge-1"}': 1}),
]


def test_panels_aggregate_two_replicas_across_a_failover(tmp_path: Path) -> None:
    """The panels of the leader's gauges, a call counter, the replicas' own receipts and the
    "Replicas" row, run by ``promtool test rules`` against two pods and a failover."""
    values = {**BUILTINS, "agent": ".*", "deployment": ".*", "instance": ".*", "log_metric": ""}
    exprs = []
    for title, ref, at, expected in FAILOVER_CHECKS:
        (target,) = [t for panel, t in targets() if panel == title and t["refId"] == ref]
        expr = substitute(target["expr"], values)
        if isinstance(expected, tuple):
            low, high = expected
            check = {
                "expr": f"count(({expr}) >= {low} <= {high})",
                "exp_samples": [{"labels": "{}", "value": 1}],
            }
        else:
            check = {"expr": expr, "exp_samples": [{"labels": lb, "value": v} for lb, v in expected.items()]}
        exprs.append({**check, "eval_time": at})
    assert {title for title, *_ in FAILOVER_CHECKS} >= set(replica_panels())
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": v} for series, v in FAILOVER_SERIES],
                "promql_expr_test": exprs,
            }
        ],
    }
    path = tmp_path / "dashboard_failover.yaml"
    path.write_text(json.dumps(test, indent=2), encoding="utf-8")  # JSON is YAML
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- SLOs ---------------------------------------------------------------------------------------
SLO_ROW = "SLOs"
#: the default SLOs (deploy/prometheus/otelbridge.slo.rules.yaml) and their panels' title
DEFAULT_SLOS = {"responseLatency": "Response latency", "ttsTtfb": "TTS TTFB"}
RECORDED = re.compile(r"\b(cartesia_slo:\w+:\w+)\{([^}]*)\}")


def slo_panels() -> dict[str, dict[str, Any]]:
    rows = row_of()
    return {
        p["title"]: p for p in dashboard()["panels"] if p["type"] != "row" and rows[p["title"]] == SLO_ROW
    }


def slo_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(SLO_RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def slo_of(expr: str) -> str:
    slos = {m.group(1) for m in re.finditer(r'slo="(\w+)"', expr)}
    assert len(slos) == 1, expr
    return slos.pop()


def test_slo_row_shows_budget_and_burn_rate_of_both_slos() -> None:
    """For each default SLO: the error budget left over its window (a bar per agent and deployment)
    and the burn rate over the page's and the ticket's long windows by deployment, with the alerts'
    burn rates as threshold lines; every series read is one the SLO rules record, filtered by
    ``$agent`` and ``$deployment`` (the objective is per SLO, joined on ``slo``)."""
    panels = slo_panels()
    assert set(panels) == {
        f"{title} SLO: {what}"
        for title in DEFAULT_SLOS.values()
        for what in ("error budget left", "burn rate by deployment")
    }
    recorded = {rule["record"] for rule in slo_rules() if "record" in rule}
    factors = sorted(
        {
            float(f)
            for rule in slo_rules()
            if "alert" in rule
            for f in re.findall(r"> ([0-9.]+)", rule["expr"])
        }
    )
    assert factors == [6.0, 14.4]
    for slo, title in DEFAULT_SLOS.items():
        budget = panels[f"{title} SLO: error budget left"]
        (target,) = budget["targets"]
        assert target["expr"] == (
            f'cartesia_slo:error_budget:remaining_ratio{{slo="{slo}",'
            'cartesia_agent_id=~"$agent",cartesia_deployment_id=~"$deployment"}'
        )
        assert target["instant"] is True and budget["fieldConfig"]["defaults"]["unit"] == "percentunit"
        burn = panels[f"{title} SLO: burn rate by deployment"]
        windows = []
        for target in burn["targets"]:
            expr = target["expr"]
            assert slo_of(expr) == slo
            match = re.fullmatch(
                r"\(1 - cartesia_slo:sli:ratio_rate(\w+)\{([^}]*)\}\) / on \(slo\) group_left \(\) "
                r"\(1 - cartesia_slo:objective:ratio\{slo=\"(\w+)\"\}\)",
                expr,
            )
            assert match is not None, expr
            assert (
                match.group(2)
                == f'slo="{slo}",cartesia_agent_id=~"$agent",cartesia_deployment_id=~"$deployment"'
            )
            windows.append(match.group(1))
            assert "{{cartesia_deployment_id}}" in target["legendFormat"]
        assert windows == ["1h", "6h"]
        steps = burn["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, *factors]
        for panel in (budget, burn):
            for target in panel["targets"]:
                assert {name for name, _ in RECORDED.findall(target["expr"])} <= recorded


def test_slo_panels_read_the_recording_rules(stack: Stack) -> None:
    """Against the session's Prometheus (the SLO rules loaded, the samples scraped): both SLOs have
    a budget and a burn rate for the sample deployment, per agent and deployment only (no replica
    label), a budget of at most 100% and a burn rate of at least 0 (NaN only where the window
    holds no turn's increase: a deployment seen in a single scrape)."""
    for title, panel in slo_panels().items():
        for target in panel["targets"]:
            expr = substitute(target["expr"], {**BUILTINS, "agent": SAMPLE_AGENT, "deployment": ".*"})
            result = stack.prometheus.query(expr)
            deployments = {r["metric"]["cartesia_deployment_id"] for r in result}
            assert SAMPLE_DEPLOYMENT in deployments, (title, result)
            for series in result:
                labels = set(series["metric"]) - {"__name__", "slo_window"}
                assert labels == {"cartesia_agent_id", "cartesia_deployment_id", "slo"}, series
                value = float(series["value"][1])
                if series["metric"]["cartesia_deployment_id"] == SAMPLE_DEPLOYMENT:
                    assert math.isfinite(value), series
                elif math.isnan(value):  # no turn in the window: a deployment of a single call
                    continue
                assert value <= 1 if "budget" in title else value >= 0, (title, series)


def test_slo_panels_on_known_data(tmp_path: Path) -> None:
    """The SLO panels under promtool with the SLO rules loaded, two hours of two deployments of one
    agent, pod A until minute 60 and pod B from 62 (counters from 0): 1% of the turns late (burn
    rate 0.2, 80% of the budget left) and 10% late (burn rate 2, the budget overspent: -100%), the
    same for both SLOs, and the same before and after the switch."""
    deployments = {SAMPLE_DEPLOYMENT: (9.9, 0.8, 0.2), "dep_late00001": (9.0, -1.0, 2.0)}
    series = []
    for metric in ("cartesia_turn_response_latency_seconds", "cartesia_tts_ttfb_seconds"):
        for deployment, (good, *_) in deployments.items():
            who = (
                f'otel_scope_name="otelbridge",cartesia_agent_id="{SAMPLE_AGENT}",'
                f'cartesia_deployment_id="{deployment}"'
            )
            series += [
                (f'{metric}_bucket{{{POD_A},{who},le="1.5"}}', f"0+{good}x60 stale"),
                (f'{metric}_bucket{{{POD_B},{who},le="1.5"}}', f"_x62 0+{good}x58"),
                (f"{metric}_count{{{POD_A},{who}}}", "0+10x60 stale"),
                (f"{metric}_count{{{POD_B},{who}}}", "_x62 0+10x58"),
            ]
    checks = []
    for title, panel in slo_panels().items():
        for target in panel["targets"]:
            for deployment, (_, budget, burn) in deployments.items():
                expected = budget if "budget" in title else burn
                values = {**BUILTINS, "agent": SAMPLE_AGENT, "deployment": deployment}
                expr = substitute(target["expr"], values)
                for at in ("55m", "120m"):
                    checks.append(
                        {
                            "expr": f"count(({expr}) >= {expected - 0.01:g} <= {expected + 0.01:g})",
                            "eval_time": at,
                            "exp_samples": [{"labels": "{}", "value": 1}],
                        }
                    )
    assert len(checks) == 3 * 2 * 2 * 2  # budget, 1h and 6h burn rate; 2 SLOs; 2 deployments; 2 times
    test = {
        "rule_files": [str(SLO_RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": checks,
            }
        ],
    }
    path = tmp_path / "dashboard_slo.yaml"
    path.write_text(json.dumps(test, indent=2), encoding="utf-8")  # JSON is YAML
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
