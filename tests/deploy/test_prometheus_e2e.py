"""End to end: the shipped TTFB alerts in a real Prometheus scraping a real ``otelbridge serve``.

Webhooks with healthy TTFBs (enough turns to pass the rules' traffic guard) must not make any
TTFB alert even pending; slow ones then must make it pending, for that agent only, while a slow
agent with few turns stays quiet (the guard). Alert states are read through Prometheus' HTTP API
(``/api/v1/alerts``, ``/api/v1/rules``). The rules' ``for:`` (10 m) is never waited for: an alert
is pending as soon as its expression holds, which is what the shipped expressions decide.

The SLO rules (otelbridge.slo.rules.yaml) are loaded too: their recording rules must produce
series per agent and deployment from the real ``/metrics`` with the share of good turns posted,
the page must go pending for the deployment that burns only, and the barge-in counter must be
scraped per deployment.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
import yaml

from tests.deploy.prometheus import (
    DASHBOARD,
    JOB,
    RULES,
    SLO_RULES,
    Stack,
    alert_expr,
    scalar,
    stack,
    synthetic_call,
    wait_until,
)

__all__ = ["stack"]  # the shared session fixture, imported for pytest

pytestmark = pytest.mark.prometheus

TTFB_ALERTS = {"CartesiaTtsTtfbHigh": "tts", "CartesiaSttTtfbHigh": "stt"}
ALERTS_SERIES = 'ALERTS{alertname=~"CartesiaTtsTtfbHigh|CartesiaSttTtfbHigh"}'
AGENT = "agent_E2eTtfbProbe0000000001"
QUIET_AGENT = "agent_E2eTtfbQuiet0000000001"
HEALTHY_TTS_S, HEALTHY_STT_S = 0.2, 0.1
SLOW_TTS_S, SLOW_STT_S = 3.0, 1.5
#: every state change is visible within a few 1 s scrape + evaluation rounds
STATE_TIMEOUT_S = 20.0


def guard(alert: str) -> tuple[str, str, int]:
    """The traffic guard of a TTFB alert as the rule file has it: (metric, window, minimum)."""
    expr = alert_expr(alert)
    match = re.search(r"increase\((cartesia_\w+_count)\[(\w+)\]\)\) >= (\d+)", expr)
    assert match is not None, f"no traffic guard in {alert}: {expr}"
    return match.group(1), match.group(2), int(match.group(3))


def threshold(alert: str) -> float:
    match = re.search(r"\(rate\(cartesia_\w+_bucket\[\w+\]\)\)\) > ([0-9.]+)", alert_expr(alert))
    assert match is not None, alert_expr(alert)
    return float(match.group(1))


def turns_in_window(stack: Stack, alert: str, agent: str) -> float:
    metric, window, _ = guard(alert)
    return scalar(stack.prometheus.query(f'sum(increase({metric}{{cartesia_agent_id="{agent}"}}[{window}]))'))


def guard_met(stack: Stack, alert: str) -> bool | None:
    return True if turns_in_window(stack, alert, AGENT) >= guard(alert)[2] else None


def ttfb_alerts(stack: Stack) -> list[dict[str, Any]]:
    return [a for a in stack.prometheus.alerts() if a["labels"]["alertname"] in TTFB_ALERTS]


def test_healthy_then_slow_ttfb(stack: Stack) -> None:
    prometheus = stack.prometheus
    minimum = max(guard(alert)[2] for alert in TTFB_ALERTS)
    # the guard must stay reachable with a modest number of turns, and the test's TTFBs must sit
    # on either side of the shipped thresholds
    assert minimum <= 50
    assert HEALTHY_TTS_S < threshold("CartesiaTtsTtfbHigh") < SLOW_TTS_S
    assert HEALTHY_STT_S < threshold("CartesiaSttTtfbHigh") < SLOW_STT_S
    turns = minimum + 10

    # one turn each first: a histogram series that first appears with its total has no increase
    # in Prometheus' eyes, so the guard would not count the turns that created it
    stack.post(synthetic_call("ac_sid_E2eWarmup0000000001", AGENT, tts_ttfb=[0.2], stt_ttfb=[0.1]))
    stack.post(synthetic_call("ac_sid_E2eQuietWarm00000001", QUIET_AGENT, tts_ttfb=[0.2], stt_ttfb=[0.1]))
    stack.wait_scraped()

    # healthy and busy: above the guard, below the thresholds
    stack.post(
        synthetic_call(
            "ac_sid_E2eHealthy000000001",
            AGENT,
            tts_ttfb=[HEALTHY_TTS_S] * turns,
            stt_ttfb=[HEALTHY_STT_S] * turns,
        )
    )
    stack.wait_scraped()
    for alert in TTFB_ALERTS:
        wait_until(partial(guard_met, stack, alert), STATE_TIMEOUT_S, f"{alert}'s guard met by {AGENT}")
    prometheus.evaluated_after(datetime.now(UTC))
    assert ttfb_alerts(stack) == [], "a TTFB alert is pending on healthy TTFBs"
    # nor was one ever, since Prometheus started (samples included): Prometheus writes an ALERTS
    # series for every evaluation an alert spends pending or firing
    assert prometheus.query(f"count_over_time({ALERTS_SERIES}[1h])") == []
    rules = {r["name"]: r for g in prometheus.rule_groups() for r in g["rules"]}
    for alert in TTFB_ALERTS:
        assert rules[alert]["health"] == "ok", rules[alert]
        assert rules[alert]["state"] == "inactive", rules[alert]

    # slow and quiet: a few slow turns under the guard
    stack.post(
        synthetic_call(
            "ac_sid_E2eQuietSlow0000001", QUIET_AGENT, tts_ttfb=[SLOW_TTS_S] * 5, stt_ttfb=[SLOW_STT_S] * 5
        )
    )
    # slow and busy: as many slow turns as healthy ones put the p95 among the slow ones
    stack.post(
        synthetic_call(
            "ac_sid_E2eSlow00000000001", AGENT, tts_ttfb=[SLOW_TTS_S] * turns, stt_ttfb=[SLOW_STT_S] * turns
        )
    )
    stack.wait_scraped()

    def pending() -> list[dict[str, Any]] | None:
        alerts = ttfb_alerts(stack)
        return alerts if {a["labels"]["alertname"] for a in alerts} == set(TTFB_ALERTS) else None

    alerts = wait_until(pending, STATE_TIMEOUT_S, "both TTFB alerts to go pending")
    prometheus.evaluated_after(datetime.now(UTC))
    alerts = ttfb_alerts(stack)
    for active in alerts:
        # only the busy slow agent, pending (the for: is 10 minutes), with the shipped labels
        assert active["labels"]["cartesia_agent_id"] == AGENT, active
        assert active["state"] == "pending", active
        assert active["labels"]["severity"] == "critical", active
        assert float(active["value"]) > threshold(active["labels"]["alertname"]), active
        assert AGENT in active["annotations"]["summary"], active
    assert sorted(a["labels"]["alertname"] for a in alerts) == sorted(TTFB_ALERTS)
    states = {(r["metric"]["alertname"], r["metric"]["alertstate"]) for r in prometheus.query(ALERTS_SERIES)}
    assert states == {(name, "pending") for name in TTFB_ALERTS}
    rules = {r["name"]: r for g in prometheus.rule_groups() for r in g["rules"]}
    for alert in TTFB_ALERTS:
        assert rules[alert]["state"] == "pending", rules[alert]
        assert [a["labels"]["cartesia_agent_id"] for a in rules[alert]["alerts"]] == [AGENT]
    # the quiet agent's p95 is as slow, only the guard keeps it quiet
    for alert, kind in TTFB_ALERTS.items():
        p95 = scalar(
            prometheus.query(
                f"histogram_quantile(0.95, sum by (le) (rate(cartesia_{kind}_ttfb_seconds_bucket"
                f'{{cartesia_agent_id="{QUIET_AGENT}"}}[10m])))'
            )
        )
        assert p95 > threshold(alert)
        assert turns_in_window(stack, alert, QUIET_AGENT) < guard(alert)[2]


def test_daemon_alerts_quiet_while_it_runs(stack: Stack) -> None:
    """The target is up: neither "down" alert is pending, and every shipped rule evaluates
    without error against the daemon's real series."""
    stack.prometheus.evaluated_after(datetime.now(UTC))
    names = {a["labels"]["alertname"] for a in stack.prometheus.alerts()}
    assert not names & {"OtelbridgeDown", "OtelbridgeAbsent"}
    assert scalar(stack.prometheus.query(f'up{{job="{JOB}"}}')) == 1
    rules = [r for g in stack.prometheus.rule_groups() for r in g["rules"]]
    assert rules
    assert [r["name"] for r in rules if r["health"] != "ok"] == []


METRIC = re.compile(r"\b(?:cartesia|otelbridge)_\w+|\bup\b")
LABELS = re.compile(r"\b(?:by|on) \(([^)]*)\)|(\w+)(?:=~|!~|!=|=)\"")
#: labels Prometheus itself adds or histogram buckets have
BUILTIN_LABELS = {"job", "instance", "le", "__name__"}


def test_rules_use_the_daemons_metric_and_label_names(stack: Stack) -> None:
    """Every metric an alert reads is one the daemon serves (scraped here, after the samples),
    and every label it groups, joins or matches on is one those series carry: a typo or a
    rename in the daemon would make an alert silently never fire."""
    prometheus = stack.prometheus
    names = re.findall(r"^\s*- alert: (\S+)\s*$", RULES.read_text(encoding="utf-8"), re.M)
    assert len(names) >= 10
    problems: list[str] = []
    for name in names:
        expr = alert_expr(name)
        bare = re.sub(r"\b(?:by|on) \([^)]*\)|\{[^}]*\}", "", expr)  # metric names only
        metrics = set(METRIC.findall(bare))
        assert metrics, f"{name}: no metric found in {expr}"
        carried: set[str] = set(BUILTIN_LABELS)
        for metric in sorted(metrics):
            series = prometheus.api("series", **{"match[]": metric})
            if not series:
                problems.append(f"{name}: {metric} is not served")
            carried.update(label for s in series for label in s)
        used = {
            label.strip()
            for group, matcher in LABELS.findall(expr)
            for label in (group.split(",") if group else [matcher])
            if label.strip()
        }
        problems += [f"{name}: label {label} not on {sorted(metrics)}" for label in sorted(used - carried)]
    assert problems == []


LATENCY_ALERT = "CartesiaResponseLatencyHigh"
LATENCY_AGENT = "agent_E2eLatencyProbe00000001"
HEALTHY_LATENCY_S, SLOW_LATENCY_S = 0.6, 4.0


def latency_alerts(stack: Stack) -> list[dict[str, Any]]:
    return [a for a in stack.prometheus.alerts() if a["labels"]["alertname"] == LATENCY_ALERT]


def test_healthy_then_slow_response_latency_per_deployment(stack: Stack) -> None:
    """The response latency alert on a real serve's histogram: quiet on prompt answers, pending
    once a new deployment answers slowly; the two deployments' p95 side by side, as the
    dashboard's "p95 by deployment" shows them."""
    prometheus = stack.prometheus
    _, window, minimum = guard(LATENCY_ALERT)
    assert HEALTHY_LATENCY_S < threshold(LATENCY_ALERT) < SLOW_LATENCY_S and minimum <= 50
    answers = minimum + 10
    # one answer per deployment first: a histogram series that first appears with its total has
    # no increase in Prometheus' eyes (see test_healthy_then_slow_ttfb)
    for number, deployment in ((1, "dep_old"), (2, "dep_new")):
        warm = synthetic_call(
            f"ac_sid_E2eLatWarm00000000{number}", LATENCY_AGENT, answers=[0.5], deployment_id=deployment
        )
        stack.post(warm)
    stack.wait_scraped()
    stack.post(
        synthetic_call(
            "ac_sid_E2eLatHealthy00001",
            LATENCY_AGENT,
            answers=[HEALTHY_LATENCY_S] * answers,
            deployment_id="dep_old",
        )
    )
    stack.wait_scraped()

    def guard_reached() -> bool | None:
        metric = "cartesia_turn_response_latency_seconds_count"
        seen = scalar(
            prometheus.query(f'sum(increase({metric}{{cartesia_agent_id="{LATENCY_AGENT}"}}[{window}]))')
        )
        return True if seen >= minimum else None

    wait_until(guard_reached, STATE_TIMEOUT_S, f"{LATENCY_ALERT}'s guard met by {LATENCY_AGENT}")
    prometheus.evaluated_after(datetime.now(UTC))
    assert latency_alerts(stack) == [], "the response latency alert is pending on prompt answers"

    stack.post(
        synthetic_call(
            "ac_sid_E2eLatSlow000000001",
            LATENCY_AGENT,
            answers=[SLOW_LATENCY_S] * answers,
            deployment_id="dep_new",
        )
    )
    stack.wait_scraped()
    (alert,) = wait_until(lambda: latency_alerts(stack) or None, STATE_TIMEOUT_S, f"{LATENCY_ALERT} pending")
    assert alert["state"] == "pending" and alert["labels"]["cartesia_agent_id"] == LATENCY_AGENT, alert
    assert float(alert["value"]) > threshold(LATENCY_ALERT), alert
    by_deployment = {
        r["metric"]["cartesia_deployment_id"]: float(r["value"][1])
        for r in prometheus.query(
            "histogram_quantile(0.95, sum by (cartesia_deployment_id, le) (rate("
            f'cartesia_turn_response_latency_seconds_bucket{{cartesia_agent_id="{LATENCY_AGENT}"}}[10m])))'
        )
    }
    assert set(by_deployment) == {"dep_old", "dep_new"}
    assert by_deployment["dep_old"] < threshold(LATENCY_ALERT) < by_deployment["dep_new"]


# --- SLOs and barge-in ----------------------------------------------------------------------------
SLO_AGENT = "agent_E2eSloProbe0000000001"
#: (deployment, SLO) -> the share of good turns the posted calls give it (see the test)
SLO_EXPECTED = {
    ("dep_slo_ok", "responseLatency"): 1.0,
    ("dep_slo_ok", "ttsTtfb"): 1.0,
    ("dep_slo_late", "responseLatency"): 0.0,
    ("dep_slo_late", "ttsTtfb"): 20 / 120,
}
SLO_LABELS = {"__name__", "cartesia_agent_id", "cartesia_deployment_id", "slo"}
CUT_OFF, HEARD_OUT = 3, 7


def slo_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(SLO_RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_slo_rules_and_barge_in_on_a_real_serve(stack: Stack) -> None:
    """The default SLOs' rules (otelbridge.slo.rules.yaml) on a real serve's /metrics: every raw
    series they read is served (the threshold's bucket ``le="1.5"`` as the exporter writes it),
    every recording rule produces series per agent and deployment and SLO only, the ratios are the
    share of good turns posted, and the page goes pending for the deployment that burns, for both
    SLOs, and not for its healthy sibling. The barge-in counter is scraped per deployment from the
    first assistant turn on (0), counts the interrupted answers, and the dashboard's barge-in rate
    reads their share."""
    prometheus = stack.prometheus
    for rule in slo_rules():
        for metric, selector in re.findall(r"\b(cartesia_(?!slo:)\w+)(\{[^}]*\})?\[", rule["expr"]):
            assert prometheus.api("series", **{"match[]": metric + selector}), (
                f"{metric}{selector} not served"
            )

    # one call per deployment first: its series are born (a series' first total is no increase),
    # the barge-in counter at 0 (an assistant turn heard out)
    for number, deployment in enumerate(("dep_slo_ok", "dep_slo_late"), 1):
        warm = synthetic_call(
            f"ac_sid_E2eSloWarm00000000{number}",
            SLO_AGENT,
            tts_ttfb=[0.2],
            answers=[0.5],
            deployment_id=deployment,
        )
        stack.post(warm)
    stack.wait_scraped()
    barge_ins = 'cartesia_turns_interrupted_total{cartesia_agent_id="%s",cartesia_deployment_id="%s"}'
    for deployment in ("dep_slo_ok", "dep_slo_late"):
        assert scalar(prometheus.query(barge_ins % (SLO_AGENT, deployment))) == 0
    # dep_slo_ok: 20 prompt answers and 10 more turns, 3 of them cut off by the caller, all fast;
    # dep_slo_late: 20 answers 3 s late (their TTS fast), then 100 turns with a 3 s TTFB
    stack.post(
        synthetic_call(
            "ac_sid_E2eSloOk0000000001",
            SLO_AGENT,
            tts_ttfb=[0.2] * (CUT_OFF + HEARD_OUT),
            interrupted=CUT_OFF,
            answers=[0.6] * 20,
            deployment_id="dep_slo_ok",
        )
    )
    late = "dep_slo_late"
    stack.post(
        synthetic_call("ac_sid_E2eSloLate000000001", SLO_AGENT, answers=[3.0] * 20, deployment_id=late)
    )
    stack.post(
        synthetic_call("ac_sid_E2eSloLate000000002", SLO_AGENT, tts_ttfb=[3.0] * 100, deployment_id=late)
    )
    stack.wait_scraped()

    def ratios() -> dict[tuple[str, str], float] | None:
        result = prometheus.query(f'cartesia_slo:sli:ratio_rate5m{{cartesia_agent_id="{SLO_AGENT}"}}')
        found = {
            (r["metric"]["cartesia_deployment_id"], r["metric"]["slo"]): float(r["value"][1]) for r in result
        }
        close = set(found) == set(SLO_EXPECTED) and all(
            abs(found[key] - value) < 0.02 for key, value in SLO_EXPECTED.items()
        )
        return found if close else None

    wait_until(ratios, STATE_TIMEOUT_S, f"the 5 m SLO ratios of {SLO_AGENT}: {SLO_EXPECTED}")
    recorded = [rule["record"] for rule in slo_rules() if "record" in rule]
    assert len(recorded) == 2 * 9  # per SLO: good, total, 4 window ratios, its window, objective, budget
    for name in dict.fromkeys(recorded):
        if name == "cartesia_slo:objective:ratio":  # a constant per SLO, no agent
            assert {r["metric"]["slo"] for r in prometheus.query(name)} == {"responseLatency", "ttsTtfb"}
            continue
        result = prometheus.query(f'{name}{{cartesia_agent_id="{SLO_AGENT}"}}')
        assert {(r["metric"]["cartesia_deployment_id"], r["metric"]["slo"]) for r in result} == set(
            SLO_EXPECTED
        ), name
        for series in result:
            assert set(series["metric"]) - {"slo_window"} == SLO_LABELS, series  # no instance, job, pod
            if name == "cartesia_slo:sli:ratio_window":  # the 5 m rates summed: near, not exact yet
                assert 0 <= float(series["value"][1]) <= 1, series
            elif name.startswith("cartesia_slo:sli:ratio_rate"):
                expected = SLO_EXPECTED[(series["metric"]["cartesia_deployment_id"], series["metric"]["slo"])]
                assert abs(float(series["value"][1]) - expected) < 0.02, series

    def burning() -> set[tuple[str, str, str]] | None:
        found = {
            (a["labels"]["alertname"], a["labels"]["cartesia_deployment_id"], a["labels"]["slo"])
            for a in prometheus.alerts()
            if a["labels"]["alertname"].startswith("CartesiaSloBurn")
            and a["labels"].get("cartesia_agent_id") == SLO_AGENT
        }
        page = {("CartesiaSloBurnFast", late, slo) for slo in ("responseLatency", "ttsTtfb")}
        return found if found >= page else None

    found = wait_until(burning, STATE_TIMEOUT_S, f"the SLO page of {late}")
    prometheus.evaluated_after(datetime.now(UTC))
    assert {deployment for _, deployment, _ in found} == {late}, found  # dep_slo_ok is healthy
    for alert in prometheus.alerts():
        if (
            alert["labels"]["alertname"] == "CartesiaSloBurnFast"
            and alert["labels"].get("cartesia_agent_id") == SLO_AGENT
        ):
            assert alert["state"] == "pending" and alert["labels"]["severity"] == "critical", alert
            assert float(alert["value"]) > 14.4, alert

    # barge-in: the 3 cut-off answers of dep_slo_ok, none of dep_slo_late; the dashboard's rate
    assert scalar(prometheus.query(barge_ins % (SLO_AGENT, "dep_slo_ok"))) == CUT_OFF
    assert scalar(prometheus.query(barge_ins % (SLO_AGENT, late))) == 0
    panel = next(
        p
        for p in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
        if p["title"] == "Barge-in rate by deployment"
    )
    expr = panel["targets"][0]["expr"].replace("$agent", SLO_AGENT).replace("$__rate_interval", "5m")
    rate = {
        r["metric"]["cartesia_deployment_id"]: float(r["value"][1])
        for r in prometheus.query(expr.replace("$deployment", ".*"))
    }
    # the answers of dep_slo_ok after its first call: 3 of 10 + 20
    assert abs(rate["dep_slo_ok"] - CUT_OFF / (CUT_OFF + HEARD_OUT + 20)) < 0.01, rate
    assert rate[late] == 0, rate
