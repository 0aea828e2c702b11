"""The shipped alert rules under promtool: ``check rules`` clean, ``test rules`` passing, and every
alert covered by the unit tests (deploy/prometheus/tests/*.yaml) at least once firing and once
not firing, and at least once with the series of two replicas and a failover between them; and
every expression written for several replicas (no grouping by a replica's labels)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from tests.deploy.prometheus import RULE_TESTS, RULES, alert_expr, promtool

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


def alert_names() -> list[str]:
    return ALERT_LINE.findall(RULES.read_text(encoding="utf-8"))


def test_check_rules_is_clean() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool's own count confirms the line-based reading of the alert names (no recording rules)
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert found is not None, result.stdout
    names = alert_names()
    assert int(found.group(1)) == len(names) == len(set(names))
    assert "WARNING" not in result.stdout + result.stderr


def test_every_alert_has_severity_and_runbook_text() -> None:
    text = RULES.read_text(encoding="utf-8")
    blocks = re.split(r"\n\s*- alert: ", text)[1:]
    assert len(blocks) == len(alert_names())
    for block in blocks:
        name = block.split("\n", 1)[0]
        assert re.search(r"\n\s+severity: (critical|warning)\n", block), name
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"\n\s+{annotation}: \S", block), f"{name}: no {annotation}"


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
    names = alert_names()
    assert total > 0
    assert set(seen) - set(names) == set(), "unit tests of alerts the rule file does not have"
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
        for name in alert_names()
        if covered[name] != {True, False}
    }
    assert missing == {}, "alerts without a firing (True) or a non-firing (False) case with two pods"
