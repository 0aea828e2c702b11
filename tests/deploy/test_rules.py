"""The shipped alert rules under promtool: ``check rules`` clean, ``test rules`` passing, and every
alert covered by the unit tests (deploy/prometheus/tests/*.yaml) at least once firing and once
not firing."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from tests.deploy.prometheus import RULE_TESTS, RULES, promtool

pytestmark = pytest.mark.prometheus

ALERT_LINE = re.compile(r"^\s*- alert: (\S+)\s*$", re.M)


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
