"""An LLM-judge result in, its span and metric points out: pure, no I/O, no clock.

A result arrives (``GET /agents/metrics/results``) long after its call's root span went out, so
it is a span of its own in the call's trace: ``evaluation {metric name}``, a child of the root,
an instant at the result's ``createdAt``, with the OpenTelemetry GenAI evaluation attributes
and a ``gen_ai.evaluation.result`` event. Its span id comes from the result id, so the same
result read twice is one span (the ledger drops the second).
"""

from __future__ import annotations

from otelbridge.cartesia.models import EvaluationResult
from otelbridge.mapping import conventions as c
from otelbridge.mapping import ids
from otelbridge.mapping.policy import AttributeSink, MappingOptions, bounded_name
from otelbridge.mapping.records import Attributes, EventRecord, InstrumentKind, MetricPoint, SpanRecord


def evaluation_key(result_id: str) -> str:
    return f"evaluation:{result_id}"


def map_evaluation(result: EvaluationResult, options: MappingOptions) -> tuple[SpanRecord, list[MetricPoint]]:
    key = evaluation_key(result.id)
    sink = AttributeSink(options)
    sink.put(c.GEN_AI_CONVERSATION_ID, result.call_id)
    sink.put(c.GEN_AI_OPERATION_NAME, c.OPERATION_EVALUATION)
    sink.put(c.GEN_AI_PROVIDER_NAME, c.PROVIDER_NAME)
    sink.put(c.GEN_AI_AGENT_ID, result.agent_id)
    attrs = sink.attributes
    span = SpanRecord(
        key=key,
        name=bounded_name(c.SPAN_EVALUATION, result.metric_name or "", sink.truncated),
        trace_id=ids.trace_id(result.call_id),
        span_id=ids.span_id(result.call_id, key),
        parent_span_id=ids.root_span_id(result.call_id),
        start_ns=result.created_at,
        end_ns=result.created_at,
        attributes=attrs,
    )
    score: dict[str, str | float | int] = {c.GEN_AI_EVALUATION_NAME: result.metric_name}
    if isinstance(result.value, int | float):
        score[c.GEN_AI_EVALUATION_SCORE_VALUE] = float(result.value)
    elif isinstance(result.value, str):
        score[c.GEN_AI_EVALUATION_SCORE_LABEL] = result.value
    for key_, value in score.items():
        sink.put(key_, value)
    sink.put(c.EVALUATION_ID, result.id)
    sink.put(c.EVALUATION_METRIC_ID, result.metric_id)
    sink.put(c.EVALUATION_STATUS, result.status)
    sink.put(c.EVALUATION_RESULT, result.result)
    event_attrs: Attributes = {}
    AttributeSink(options, event_attrs).flatten("", dict(score))
    span.events.append(EventRecord(c.EVENT_EVALUATION_RESULT, result.created_at, event_attrs))
    sink.list_cuts()

    low_card: dict[str, str | bool | int] = {
        c.METRIC_ATTR_AGENT_ID: result.agent_id,
        c.GEN_AI_EVALUATION_NAME: result.metric_name,
        c.EVALUATION_STATUS: result.status or "unknown",
    }
    points = [
        MetricPoint(c.METRIC_EVALUATIONS, InstrumentKind.COUNTER, "{evaluation}",
                    "LLM-judge results by metric and status", 1, low_card, key, span.trace_id, span.span_id)
    ]  # fmt: skip
    if isinstance(result.value, int | float):
        by_metric: dict[str, str | bool | int] = {
            c.METRIC_ATTR_AGENT_ID: result.agent_id,
            c.GEN_AI_EVALUATION_NAME: result.metric_name,
        }
        points.append(
            MetricPoint(c.METRIC_EVALUATION_VALUE, InstrumentKind.HISTOGRAM, "1",
                        "LLM-judge result values by metric", float(result.value), by_metric,
                        key, span.trace_id, span.span_id)
        )  # fmt: skip
    return span, points
