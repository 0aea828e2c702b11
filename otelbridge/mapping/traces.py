"""A validated call in, its spans out: pure, no I/O, no clock.

Shape of a trace (ids from :mod:`otelbridge.mapping.ids`):

    invoke_agent {agent}                      root, call start..end
    ├── assistant_turn / user_turn            call start + turn offsets; overlap is normal
    │   ├── events: text chunks, first byte, log events/metrics in progress during the turn
    │   └── execute_tool {name}               one per tool call, at the turn start
    └── events: log events/metrics outside any turn

Bad timing never raises: it is clamped, and the span gets ``otelbridge.time_adjusted=true``
plus ``otelbridge.time_adjustments`` naming each correction. Differences under one
millisecond (float noise between Cartesia's rounded chunk times and turn times) are clamped
silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from otelbridge.cartesia.models import AgentCall, TranscriptItem
from otelbridge.cartesia.timestamps import MAX_OFFSET_S, offset_to_ns
from otelbridge.mapping import conventions as c
from otelbridge.mapping import ids
from otelbridge.mapping.latency import TurnTiming, response_latencies, spoken_timings
from otelbridge.mapping.policy import (
    MAX_NAME_BYTES,
    NAME_CUT,
    AttributeSink,
    MappingOptions,
    TextPolicy,
    bounded_name,
    cap_bytes,
    to_text,
)
from otelbridge.mapping.records import Attributes, EventRecord, SpanRecord, event_time

_TOLERANCE_NS: Final = 1_000_000  # 1 ms
#: a turn's ``text`` when Cartesia sent its words only in the text chunks
_TEXT_PLACEHOLDER: Final = "-"


class UnplaceableCallError(ValueError):
    """The call has no start time, no end time and no event time to derive one from."""


@dataclass(slots=True)
class CallContext:
    """What every span of one call shares. ``start_ns`` is the anchor turn offsets add to."""

    call_id: str
    agent_id: str
    agent_name: str | None
    start_ns: int
    options: MappingOptions
    deployment_id: str | None = None
    trace_id: int = 0
    root_span_id: int = 0
    #: operation -> the common attributes (capped) and their cuts, built once per call
    _common: dict[str, AttributeSink] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.trace_id = ids.trace_id(self.call_id)
        self.root_span_id = ids.root_span_id(self.call_id)

    def sink(self, operation: str) -> AttributeSink:
        """A span's attribute sink holding what every span of the call carries (capped)."""
        common = self._common.get(operation)
        if common is None:
            common = self._common[operation] = AttributeSink(self.options)
            common.put(c.GEN_AI_CONVERSATION_ID, self.call_id)
            common.put(c.GEN_AI_OPERATION_NAME, operation)
            common.put(c.GEN_AI_PROVIDER_NAME, c.PROVIDER_NAME)
            common.put(c.GEN_AI_AGENT_ID, self.agent_id)
            if self.agent_name:
                common.put(c.GEN_AI_AGENT_NAME, self.agent_name)
        sink = AttributeSink(self.options, dict(common.attributes))
        sink.truncated.extend(common.truncated)
        return sink


@dataclass(slots=True)
class _Adjustments:
    reasons: list[str] = field(default_factory=list)

    def note(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    def apply(self, span: SpanRecord) -> None:
        if self.reasons:
            span.attributes[c.TIME_ADJUSTED] = True
            span.attributes[c.TIME_ADJUSTMENTS] = list(self.reasons)


def _offset(seconds: float, adjust: _Adjustments, what: str) -> float:
    if seconds < 0:
        adjust.note(f"{what}_negative")
        return 0.0
    if seconds > MAX_OFFSET_S:
        adjust.note(f"{what}_out_of_range")
        return MAX_OFFSET_S
    return seconds


def _clamp(t_ns: int, lo: int, hi: int, adjust: _Adjustments, reason: str) -> tuple[int, bool]:
    """Clamp into [lo, hi]; note ``reason`` when the move exceeds the tolerance."""
    if t_ns < lo:
        moved = lo - t_ns
        t_ns = lo
    elif t_ns > hi:
        moved = t_ns - hi
        t_ns = hi
    else:
        return t_ns, False
    if moved > _TOLERANCE_NS:
        adjust.note(reason)
        return t_ns, True
    return t_ns, False


def turn_span_name(role: str, truncated: list[str]) -> str:
    if role == "user":
        return c.SPAN_USER_TURN
    if role == "assistant":
        return c.SPAN_ASSISTANT_TURN
    return bounded_name(c.SPAN_TURN_PREFIX, role, truncated)


def turn_operation(role: str) -> str:
    return c.OPERATION_USER_TURN if role == "user" else c.OPERATION_ASSISTANT_TURN


def spoken_words(item: TranscriptItem) -> str | None:
    """What a turn said, as OpenInference's input/output carry it: its ``text``, or when that is
    missing, blank or Cartesia's ``"-"`` placeholder, its text chunks joined; None without words."""
    text = item.text
    if text is not None and text.strip() not in ("", _TEXT_PLACEHOLDER):
        return text
    joined = "".join(chunk.get("text", "") for chunk in item.text_chunks).strip()
    return joined or None


def first_user_words(call: AgentCall) -> str | None:
    """The words of the call's earliest user turn that has any (the root's ``input.value``); of
    two starting together, the first in the transcript."""
    first: tuple[float, str] | None = None
    for item in call.transcript:
        if item.role != "user":
            continue
        words = spoken_words(item)
        if words is not None and (first is None or item.start_timestamp < first[0]):
            first = (item.start_timestamp, words)
    return first[1] if first is not None else None


def openinference_text(sink: AttributeSink, key: str, mime_key: str, value: str | None, mime: str) -> None:
    """An OpenInference ``input.value`` / ``output.value`` under the text policy and the byte cap
    (every cut listed), with its MIME type when the value is exported."""
    sink.text(key, value)
    if key in sink.attributes:
        sink.put(mime_key, mime)


def map_turn(
    ctx: CallContext, item: TranscriptItem, occurrence: int = 1, response_latency: float | None = None
) -> list[SpanRecord]:
    """One spoken turn -> its span (first) and its tool-call spans. Used alike for a turn
    arriving alone in a ``call_turn`` webhook and for a turn of a whole transcript;
    ``response_latency`` is the turn's (:mod:`otelbridge.mapping.latency`), if it has one."""
    adjust = _Adjustments()
    start_off = _offset(item.start_timestamp, adjust, "start")
    if item.end_timestamp is None:
        adjust.note("end_missing")
        end_off = start_off
    else:
        end_off = _offset(item.end_timestamp, adjust, "end")
        if end_off < start_off:
            adjust.note("end_before_start")
            end_off = start_off
    start_ns = ctx.start_ns + offset_to_ns(start_off)
    end_ns = ctx.start_ns + offset_to_ns(end_off)

    key = ids.turn_key(item.role, item.start_timestamp, occurrence)
    sink = ctx.sink(turn_operation(item.role))
    span = SpanRecord(
        key=key,
        name=turn_span_name(item.role, sink.truncated),
        trace_id=ctx.trace_id,
        span_id=ids.span_id(ctx.call_id, key),
        parent_span_id=ctx.root_span_id,
        start_ns=start_ns,
        end_ns=end_ns,
        attributes=sink.attributes,
    )
    sink.put(c.TURN_ROLE, item.role)
    sink.put(c.TURN_START_OFFSET, item.start_timestamp)
    sink.text(c.TURN_TEXT, item.text)
    sink.put(c.TURN_END_REASON, item.end_reason)
    interrupted = item.was_interrupted
    if interrupted is None and item.end_reason is not None:
        interrupted = item.end_reason == "interrupted"
    sink.put(c.TURN_INTERRUPTED, interrupted)
    sink.put(c.TURN_VAD_BUFFER_MS, item.vad_buffer_ms)
    sink.put(c.TTS_TTFB, item.tts_ttfb)
    sink.put(c.STT_TTFB, item.stt_ttfb)
    sink.put(c.TURN_RESPONSE_LATENCY, response_latency)
    sink.put(c.DEPLOYMENT_ID, ctx.deployment_id)
    sink.put(c.OI_SPAN_KIND, c.OI_KIND_CHAIN)
    # the caller's words are the agent's input; every other speaker's, its output
    if item.role == "user":
        openinference_text(sink, c.OI_INPUT_VALUE, c.OI_INPUT_MIME_TYPE, spoken_words(item), c.MIME_TEXT)
    else:
        openinference_text(sink, c.OI_OUTPUT_VALUE, c.OI_OUTPUT_MIME_TYPE, spoken_words(item), c.MIME_TEXT)

    if ctx.options.text_chunk_events:
        _text_chunk_events(ctx, item, span, adjust)
    for ttfb, name, attr in (
        (item.tts_ttfb, c.EVENT_TTS_FIRST_BYTE, c.TTS_TTFB),
        (item.stt_ttfb, c.EVENT_STT_FIRST_BYTE, c.STT_TTFB),
    ):
        if ttfb is None:
            continue
        at, moved = _clamp(
            start_ns + offset_to_ns(_offset(ttfb, adjust, "ttfb")),
            start_ns,
            end_ns,
            adjust,
            "first_byte_after_turn_end",
        )
        event_attrs: Attributes = {attr: ttfb}
        if moved:
            event_attrs[c.TIME_ADJUSTED] = True
        span.events.append(EventRecord(name, at, event_attrs))
    span.events.sort(key=event_time)
    _finish(span, sink, adjust)

    spans = [span]
    seen_tools: dict[str, int] = {}
    for tool in item.tool_calls:
        seen_tools[tool.id] = seen_tools.get(tool.id, 0) + 1
        key = ids.tool_key(span.key, tool.id, seen_tools[tool.id])
        spans.append(_tool_span(ctx, span, key, tool.id, tool.name, tool.arguments, tool.result))
    return spans


def _text_chunk_events(
    ctx: CallContext, item: TranscriptItem, span: SpanRecord, adjust: _Adjustments
) -> None:
    """The turn's ``cartesia.text_chunk`` events, clamped into it, their text under the policy."""
    # A turn has dozens of chunks: short text kept as it is needs no sink, a time inside the
    # turn no clamp (chunks stamped past the turn's end are common, so both are decided apart).
    options = ctx.options
    plain = options.text_policy is TextPolicy.KEEP
    short = options.max_attribute_bytes // 4
    lo, hi, base = span.start_ns, span.end_ns, ctx.start_ns
    events = span.events
    for index, chunk in enumerate(item.text_chunks):
        offset = chunk["start_timestamp"]
        if not 0 <= offset <= MAX_OFFSET_S:
            offset = _offset(offset, adjust, "text_chunk")
        at = base + offset_to_ns(offset)
        moved = False
        if not lo <= at <= hi:
            at, moved = _clamp(at, lo, hi, adjust, "text_chunk_outside_turn")
        text = chunk.get("text", "")
        attrs: Attributes
        if plain and len(text) <= short:
            attrs = {c.CHUNK_INDEX: index, c.CHUNK_TEXT: text}
        else:
            attrs = {c.CHUNK_INDEX: index}
            event_sink = AttributeSink(options, attrs)
            event_sink.text(c.CHUNK_TEXT, text)
            event_sink.list_cuts()  # every cut is listed, on the event that holds it
        if moved:
            attrs[c.TIME_ADJUSTED] = True
        events.append(EventRecord(c.EVENT_TEXT_CHUNK, at, attrs))


def _tool_span(
    ctx: CallContext,
    turn: SpanRecord,
    key: str,
    tool_call_id: str,
    tool_name: str,
    arguments: dict[str, Any],
    result: Any,
) -> SpanRecord:
    sink = ctx.sink(c.OPERATION_EXECUTE_TOOL)
    span = SpanRecord(
        key=key,
        name=bounded_name(c.SPAN_TOOL, tool_name, sink.truncated),
        trace_id=ctx.trace_id,
        span_id=ids.span_id(ctx.call_id, key),
        parent_span_id=turn.span_id,
        # Cartesia reports no tool timing: the span is an instant at its turn's start.
        start_ns=turn.start_ns,
        end_ns=turn.start_ns,
        attributes=sink.attributes,
    )
    sink.put(c.GEN_AI_TOOL_NAME, tool_name)
    sink.put(c.GEN_AI_TOOL_CALL_ID, tool_call_id)
    sink.put(c.GEN_AI_TOOL_TYPE, "function")
    sink.put(c.GEN_AI_TOOL_CALL_ARGUMENTS, to_text(arguments))
    if result is not None:
        sink.put(c.GEN_AI_TOOL_CALL_RESULT, to_text(result))
    sink.put(c.DEPLOYMENT_ID, ctx.deployment_id)
    sink.put(c.OI_SPAN_KIND, c.OI_KIND_TOOL)
    openinference_text(sink, c.OI_INPUT_VALUE, c.OI_INPUT_MIME_TYPE, to_text(arguments), c.MIME_JSON)
    if result is not None:
        mime = c.MIME_TEXT if isinstance(result, str) else c.MIME_JSON
        openinference_text(sink, c.OI_OUTPUT_VALUE, c.OI_OUTPUT_MIME_TYPE, to_text(result), mime)
    _finish(span, sink, _Adjustments())
    return span


def _finish(span: SpanRecord, sink: AttributeSink, adjust: _Adjustments) -> None:
    adjust.apply(span)
    span.dropped_attributes = sink.dropped
    sink.list_cuts()


def call_anchor(
    call: AgentCall, fallback_end_ns: int | None = None, known_turns: Iterable[TurnTiming] = ()
) -> tuple[int, int, list[str]]:
    """(start_ns, end_ns, adjustments) of the root span.

    A missing start is derived from the end (or from ``fallback_end_ns``, the time of the
    event that reported the call) minus the last transcript offset; a missing or early end is
    stretched to cover the transcript, and the turns learnt apart from it (``known_turns``,
    streamed ones the end's transcript may lack), as if they were in it.
    """
    adjust = _Adjustments()
    last_ns = 0
    for item in call.transcript:
        for value in (item.start_timestamp, item.end_timestamp):
            if value is not None and value > 0:
                last_ns = max(last_ns, offset_to_ns(min(value, MAX_OFFSET_S)))
    max_us = int(MAX_OFFSET_S * 1_000_000)
    for turn in known_turns:
        for us in (turn.start_us, turn.end_us):
            if us is not None and us > 0:
                last_ns = max(last_ns, min(us, max_us) * 1000)
    start, end = call.start_time, call.end_time
    if start is None:
        if end is None:
            if fallback_end_ns is None:
                raise UnplaceableCallError(
                    f"call {call.id}: no start_time or end_time, so it cannot be placed in time"
                )
            end = fallback_end_ns
            adjust.note("end_from_event_time")
        start = max(0, end - last_ns)
        adjust.note("start_derived")
    if end is None:
        end = start + last_ns
        adjust.note("end_missing")
    elif end < start:
        end = start + last_ns
        adjust.note("end_before_start")
    if start + last_ns > end + _TOLERANCE_NS:
        end = start + last_ns
        adjust.note("transcript_after_end")
    return start, max(end, start + last_ns), adjust.reasons


def root_span(
    ctx: CallContext,
    call: AgentCall,
    end_ns: int,
    adjustments: list[str],
    known_turns: Sequence[TurnTiming] = (),
) -> SpanRecord:
    """The call's span; ``known_turns`` (streamed, maybe missing from the end's transcript)
    count among its turns."""
    sink = ctx.sink(c.OPERATION_INVOKE_AGENT)
    span = SpanRecord(
        key=ids.root_key(),
        name=bounded_name(c.SPAN_CALL, call.agent_name or "", sink.truncated),
        trace_id=ctx.trace_id,
        span_id=ctx.root_span_id,
        parent_span_id=None,
        start_ns=ctx.start_ns,
        end_ns=end_ns,
        attributes=sink.attributes,
    )
    sink.put(c.CALL_ID, call.id)
    sink.put(c.AGENT_ID, call.agent_id)
    sink.put(c.AGENT_NAME, call.agent_name)
    sink.put(c.CALL_STATUS, call.status)
    sink.put(c.CALL_END_REASON, call.end_reason)
    sink.put(c.CALL_ERROR_MESSAGE, call.error_message)
    sink.put(c.CALL_SUMMARY, call.summary)
    turn_count = sum(1 for t in call.transcript if not t.is_system)
    if known_turns:
        heard = {(t.role, t.start_us) for t in spoken_timings(call.transcript)}
        turn_count += len({(t.role, t.start_us) for t in known_turns} - heard)
    sink.put(c.CALL_TURN_COUNT, turn_count)
    sink.put(c.DEPLOYMENT_ID, call.deployment_id)
    sink.put(c.DEPLOYMENT_VERSION_ID, call.deployment_version_id)
    sink.put(c.DEPLOYMENT_REGION, call.deployment_region)
    sink.put(c.CALL_ZDR_ENABLED, call.zdr_enabled)
    sink.put(c.CALL_REDACTED_AT, call.redacted_at)
    sink.put(c.TELEPHONY_ACCOUNT_TYPE, call.telephony_account_type)
    tel = call.telephony_params
    if tel is not None:
        sink.phone(c.TELEPHONY_FROM, tel.from_)
        sink.phone(c.TELEPHONY_TO, tel.to)
        sink.put(c.TELEPHONY_DIRECTION, tel.direction)
        sink.put(c.TELEPHONY_CALL_SID, tel.call_sid)
        sink.put(c.TELEPHONY_CONNECTION_TYPE, tel.connection_type)
    sink.flatten(c.CALL_METADATA_PREFIX, call.metadata)
    sink.put(c.CONTRACT, c.CONTRACT_VERSION)
    if call.status == "failed":
        span.error = call.error_message or call.end_reason or "call failed"
        sink.put(c.ERROR_TYPE, call.end_reason or "call_failed")
    _root_openinference(sink, call)
    adjust = _Adjustments(list(adjustments))
    _finish(span, sink, adjust)
    return span


def _root_openinference(sink: AttributeSink, call: AgentCall) -> None:
    """The root's OpenInference attributes: the conversation's first words in, its summary out,
    the call as the session, the caller as the user, and the call's facts as metadata."""
    sink.put(c.OI_SPAN_KIND, c.OI_KIND_AGENT)
    openinference_text(sink, c.OI_INPUT_VALUE, c.OI_INPUT_MIME_TYPE, first_user_words(call), c.MIME_TEXT)
    openinference_text(sink, c.OI_OUTPUT_VALUE, c.OI_OUTPUT_MIME_TYPE, call.summary, c.MIME_TEXT)
    sink.put(c.OI_SESSION_ID, call.id)
    tel = call.telephony_params
    if tel is not None:
        # the person on the line: the callee of an outbound call, else the caller
        sink.phone(c.OI_USER_ID, tel.to if tel.direction == "outbound" else tel.from_)
    sink.put(c.OI_METADATA, _metadata_json(sink, call))


def _metadata_json(sink: AttributeSink, call: AgentCall) -> str | None:
    """OpenInference's ``metadata``: a JSON object of the deployment id and end reason (under their
    contract names) and the call's metadata keys as they are (ours win a clash). When it would pass
    the byte cap, only the deployment and end reason, valid JSON still, with the cut listed."""
    ours: dict[str, Any] = {}
    if call.deployment_id is not None:
        ours[c.DEPLOYMENT_ID] = call.deployment_id
    if call.end_reason is not None:
        ours[c.CALL_END_REASON] = call.end_reason
    whole = {**ours, **{k: v for k, v in call.metadata.items() if k not in ours}}
    if not whole:
        return None
    text = to_text(whole)
    if len(whole) > len(ours) and len(text.encode()) > sink.options.max_attribute_bytes:
        sink.truncated.append(c.OI_METADATA)
        text = to_text(ours)
    return text  # put() still caps it (and lists the cut) should even that pass the cap


def _log_event(ctx: CallContext, item: TranscriptItem) -> tuple[EventRecord, float]:
    """(span event, offset seconds) of a system item; the event's time is for the caller to set."""
    attrs: Attributes = {}
    sink = AttributeSink(ctx.options, attrs)
    if item.log_metric is not None:
        metric = item.log_metric
        sink.put(c.LOG_METRIC_NAME, metric.name)
        sink.put(c.LOG_METRIC_VALUE, metric.value)
        offset = metric.timestamp if metric.timestamp is not None else item.start_timestamp
        sink.list_cuts()
        return EventRecord(c.EVENT_LOG_METRIC, 0, attrs), offset
    event = item.log_event
    assert event is not None
    sink.put(c.LOG_EVENT, event.event)
    metadata = dict(event.metadata)
    # LogMessage(name, level, message, metadata) nests level/message/metadata.
    for key, attr in (("level", c.LOG_LEVEL), ("message", c.LOG_MESSAGE)):
        if isinstance(metadata.get(key), str):
            sink.put(attr, metadata.pop(key))
    nested = metadata.get("metadata")
    if isinstance(nested, str) and nested.startswith("{"):
        try:
            decoded = json.loads(nested)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than json recurses
            decoded = None
        if isinstance(decoded, dict):
            metadata["metadata"] = nested = decoded
    if isinstance(nested, dict) and (c.LOG_LEVEL in attrs or c.LOG_MESSAGE in attrs):
        metadata.pop("metadata")
        metadata = {**nested, **metadata}
    sink.flatten(c.LOG_METADATA_PREFIX, metadata)
    name, cut = cap_bytes(event.event or "cartesia.log_event", MAX_NAME_BYTES)
    if cut:
        sink.truncated.append(NAME_CUT)
    sink.list_cuts()
    offset = event.timestamp if event.timestamp is not None else item.start_timestamp
    return EventRecord(name, 0, attrs, sink.dropped), offset


def _span_in_progress(turns: list[SpanRecord], at_ns: int, root: SpanRecord) -> SpanRecord:
    """The turn whose time range holds ``at_ns`` (the latest-started on overlap), else root."""
    best: SpanRecord | None = None
    for span in turns:
        if span.start_ns <= at_ns <= span.end_ns and (best is None or span.start_ns >= best.start_ns):
            best = span
    return best if best is not None else root


@dataclass(slots=True)
class CallSpans:
    ctx: CallContext
    root: SpanRecord
    turns: list[SpanRecord]
    #: (turn or tool span) per transcript item index, for the metric mapping
    by_item: dict[int, SpanRecord]
    tools: list[SpanRecord]
    #: (log-metric transcript index, span it was attached to)
    log_metric_spans: dict[int, SpanRecord]
    #: every event made from a system item: (transcript index, span it is on, the event)
    log_events: list[tuple[int, SpanRecord, EventRecord]] = field(default_factory=list)

    def all(self) -> list[SpanRecord]:
        return [self.root, *self.turns, *self.tools]


def map_call_spans(
    call: AgentCall,
    options: MappingOptions,
    fallback_end_ns: int | None = None,
    known_turns: Iterable[TurnTiming] = (),
) -> CallSpans:
    """``known_turns``: turns of the call learnt apart from its transcript (streamed ones): they
    count among the root's turns and are within it, and can precede a transcript turn for its
    response latency."""
    known_turns = list(known_turns)
    start_ns, end_ns, adjustments = call_anchor(call, fallback_end_ns, known_turns)
    ctx = CallContext(call.id, call.agent_id, call.agent_name, start_ns, options, call.deployment_id)
    root = root_span(ctx, call, end_ns, adjustments, known_turns)
    latencies = response_latencies(call.transcript, known_turns)
    turns: list[SpanRecord] = []
    tools: list[SpanRecord] = []
    by_item: dict[int, SpanRecord] = {}
    occurrences: dict[str, int] = {}
    for index, item in enumerate(call.transcript):
        if item.is_system:
            continue
        base = ids.turn_key(item.role, item.start_timestamp)
        occurrences[base] = occurrences.get(base, 0) + 1
        turn, *turn_tools = map_turn(ctx, item, occurrences[base], latencies.get(index))
        turns.append(turn)
        tools.extend(turn_tools)
        by_item[index] = turn
    log_metric_spans: dict[int, SpanRecord] = {}
    log_events: list[tuple[int, SpanRecord, EventRecord]] = []
    for index, item in enumerate(call.transcript):
        if not item.is_system or (item.log_event is None and item.log_metric is None):
            continue
        event, offset = _log_event(ctx, item)
        adjust = _Adjustments()
        at = start_ns + offset_to_ns(_offset(offset, adjust, "log"))
        at, moved = _clamp(at, root.start_ns, root.end_ns, adjust, "log_outside_call")
        if moved or adjust.reasons:
            event.attributes[c.TIME_ADJUSTED] = True
        event.time_ns = at
        target = _span_in_progress(turns, at, root)
        target.events.append(event)
        log_events.append((index, target, event))
        if item.log_metric is not None:
            log_metric_spans[index] = target
    for span in turns:
        span.events.sort(key=event_time)
    root.events.sort(key=event_time)
    return CallSpans(ctx, root, turns, by_item, tools, log_metric_spans, log_events)
