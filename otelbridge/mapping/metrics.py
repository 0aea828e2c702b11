"""A validated call (and its spans) in, metric points out: pure, no I/O, no clock.

Attributes stay low-cardinality: the agent id, and small closed vocabularies (role, status,
end reason, tool name). Never a call id. The bounds on LogMetric names and string values,
which need memory across calls, are kept by :class:`otelbridge.delivery.meter.MetricRecorder`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from otelbridge.cartesia.models import AgentCall, LogMetric, TranscriptItem
from otelbridge.mapping import conventions as c
from otelbridge.mapping.policy import MAX_NAME_BYTES, cap_bytes
from otelbridge.mapping.records import InstrumentKind, MetricPoint, SpanRecord
from otelbridge.mapping.traces import CallContext, CallSpans

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.\-]")
#: a LogMetric instrument's name (OpenTelemetry allows 255; it is on every line of its series)
_MAX_INSTRUMENT_NAME: Final = 128


def _point(
    instrument: str,
    kind: InstrumentKind,
    unit: str,
    description: str,
    value: float,
    attributes: dict[str, str | bool | int],
    span: SpanRecord,
) -> MetricPoint:
    return MetricPoint(
        instrument,
        kind,
        unit,
        description,
        value,
        attributes,
        span.key,
        span.trace_id,
        span.span_id,
    )


def deployment_label(deployment_id: str | None) -> str:
    """The metric attribute of a call's deployment, before the per-agent bound."""
    return deployment_id or c.DEPLOYMENT_NONE


def turn_points(ctx: CallContext, item: TranscriptItem, spans: list[SpanRecord]) -> list[MetricPoint]:
    """Points of one spoken turn: ``spans`` is what :func:`map_turn` returned for it."""
    turn, tools = spans[0], spans[1:]
    agent: dict[str, str | bool | int] = {c.METRIC_ATTR_AGENT_ID: ctx.agent_id}
    deployment = {c.METRIC_ATTR_DEPLOYMENT_ID: deployment_label(ctx.deployment_id)}
    deployed = {**agent, **deployment}
    points: list[MetricPoint] = []
    if item.tts_ttfb is not None and item.tts_ttfb >= 0:
        points.append(_point(c.METRIC_TTS_TTFB, InstrumentKind.HISTOGRAM, "s",
                             "Text-to-speech time to first byte, as Cartesia reports it",
                             item.tts_ttfb, deployed, turn))  # fmt: skip
    if item.stt_ttfb is not None and item.stt_ttfb >= 0:
        points.append(_point(c.METRIC_STT_TTFB, InstrumentKind.HISTOGRAM, "s",
                             "Speech-to-text time to first byte, as Cartesia reports it",
                             item.stt_ttfb, deployed, turn))  # fmt: skip
    latency = turn.attributes.get(c.TURN_RESPONSE_LATENCY)
    if isinstance(latency, float):
        points.append(_point(c.METRIC_RESPONSE_LATENCY, InstrumentKind.HISTOGRAM, "s",
                             "Silence between the end of the caller's turn and the agent's answer",
                             latency, deployed, turn))  # fmt: skip
    role = {**agent, c.METRIC_ATTR_ROLE: item.role}
    points.append(_point(c.METRIC_TURN_DURATION, InstrumentKind.HISTOGRAM, "s",
                         "Duration of a spoken turn", (turn.end_ns - turn.start_ns) / 1e9,
                         {**role, **deployment}, turn))  # fmt: skip
    interrupted = turn.attributes.get(c.TURN_INTERRUPTED) is True
    points.append(_point(c.METRIC_TURNS, InstrumentKind.COUNTER, "{turn}", "Spoken turns",
                         1, {**role, c.METRIC_ATTR_INTERRUPTED: interrupted}, turn))  # fmt: skip
    if item.role == "assistant":
        # 0 for an answer heard out: the agent's deployment has its series from its first
        # assistant turn on, so rate() sees the first barge-in (a series born at 1 has no increase)
        points.append(_point(c.METRIC_TURNS_INTERRUPTED, InstrumentKind.COUNTER, "{turn}",
                             "Assistant turns the caller interrupted (barge-in)",
                             1 if interrupted else 0, deployed, turn))  # fmt: skip
    for tool in tools:
        name = str(tool.attributes.get(c.GEN_AI_TOOL_NAME, ""))
        points.append(_point(c.METRIC_TOOL_CALLS, InstrumentKind.COUNTER, "{call}",
                             "Tool calls made by agents", 1,
                             {**agent, c.METRIC_ATTR_TOOL_NAME: name}, tool))  # fmt: skip
    return points


#: a LogMetric name's unit suffix -> its units per second (Prometheus wants base units, and
#: no unit in the name: ``llm_first_chunk_ms`` is ``cartesia_log_metric_llm_first_chunk_seconds``)
_DURATION_SUFFIXES: Final = (("_ms", 1000.0), ("_seconds", 1.0), ("_sec", 1.0), ("_s", 1.0))


def log_metric_instrument(name: str) -> tuple[str, str, float]:
    """(instrument name, unit, divisor to the unit) for a LogMetric name: a duration suffix
    becomes the unit, seconds: ``llm_first_chunk_ms`` -> (``cartesia.log_metric.llm_first_chunk``,
    ``s``, 1000); anything else is unitless as it is."""
    safe = _UNSAFE.sub("_", name)
    lowered = safe.lower()
    unit, divisor = "1", 1.0
    for suffix, per_second in _DURATION_SUFFIXES:
        if lowered.endswith(suffix) and len(safe) > len(suffix):
            safe, unit, divisor = safe[: -len(suffix)], "s", per_second
            break
    room = _MAX_INSTRUMENT_NAME - len(c.METRIC_LOG_METRIC_PREFIX)
    if len(safe) > room:  # cut, with a digest of the whole name: two long names stay two
        safe = f"{safe[: room - 9]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return c.METRIC_LOG_METRIC_PREFIX + (safe or "unnamed"), unit, divisor


def log_metric_point(agent_id: str, metric: LogMetric, span: SpanRecord) -> MetricPoint:
    """Numeric values -> a histogram per name; strings -> a counter per name, value as an
    attribute (bounded later by the recorder)."""
    instrument, unit, divisor = log_metric_instrument(metric.name)
    agent: dict[str, str | bool | int] = {c.METRIC_ATTR_AGENT_ID: agent_id}
    name = cap_bytes(metric.name, MAX_NAME_BYTES)[0]  # the description is on every /metrics page
    if isinstance(metric.value, str):
        return _point(instrument, InstrumentKind.COUNTER, "1",
                      f"LogMetric {name!r} (string values)", 1,
                      {**agent, c.METRIC_ATTR_LOG_VALUE: metric.value}, span)  # fmt: skip
    return _point(instrument, InstrumentKind.HISTOGRAM, unit, f"LogMetric {name!r}",
                  float(metric.value) / divisor, agent, span)  # fmt: skip


def call_level_points(call: AgentCall, root: SpanRecord) -> list[MetricPoint]:
    """Points of the call itself: only for a final call (one with an outcome)."""
    if not call.is_final:
        return []
    base: dict[str, str | bool | int] = {
        c.METRIC_ATTR_AGENT_ID: call.agent_id,
        c.METRIC_ATTR_STATUS: call.status,
        c.METRIC_ATTR_DEPLOYMENT_ID: deployment_label(call.deployment_id),
    }
    points = [_point(c.METRIC_CALLS, InstrumentKind.COUNTER, "{call}", "Calls by outcome", 1,
                     {**base, c.METRIC_ATTR_END_REASON: call.end_reason or "unknown"}, root)]  # fmt: skip
    if call.start_time is not None and call.end_time is not None and call.end_time >= call.start_time:
        points.append(_point(c.METRIC_CALL_DURATION, InstrumentKind.HISTOGRAM, "s",
                             "Call duration as reported (end_time - start_time)",
                             (call.end_time - call.start_time) / 1e9, base, root))  # fmt: skip
    return points


def map_call_points(call: AgentCall, spans: CallSpans) -> list[MetricPoint]:
    points = call_level_points(call, spans.root)
    tools_by_parent: dict[int, list[SpanRecord]] = {}
    for tool in spans.tools:
        tools_by_parent.setdefault(tool.parent_span_id or 0, []).append(tool)
    for index, item in enumerate(call.transcript):
        turn = spans.by_item.get(index)
        if turn is not None:
            points.extend(turn_points(spans.ctx, item, [turn, *tools_by_parent.get(turn.span_id, [])]))
        elif item.log_metric is not None and index in spans.log_metric_spans:
            points.append(log_metric_point(call.agent_id, item.log_metric, spans.log_metric_spans[index]))
    return points
