"""deploy/prometheus/otelbridge.slo.rules.yaml: the SLO rule groups the Helm chart's PrometheusRule
renders with its default values (templates/_slo.tpl), written out as a plain rule file for a
Prometheus without the operator. One source: the chart; tests/deploy/test_chart.py fails when the
file is not what this module writes. After changing the template or the defaults:

    python3 -m tests.deploy.slo_rules
"""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.chart import REPO, render

SLO_RULES_FILE = REPO / "deploy" / "prometheus" / "otelbridge.slo.rules.yaml"
#: the groups the SLO template renders are named after the SLO
SLO_GROUP_PREFIX = "otelbridge-slo-"
HEADER = """\
# Prometheus recording rules and burn-rate alerts of otelbridge's default voice SLOs, per Cartesia
# agent and deployment (cartesia_agent_id, cartesia_deployment_id):
#   responseLatency: 95% of the assistant turns answer the caller within 1.5 s, over 28 days
#     (cartesia_turn_response_latency_seconds, bucket le="1.5");
#   ttsTtfb: 95% of the assistant turns reach their first audio byte within 1.5 s, over 28 days
#     (cartesia_tts_ttfb_seconds, bucket le="1.5").
#
# GENERATED from the Helm chart (deploy/helm/otelbridge, templates/_slo.tpl, values
# monitoring.prometheusRule.slos) with its defaults: do not edit; change the chart and run
# `python3 -m tests.deploy.slo_rules` (a test fails while this file differs). With the chart, set
# other objectives, thresholds (a bucket boundary) or windows in its values instead.
#
# Load it beside otelbridge.rules.yaml (`rule_files:`). Each SLO is one group, evaluated in order:
# * cartesia_slo:good:rate5m, cartesia_slo:total:rate5m: turns at or under the threshold, and all
#   turns, per second over 5 m;
# * cartesia_slo:sli:ratio_rate5m|30m|1h|6h: good / total over each alert window;
# * cartesia_slo:sli:ratio_window: good / total over the SLO's window (label slo_window), from the
#   5 m rates summed over it (cheap: one series per agent and deployment, weighted by traffic);
#   it needs that much retention (Prometheus keeps 15 days unless --storage.tsdb.retention.time
#   says more) and reads the good share of the time recorded so far until then;
# * cartesia_slo:objective:ratio (for the dashboard) and cartesia_slo:error_budget:remaining_ratio
#   (1 = untouched, 0 = spent, below 0 = overspent);
# * CartesiaSloBurnFast (severity critical, pages): the error budget burns at more than 14.4x the
#   rate the objective allows over 1 h and over 5 m; CartesiaSloBurnSlow (warning, a ticket): more
#   than 6x over 6 h and over 30 m (the SRE workbook's multi-window multi-burn-rate alerts; 14.4x
#   spends 2.1% of a 28-day budget an hour, 6x 5.4% in 6 h).
# Replicas: every expression sums by agent and deployment after the per-series rate, so the series
# of several otelbridge pods (instance, pod) and a failover between them count once.
"""


class _Dumper(yaml.SafeDumper):
    """Block style, keys in the order of a hand-written rule file, prose folded, PromQL as it is."""

    def write_single_quoted(self, text: str, split: bool = True) -> None:
        super().write_single_quoted(text, split=False)  # a summary on one line, as a summary is read

    def write_double_quoted(self, text: str, split: bool = True) -> None:
        super().write_double_quoted(text, split=False)


class _Folded(str):
    """An annotation's prose: written as a folded block (``>-``), as in otelbridge.rules.yaml."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _folded(dumper: yaml.SafeDumper, value: _Folded) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style=">")


_Dumper.add_representer(str, _text)
_Dumper.add_representer(_Folded, _folded)
#: a rule's keys in the order people write them (Helm's parser hands them back sorted)
RULE_KEYS = ("record", "alert", "expr", "for", "labels", "annotations")
ANNOTATION_KEYS = ("summary", "description", "runbook_url")


def _ordered_rule(rule: dict[str, Any]) -> dict[str, Any]:
    assert set(rule) <= set(RULE_KEYS), sorted(rule)
    out = {key: rule[key] for key in RULE_KEYS if key in rule}
    if "annotations" in out:
        notes = out["annotations"]
        assert set(notes) <= set(ANNOTATION_KEYS), sorted(notes)
        out["annotations"] = {
            key: _Folded(notes[key]) if key == "description" else notes[key]
            for key in ANNOTATION_KEYS
            if key in notes
        }
    return out


def rendered_slo_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The SLO groups of the chart's PrometheusRule rendered with ``values`` (by default: the
    PrometheusRule on, the default SLOs)."""
    if values is None:
        values = {"monitoring": {"prometheusRule": {"enabled": True}}}
    rendered = render(values)
    groups: list[dict[str, Any]] = rendered.one("PrometheusRule")["spec"]["groups"]
    return [g for g in groups if g["name"].startswith(SLO_GROUP_PREFIX)]


def slo_rules_text() -> str:
    """The whole rule file: the header, then the default SLO groups as the chart renders them."""
    groups = [
        {"name": g["name"], "rules": [_ordered_rule(r) for r in g["rules"]]} for g in rendered_slo_groups()
    ]
    body = yaml.dump({"groups": groups}, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


if __name__ == "__main__":
    SLO_RULES_FILE.write_text(slo_rules_text(), encoding="utf-8")
    print(f"wrote {SLO_RULES_FILE.relative_to(REPO)}")
