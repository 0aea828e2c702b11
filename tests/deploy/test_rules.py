"""The shipped alert rules under promtool: ``check rules`` clean, ``test rules`` passing, and every
alert covered by the unit tests (deploy/prometheus/tests/*.yaml) at least once firing and once
not firing, and at least once with the series of two replicas and a failover between them; and
every expression written for several replicas (no grouping by a replica's labels). The same for
the SLO rule file (otelbridge.slo.rules.yaml: recording rules and multi-window multi-burn-rate
alerts), whose expressions are checked against the SRE workbook's windows and factors."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART_DIR, REPO, load_values
from tests.deploy.prometheus import RULE_TESTS, RULES, SLO_RULES, alert_expr, promtool
from tests.deploy.slo_rules import rendered_slo_groups

pytestmark = pytest.mark.prometheus

ALERT_LINE = re.compile(r"^\s*- alert: (\S+)\s*$", re.M)
#: what tells the replicas of one otelbridge apart, and its version (which differs across a rolling
#: upgrade, when the lease moves to a new pod): aggregated away in every self-metric alert
REPLICA_LABELS = ("instance", "pod", "otel_scope_version")
#: gauges of the leader's state: a follower reports 0 or the shared database's same value
LEADER_GAUGES = (
    "otelbridge_spool_depth",
    "otelbridge_spool_size_bytes",
    "otelbridge_spool_oldest_age_seconds",
    "otelbridge_inbox_depth",
    "otelbridge_calls_open",
)
#: the alerts on the scrape targets themselves (``up``), per target by nature
PER_TARGET = {"OtelbridgeDown", "OtelbridgeAbsent"}


def alert_names(path: Path = RULES) -> list[str]:
    return ALERT_LINE.findall(path.read_text(encoding="utf-8"))


def all_alert_names() -> list[str]:
    """The alerts of both rule files, each name once (an SLO alert has one rule per SLO)."""
    return list(dict.fromkeys(alert_names() + alert_names(SLO_RULES)))


def test_check_rules_is_clean() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool's own count confirms the line-based reading of the alert names (no recording rules)
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert found is not None, result.stdout
    names = alert_names()
    assert int(found.group(1)) == len(names) == len(set(names))
    assert "WARNING" not in result.stdout + result.stderr


#: where each alert's runbook is: its section of docs/alerts.md (GitHub's anchor of ``## Name``)
RUNBOOK_URL = "https://github.com/otelbridge/otelbridge/blob/main/docs/alerts.md#{anchor}"


@pytest.mark.parametrize(
    ("path", "runbook"),
    [(RULES, "runbook_url"), (SLO_RULES, "runbook_url")],
    ids=lambda p: getattr(p, "name", p),
)
def test_every_alert_has_severity_and_runbook(path: Path, runbook: str) -> None:
    text = path.read_text(encoding="utf-8")
    blocks = re.split(r"\n\s*- alert: ", text)[1:]
    assert len(blocks) == len(alert_names(path)) > 0
    for block in blocks:
        name = block.split("\n", 1)[0]
        assert re.search(r"\n\s+severity: (critical|warning)\n", block), name
        for annotation in ("summary", "description", "runbook_url"):
            assert re.search(rf"\n\s+{annotation}: \S", block), f"{name}: no {annotation}"


def test_every_alert_links_its_runbook_section() -> None:
    """``runbook_url`` (what Alertmanager templates and Grafana show as a link), not a ``runbook``
    text: each alert's own section of docs/alerts.md, whose heading is the alert's name."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    headings = set(re.findall(r"^## (\S+)\s*$", (REPO / "docs" / "alerts.md").read_text(), re.M))
    for rule in alerts:
        notes = rule["annotations"]
        assert "runbook" not in notes, rule["alert"]
        assert notes["runbook_url"] == RUNBOOK_URL.format(anchor=rule["alert"].lower()), rule["alert"]
        assert rule["alert"] in headings, f"docs/alerts.md has no '## {rule['alert']}' section"


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool tests in deploy/prometheus/tests"
    result = promtool("test", "rules", *[str(p) for p in RULE_TESTS])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def unit_test_cases(path: Path) -> list[tuple[str, bool]]:
    """(alertname, fires) of every ``alert_rule_test`` case in a promtool test file: ``fires`` when
    its ``exp_alerts`` lists an alert, not when it is ``[]`` (or absent). Read line by line, as the
    files are written (one ``- eval_time:`` per case, its keys below it); a case this reader does
    not understand fails the test rather than counting."""
    cases: list[tuple[str, bool]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^\s*- eval_time: ", line)]
    for n, start in enumerate(starts):
        indent = len(lines[start]) - len(lines[start].lstrip()) + 2  # the case's keys
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        body = []
        for line in lines[start + 1 : end]:
            if line.strip() and len(line) - len(line.lstrip()) < indent:
                break  # the next test group
            body.append(line)
        alert = [m.group(1) for line in body if (m := re.match(rf"^ {{{indent}}}alertname: (\S+)$", line))]
        assert len(alert) == 1, f"{path.name} line {start + 1}: no single alertname"
        exp = [i for i, line in enumerate(body) if re.match(rf"^ {{{indent}}}exp_alerts:", line)]
        if not exp:
            cases.append((alert[0], False))
            continue
        head = body[exp[0]].strip()
        if head == "exp_alerts: []":
            cases.append((alert[0], False))
            continue
        assert head == "exp_alerts:", f"{path.name} line {start + 1}: {head}"
        following = [line for line in body[exp[0] + 1 :] if line.strip()]
        assert following and following[0].lstrip().startswith("- exp_labels:"), f"{path.name}: {head}"
        cases.append((alert[0], True))
    return cases


def test_every_alert_fires_and_stays_quiet_in_the_unit_tests() -> None:
    seen: dict[str, set[bool]] = defaultdict(set)
    total = 0
    for path in RULE_TESTS:
        cases = unit_test_cases(path)
        # every case of the file was read (one eval_time line each)
        assert len(cases) == path.read_text(encoding="utf-8").count("- eval_time: ")
        total += len(cases)
        for alert, fires in cases:
            seen[alert].add(fires)
    names = all_alert_names()
    assert total > 0
    assert set(seen) - set(names) == set(), "unit tests of alerts the rule files do not have"
    missing = {name: sorted({True, False} - seen[name]) for name in names if seen[name] != {True, False}}
    assert missing == {}, "alerts without a firing (True) or a non-firing (False) unit-test case"


def test_no_alert_tells_replicas_apart() -> None:
    """A failover (the leader's series stop, the next leader's start at 0 under another
    ``instance``/``pod``) neither fires nor hides an alert: no expression groups or joins by a
    replica's labels, every self metric is aggregated without them (rate/increase per series
    first), and a leader-only gauge is the largest across the replicas, each replica's last value
    held 5 m (a follower's 0, or a scrape between two leaders, does not reset a ``for:``)."""
    replica = ", ".join(REPLICA_LABELS)
    for name in alert_names():
        expr = alert_expr(name)
        for clause in re.findall(r"\b(?:by|on|ignoring|group_left|group_right) \(([^)]*)\)", expr):
            grouped = {label.strip() for label in clause.split(",")}
            assert not grouped & {"instance", "pod"}, f"{name} groups by a replica: {expr}"
        for clause in re.findall(r"\bwithout \(([^)]*)\)", expr):
            dropped = {label.strip() for label in clause.split(",")}
            assert dropped >= set(REPLICA_LABELS) or dropped == {"signal"}, f"{name}: {expr}"
        if name in PER_TARGET:
            continue
        self_metrics = re.findall(r"\botelbridge_\w+", re.sub(r"\{[^}]*\}", "", expr))
        assert expr.count(f"without ({replica}") >= len(self_metrics), f"{name} not aggregated: {expr}"
        for gauge in LEADER_GAUGES:
            for use in re.finditer(rf"\b{gauge}\b", expr):
                before = expr[: use.start()]
                assert before.endswith(f"max without ({replica}) (last_over_time("), f"{name}: {expr}"
    assert alert_expr("OtelbridgeNoLeader") == f"sum without ({replica}) (otelbridge_leader) < 1"
    assert alert_expr("OtelbridgeMultipleLeaders") == f"sum without ({replica}) (otelbridge_leader) > 1"


def test_every_alert_has_a_case_with_two_replicas() -> None:
    """The unit tests with the series of two pods (distinct ``pod`` labels) and a failover between
    them have, for every alert, a case where it fires (bad data across the switch) and one where
    it stays quiet (the switch alone, or bad data under the alert's guard)."""
    replica_files = [
        p for p in RULE_TESTS if len(set(re.findall(r'\bpod="([^"]+)"', p.read_text(encoding="utf-8")))) >= 2
    ]
    assert replica_files, "no promtool test with two pods"
    text = "".join(p.read_text(encoding="utf-8") for p in replica_files)
    assert "stale" in text, "no series that stops (a pod that dies)"
    covered: dict[str, set[bool]] = defaultdict(set)
    for path in replica_files:
        for alert, fires in unit_test_cases(path):
            covered[alert].add(fires)
    missing = {
        name: sorted({True, False} - covered[name])
        for name in all_alert_names()
        if covered[name] != {True, False}
    }
    assert missing == {}, "alerts without a firing (True) or a non-firing (False) case with two pods"


# --- the SLOs (otelbridge.slo.rules.yaml) -------------------------------------------------------
#: the default SLOs (the chart's values) and the histogram each one reads
DEFAULT_SLOS = {
    "responseLatency": "cartesia_turn_response_latency_seconds",
    "ttsTtfb": "cartesia_tts_ttfb_seconds",
}
#: (alert, severity, long window, short window, burn rate): the SRE workbook's page and ticket
BURN_ALERTS = [
    ("CartesiaSloBurnFast", "critical", "1h", "5m", 14.4),
    ("CartesiaSloBurnSlow", "warning", "6h", "30m", 6.0),
]
BURN = re.compile(
    r"\(1 - cartesia_slo:sli:ratio_rate(\w+)\{slo=\"(\w+)\"\}\) / \(1 - ([0-9.]+)\) > ([0-9.]+)"
)


def slo_groups() -> dict[str, list[dict[str, Any]]]:
    """SLO name -> its rules (each SLO is one group named otelbridge-slo-<name>)."""
    groups = yaml.safe_load(SLO_RULES.read_text(encoding="utf-8"))["groups"]
    return {g["name"].removeprefix("otelbridge-slo-"): g["rules"] for g in groups}


def test_slo_rules_check_clean() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(SLO_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert found is not None, result.stdout
    assert int(found.group(1)) == sum(len(rules) for rules in slo_groups().values())
    assert set(slo_groups()) == set(DEFAULT_SLOS)


def test_slo_recording_rules_sum_across_replicas() -> None:
    """Every raw series is read per series first (``rate``) and summed by agent and deployment, so
    two pods and a failover count once and no replica label survives; each SLO's rules read only
    its own recorded series, and every recorded series carries its ``slo``."""
    for slo, rules in slo_groups().items():
        metric = DEFAULT_SLOS[slo]
        recorded = [r for r in rules if "record" in r]
        assert len(recorded) == len({r["record"] for r in recorded}) >= 9
        for rule in rules:
            expr = " ".join(rule["expr"].split())
            assert rule["labels"]["slo"] == slo, rule
            for clause in re.findall(r"\b(?:by|on|ignoring|without) \(([^)]*)\)", expr):
                assert {label.strip() for label in clause.split(",")} == {
                    "cartesia_agent_id",
                    "cartesia_deployment_id",
                }, f"{slo}: {expr}"
            raw = re.findall(r"\b(cartesia_\w+)[{\[]", expr)  # a metric: a selector or a range follows
            assert {m.removesuffix("_bucket").removesuffix("_count") for m in raw} <= {metric}, expr
            for use in re.finditer(rf"\b{metric}_(bucket|count)\b", expr):
                before = expr[: use.start()]
                assert before.endswith("sum by (cartesia_agent_id, cartesia_deployment_id) (rate("), expr
                if use.group(1) == "bucket":
                    assert expr[use.end() :].startswith('{le="1.5"}['), expr  # the threshold's bucket
            for series in re.findall(r"\b(cartesia_slo:\w+:\w+)(\{[^}]*\})?", expr):
                assert series[1] == f'{{slo="{slo}"}}', f"{slo} reads another SLO's series: {expr}"
        windows = {r["record"].rsplit("_rate", 1)[1] for r in recorded if "ratio_rate" in r["record"]}
        assert windows == {"5m", "30m", "1h", "6h"}
        window = {r["record"]: r for r in recorded}["cartesia_slo:sli:ratio_window"]
        assert window["labels"]["slo_window"] == "28d" and "[28d]" in window["expr"]


def test_slo_alerts_are_the_workbooks_multiwindow_multi_burn_rate() -> None:
    """Per SLO: a page when the error budget burns above 14.4x over 1 h and over 5 m, a ticket above
    6x over 6 h and over 30 m, both against the SLO's own objective (0.95), per agent and
    deployment (the labels the recorded ratios keep)."""
    for slo, rules in slo_groups().items():
        objective = {r["record"]: r for r in rules if "record" in r}["cartesia_slo:objective:ratio"]
        assert objective["expr"] == "vector(0.95)"
        alerts = {r["alert"]: r for r in rules if "alert" in r}
        assert set(alerts) == {name for name, *_ in BURN_ALERTS}
        for name, severity, long, short, factor in BURN_ALERTS:
            alert = alerts[name]
            assert alert["labels"] == {"severity": severity, "slo": slo}
            conditions = BURN.findall(alert["expr"])
            assert [(w, s, float(o), float(f)) for w, s, o, f in conditions] == [
                (long, slo, 0.95, factor),
                (short, slo, 0.95, factor),
            ], alert["expr"]
            assert re.fullmatch(r"(.+)\n\s*and\n(.+)", alert["expr"].strip()), alert["expr"]
            for key, text in alert["annotations"].items():
                if key != "runbook_url":  # the link names the alert's section, the rest the deployment
                    assert "cartesia_agent_id" in text or "deployment" in text


def test_both_slos_page_and_ticket_in_the_unit_tests() -> None:
    """The promtool tests have, for each default SLO, a case where each burn alert fires with that
    SLO's label, and one where a deployment of the agent that burns stays quiet."""
    fired: set[tuple[str, str]] = set()
    quiet_deployments: set[str] = set()
    burning: set[str] = set()
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        if "../otelbridge.slo.rules.yaml" not in document["rule_files"]:
            continue
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    fired.add((case["alertname"], alert["exp_labels"]["slo"]))
                    burning.add(alert["exp_labels"]["cartesia_deployment_id"])
            for check in test.get("promql_expr_test", []):
                if (
                    check["expr"].startswith("count_over_time(ALERTS{cartesia_deployment_id=")
                    and not check["exp_samples"]
                ):
                    quiet_deployments.add(check["expr"].split('"')[1])
    assert fired >= {(name, slo) for name, *_ in BURN_ALERTS for slo in DEFAULT_SLOS}
    assert quiet_deployments and not quiet_deployments & burning


def test_slos_from_other_chart_values_under_promtool(tmp_path: Path) -> None:
    """The chart's SLO rules with ci/slo-values.yaml (a 99% response latency SLO at the whole-second
    boundary 2, an STT TTFB SLO over 7 days) pass promtool's lint, and the whole-number threshold
    finds its bucket both as a scrape writes it (``le="2.0"``) and as OTLP backends do (``le="2"``)."""
    values = load_values(CHART_DIR / "ci" / "slo-values.yaml")
    rules = tmp_path / "slo.rules.yaml"
    rules.write_text(json.dumps({"groups": rendered_slo_groups(values)}, indent=2), encoding="utf-8")
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    metric = "cartesia_turn_response_latency_seconds"
    dep = 'cartesia_deployment_id="dep_1"'
    series = []
    for agent, le in (("agent_scraped", "2.0"), ("agent_otlp", "2")):
        who = f'cartesia_agent_id="{agent}",cartesia_deployment_id="dep_1"'
        series += [
            {"series": f'{metric}_bucket{{{who},le="{le}"}}', "values": "0+9x30"},
            {"series": f"{metric}_count{{{who}}}", "values": "0+10x30"},
        ]
    expected = [
        {
            "labels": f'{{cartesia_agent_id="{agent}", {dep}, slo="responseLatency"}}',
            "value": 0.9,
        }
        for agent in ("agent_otlp", "agent_scraped")
    ]
    test = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": "round(cartesia_slo:sli:ratio_rate5m, 0.001)",
                        "eval_time": "20m",
                        "exp_samples": expected,
                    },
                    {
                        "expr": "round(cartesia_slo:sli:ratio_rate1h, 0.001)",
                        "eval_time": "20m",
                        "exp_samples": expected,
                    },
                ],
            }
        ],
    }
    path = tmp_path / "slo_test.yaml"
    path.write_text(json.dumps(test, indent=2), encoding="utf-8")  # JSON is YAML
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
