"""LLM-judge results -> spans in the call's trace and metric points (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from otelbridge.cartesia.models import parse_evaluation
from otelbridge.mapping import conventions as c
from otelbridge.mapping import ids
from otelbridge.mapping.evaluations import map_evaluation
from otelbridge.mapping.policy import MappingOptions


def _result(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": "mr_1",
        "metricId": "m_1",
        "metricName": "resolved_issue",
        "summary": "…",
        "agentId": "agent_1",
        "callId": "ac_sid_1",
        "deploymentId": "dep_1",
        "result": "The caller's problem was solved.",
        "value": 0.9,
        "status": "completed",
        "createdAt": "2026-11-20T09:05:00.123456789Z",
        "transcript": [],
    }
    raw.update(overrides)
    return raw


def test_numeric_result_is_a_child_span_of_the_root_with_a_value_histogram() -> None:
    span, points = map_evaluation(parse_evaluation(_result()), MappingOptions())
    assert span.trace_id == ids.trace_id("ac_sid_1")
    assert span.parent_span_id == ids.root_span_id("ac_sid_1")
    assert span.name == "evaluation resolved_issue"
    assert span.start_ns == span.end_ns == 1_795_165_500_123_456_789
    assert span.attributes[c.GEN_AI_EVALUATION_SCORE_VALUE] == 0.9
    assert span.attributes[c.EVALUATION_STATUS] == "completed"
    assert span.attributes[c.GEN_AI_OPERATION_NAME] == c.OPERATION_EVALUATION
    assert [e.name for e in span.events] == [c.EVENT_EVALUATION_RESULT]
    by_name = {p.instrument: p for p in points}
    assert by_name[c.METRIC_EVALUATION_VALUE].value == 0.9
    assert by_name[c.METRIC_EVALUATIONS].attributes == {
        c.METRIC_ATTR_AGENT_ID: "agent_1",
        c.GEN_AI_EVALUATION_NAME: "resolved_issue",
        c.EVALUATION_STATUS: "completed",
    }
    assert all(p.span_id == span.span_id for p in points)


def test_boolean_and_text_values() -> None:
    passed, points = map_evaluation(parse_evaluation(_result(value=True)), MappingOptions())
    assert passed.attributes[c.GEN_AI_EVALUATION_SCORE_VALUE] == 1.0
    label, points = map_evaluation(parse_evaluation(_result(value="good")), MappingOptions())
    assert label.attributes[c.GEN_AI_EVALUATION_SCORE_LABEL] == "good"
    assert [p.instrument for p in points] == [c.METRIC_EVALUATIONS]  # no histogram of text


def test_same_result_same_span_id_and_distinct_results_distinct() -> None:
    a, _ = map_evaluation(parse_evaluation(_result()), MappingOptions())
    b, _ = map_evaluation(parse_evaluation(_result()), MappingOptions())
    other, _ = map_evaluation(parse_evaluation(_result(id="mr_2")), MappingOptions())
    assert a.span_id == b.span_id != other.span_id


def test_a_result_without_call_id_is_refused() -> None:
    raw = _result()
    del raw["callId"]
    with pytest.raises(ValidationError, match="callId"):
        parse_evaluation(raw)
