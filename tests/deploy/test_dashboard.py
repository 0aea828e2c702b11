"""The shipped Grafana dashboard: standard JSON Grafana imports as is (and the sidecar loads from
a ConfigMap), and every PromQL expression of it runs against a real Prometheus that scraped a real
``otelbridge serve`` fed with the sample calls, returning series.

Template variables are resolved as Grafana would against that Prometheus: ``$agent`` is tried as
All (``.*``) and as one real agent, ``$instance`` as All, ``$log_metric`` as each LogMetric the
variable's query finds; ``$__rate_interval`` and ``$__range`` get values that cover the whole test
session (its data is seconds old, not a steady stream).
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
    assert declared["agent"]["includeAll"] and declared["agent"]["allValue"] == ".*"
    used = {a or b for _, t in targets() for a, b in VARIABLE.findall(t["expr"])}
    assert used - set(BUILTINS) <= set(declared), "expressions use undeclared variables"
    assert "agent" in used


def test_ttfb_panels_show_exemplars_per_agent() -> None:
    ttfb = [(title, t) for title, t in targets() if "_ttfb_seconds_bucket" in t["expr"]]
    per_agent = [(title, t) for title, t in ttfb if "by (cartesia_agent_id, le)" in t["expr"]]
    assert {title for title, _ in per_agent} == {
        "TTS TTFB p50 / p95 per agent",
        "STT TTFB p50 / p95 per agent",
    }
    assert sorted(re.findall(r"histogram_quantile\((0\.\d+)", " ".join(t["expr"] for _, t in per_agent))) == [
        "0.5",
        "0.5",
        "0.95",
        "0.95",
    ]
    assert all(t.get("exemplar") is True for _, t in per_agent)


def label_values(stack: Stack, definition: str) -> list[str]:
    """What Grafana's Prometheus variable query ``definition`` gives (the forms the dashboard
    uses: ``label_values(label)``, ``label_values(metric, label)``, ``metrics(regex)``)."""
    prometheus = stack.prometheus
    if m := re.fullmatch(r"label_values\((\w+)\)", definition):
        values: list[str] = prometheus.api(f"label/{m.group(1)}/values")
        return values
    if m := re.fullmatch(r"label_values\((\w+), (\w+)\)", definition):
        series = prometheus.api("series", **{"match[]": m.group(1)})
        return sorted({s[m.group(2)] for s in series if m.group(2) in s})
    if m := re.fullmatch(r"metrics\((.+)\)", definition):
        names: list[str] = prometheus.api("label/__name__/values")
        return [n for n in names if re.fullmatch(m.group(1), n)]
    raise AssertionError(f"variable query form not handled here: {definition}")


def resolve(stack: Stack, name: str) -> list[str]:
    variable = variables()[name]
    values = label_values(stack, variable["definition"])
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


def substitutions(stack: Stack, expr: str) -> list[dict[str, str]]:
    """The variable values ``expr`` is run with: All, then one real agent (its values are regex
    alternatives in Grafana, a plain id here), and every LogMetric if it uses ``$log_metric``."""
    assert SAMPLE_AGENT in resolve(stack, "agent")
    log_metrics = resolve(stack, "log_metric") if "log_metric" in expr else [""]
    return [
        {**BUILTINS, "agent": agent, "instance": ".*", "log_metric": log_metric}
        for agent in (".*", SAMPLE_AGENT)
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
                    f"{title} [{target['refId']}] agent={values['agent']}: "
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
