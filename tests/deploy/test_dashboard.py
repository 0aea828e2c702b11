"""The shipped Grafana dashboard: standard JSON Grafana imports as is (and the sidecar loads from
a ConfigMap), and every PromQL expression of it runs against a real Prometheus that scraped a real
``otelbridge serve`` fed with the sample calls, returning series.

Template variables are resolved as Grafana would against that Prometheus: ``$agent`` is tried as
All (``.*``) and as one real agent, ``$deployment`` as All and as that agent's deployment,
``$instance`` as All, ``$log_metric`` as each LogMetric the variable's query finds;
``$__rate_interval`` and ``$__range`` get values that cover the whole test session (its data is
seconds old, not a steady stream).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.prometheus import DASHBOARD, SAMPLE_AGENT, STRING_LOG_METRIC, Stack, stack

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
