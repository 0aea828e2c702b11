"""Property tests: arbitrary (but model-valid) Cartesia call payloads through parse -> map ->
SDK -> OTLP encoding.

The payloads are raw dicts as Cartesia (or a hand-edited replay file) could send them:
unicode ids, negative, huge and float-noisy offsets, ends before starts, missing ends, text
chunks anywhere, LogEvents with nested metadata, LogMetrics of every value type, repeated
tool-call ids, unknown fields, RFC 3339 times with 0-9 fractional digits and any offset.
Text never holds lone surrogates: every input path parses JSON text, which cannot carry them.
Integers stay within int64: the SDK's OTLP encoder drops (and logs) an attribute beyond that,
which the check that every attribute reaches the wire would report.
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import ValidationError

from otelbridge.cartesia.models import AgentCall, parse_call
from otelbridge.mapping import MappedCall, MappingOptions, TextPolicy, UnplaceableCallError, ids, map_call
from otelbridge.mapping import conventions as c
from otelbridge.mapping.latency import response_latencies
from otelbridge.mapping.records import SpanRecord
from otelbridge.mapping.traces import CallContext, map_turn
from tests.support.sdk_reference import build_resource, encode_trace_request, to_readable_spans

PROPERTY_SETTINGS: Final = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
RESOURCE: Final = build_resource("otelbridge-properties", "hypothesis")
#: the largest Unix time in nanoseconds that a signed 64-bit integer holds (2262-04-11)
MAX_NS: Final = 2**63 - 1
#: marks a call id in the metric-attribute test; no other generated text contains it
MARK: Final = "\u2063"
#: JSON text nested deeper than the json module recurses (LogMessage metadata travels as a string)
DEEP_JSON: Final = '{"a":' * 20_000 + "1" + "}" * 20_000

# --- strategies ---------------------------------------------------------------------------

_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
_chars = st.characters(exclude_categories=_SURROGATES, exclude_characters=MARK)
#: mostly short; sometimes long enough to meet the attribute byte cap (64 to 4096 bytes)
text = st.text(_chars, max_size=12) | st.text(_chars, min_size=100, max_size=1200)
ids_text = st.text(_chars, min_size=1, max_size=24)
int64 = st.integers(-(2**63), 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)

offsets = st.one_of(
    st.floats(min_value=-5.0, max_value=120.0, allow_nan=False),
    # Cartesia's float noise: 10.387875000000001 for 10.387875 (and sub-millisecond jitter)
    st.builds(
        lambda ms, noise: ms / 1000 + noise,
        st.integers(-2_000, 120_000),
        st.sampled_from([0.0, 1e-15, -1e-15, 2e-12, 4e-7, -4e-7, 0.0005, -0.0005]),
    ),
    st.integers(-1_000_000, 1_000_000),
    finite,  # anything: 1e308, -1e-300, 5e-324...
)

json_values = st.recursive(
    st.none() | st.booleans() | int64 | finite | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(text, json_values, max_size=4)
#: unknown fields: a prefix that no Cartesia field (or pydantic attribute) has
unknown_fields = st.dictionaries(st.text(_chars, max_size=8).map(lambda k: f"x_{k}"), json_values, max_size=2)


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    """1971..2261 (inside 0..2**63 ns whatever the offset), 0-9 fraction digits, Z or +-HH:MM."""
    year = draw(st.integers(1971, 2261))
    month, day = draw(st.integers(1, 12)), draw(st.integers(1, 28))
    hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 60))
    digits = draw(st.integers(0, 9))
    fraction = "." + "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=digits, max_size=digits)))
    offset = draw(
        st.sampled_from(["Z", "z"])
        | st.builds(
            lambda s, h, m: f"{s}{h:02d}:{m:02d}",
            st.sampled_from("+-"),
            st.integers(0, 23),
            st.integers(0, 59),
        )
    )
    sep = draw(st.sampled_from("Tt "))
    date = f"{year:04d}-{month:02d}-{day:02d}"
    clock = f"{hour:02d}:{minute:02d}:{second:02d}"
    return f"{date}{sep}{clock}{fraction if digits else ''}{offset}"


def _optional(draw: st.DrawFn, target: dict[str, Any], key: str, strategy: st.SearchStrategy[Any]) -> None:
    """Leave ``key`` out, set it to null, or set it to a drawn value."""
    choice = draw(st.sampled_from(["absent", "null", "value", "value"]))
    if choice == "null":
        target[key] = None
    elif choice == "value":
        target[key] = draw(strategy)


tool_calls = st.fixed_dictionaries(
    {"id": st.sampled_from(["call_1", "call_2", ""]) | ids_text, "name": text},
    optional={
        "arguments": st.none() | st.dictionaries(text, text | json_values, max_size=3),
        "result": json_values,
        "duration_ms": st.integers(0, 10_000),  # unknown to the models
    },
)
text_chunks = st.fixed_dictionaries(
    {"text": text, "start_timestamp": offsets}, optional={"confidence": finite}
)


@st.composite
def spoken_turn(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["user", "assistant"]) | ids_text.filter(lambda r: r != "system"))
    item: dict[str, Any] = {"role": role, "start_timestamp": draw(offsets)}
    _optional(draw, item, "end_timestamp", offsets)
    _optional(draw, item, "text", st.sampled_from(["-", ""]) | text)
    _optional(draw, item, "text_chunks", st.lists(text_chunks, max_size=4))
    _optional(draw, item, "tool_calls", st.lists(tool_calls, max_size=3))
    _optional(
        draw, item, "end_reason", st.sampled_from(["tts_completed", "interrupted", "call_ended"]) | text
    )
    _optional(draw, item, "was_interrupted", st.booleans())
    _optional(draw, item, "vad_buffer_ms", st.integers(-1, 10_000) | int64)
    _optional(draw, item, "tts_ttfb", offsets)
    _optional(draw, item, "stt_ttfb", offsets)
    item.update(draw(unknown_fields))
    return item


log_message_metadata = st.fixed_dictionaries(
    {},
    optional={
        "level": st.sampled_from(["info", "error"]) | json_values,
        "message": text | json_values,
        "metadata": json_objects
        | json_objects.map(json.dumps)
        | st.sampled_from(["{not json", DEEP_JSON])
        | json_values,
    },
).flatmap(lambda nested: json_objects.map(lambda extra: {**extra, **nested}))


@st.composite
def system_item(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(offsets)
    item: dict[str, Any] = {"role": "system", "start_timestamp": start}
    _optional(draw, item, "end_timestamp", st.just(start) | offsets)
    kind = draw(st.sampled_from(["event", "metric", "both", "neither"]))
    if kind in ("event", "both"):
        event: dict[str, Any] = {"event": text, "metadata": st.none() | json_objects | log_message_metadata}
        item["log_event"] = draw(st.fixed_dictionaries(event, optional={"timestamp": st.none() | offsets}))
    if kind in ("metric", "both"):
        metric: dict[str, Any] = {"name": text, "value": int64 | finite | text | st.booleans()}
        item["log_metric"] = draw(st.fixed_dictionaries(metric, optional={"timestamp": st.none() | offsets}))
    item.update(draw(unknown_fields))
    return item


phone = st.sampled_from(["+14155558245", "+1 (628) 555-8199", "websocket", "sip:agent@example.com"]) | text
telephony = st.fixed_dictionaries(
    {},
    optional={
        "to": st.none() | phone,
        "from": st.none() | phone,
        "call_sid": text,
        "direction": st.sampled_from(["inbound", "outbound"]),
        "connection_type": text,
        "x_carrier": text,
    },
)


@st.composite
def call_payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": draw(ids_text),
        "agent_id": draw(ids_text),
        "status": draw(
            st.sampled_from(["active", "created", "started", "completed", "failed", "cancelled"]) | text
        ),
    }
    _optional(draw, payload, "start_time", rfc3339())
    _optional(draw, payload, "end_time", rfc3339())
    _optional(draw, payload, "transcript", st.lists(spoken_turn() | system_item(), max_size=8))
    _optional(draw, payload, "agent_name", text)
    _optional(draw, payload, "end_reason", st.sampled_from(["agent_hangup", "error", "interrupted"]) | text)
    _optional(draw, payload, "error_message", text)
    _optional(draw, payload, "summary", text)
    _optional(draw, payload, "telephony_params", telephony)
    _optional(draw, payload, "metadata", json_objects)
    _optional(draw, payload, "deployment_id", ids_text)
    _optional(draw, payload, "zdr_enabled", st.booleans())
    payload.update(draw(unknown_fields))
    return payload


fallbacks = st.none() | st.integers(0, MAX_NS) | st.sampled_from([0, MAX_NS])

# --- checks -------------------------------------------------------------------------------


def _encode(mapped: MappedCall) -> bytes:
    return bytes(encode_trace_request(to_readable_spans(mapped.spans, RESOURCE)).SerializeToString())


def _check_trace(call: AgentCall, mapped: MappedCall) -> None:
    spans = mapped.spans
    trace_id = ids.trace_id(call.id)
    assert mapped.trace_id == trace_id and mapped.call_id == call.id
    span_ids = [s.span_id for s in spans]
    assert all(s.trace_id == trace_id for s in spans)
    assert all(0 < i < 2**64 for i in span_ids)
    assert len(set(span_ids)) == len(span_ids)
    roots = [s for s in spans if s.parent_span_id is None]
    assert len(roots) == 1
    (root,) = roots
    assert root.span_id == ids.root_span_id(call.id)
    for span in spans:
        assert span.parent_span_id is None or span.parent_span_id in span_ids
        assert 0 <= span.start_ns <= span.end_ns < 2**64
        assert root.start_ns <= span.start_ns and span.end_ns <= root.end_ns
        for event in span.events:
            assert span.start_ns <= event.time_ns <= span.end_ns
    # root, then one span per spoken turn (its child), then the tool calls (children of their turn)
    spoken = [t for t in call.transcript if not t.is_system]
    turns = spans[1 : 1 + len(spoken)]
    tools = spans[1 + len(spoken) :]
    assert spans[0] is root and len(tools) == sum(len(t.tool_calls) for t in spoken)
    for item, turn in zip(spoken, turns, strict=True):
        assert not turn.name.startswith((c.SPAN_TOOL, c.SPAN_CALL)) and turn.parent_span_id == root.span_id
        children = [t for t in tools if t.parent_span_id == turn.span_id]
        reported = [t.id for t in item.tool_calls]
        assert [t.attributes[c.GEN_AI_TOOL_CALL_ID] for t in children] == reported
        assert all(
            t.name.startswith(c.SPAN_TOOL) and t.start_ns == t.end_ns == turn.start_ns for t in children
        )
    assert (root.error is not None) == (call.status == "failed")

    decoded = ExportTraceServiceRequest.FromString(_encode(mapped))
    sent = [s for rs in decoded.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(sent) == len(spans)
    for record, proto in zip(spans, sent, strict=True):
        assert int.from_bytes(proto.span_id, "big") == record.span_id
        assert len(proto.attributes) == len(record.attributes)  # nothing dropped by the encoder
        assert (proto.start_time_unix_nano, proto.end_time_unix_nano) == (record.start_ns, record.end_ns)


def _check_points(mapped: MappedCall) -> None:
    by_id = {s.span_id: s for s in mapped.spans}
    for point in mapped.points:
        assert point.span_id in by_id
        assert point.trace_id == mapped.trace_id
        assert by_id[point.span_id].key == point.span_key


# --- properties ---------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(payload=call_payloads(), fallback=fallbacks)
def test_every_valid_call_maps_to_one_well_formed_encodable_trace(
    payload: dict[str, Any], fallback: int | None
) -> None:
    call = parse_call(payload)
    if call.start_time is None and call.end_time is None and fallback is None:
        with pytest.raises(UnplaceableCallError):
            map_call(call)
        fallback = 1_776_301_717_000_000_000
    mapped = map_call(call, fallback_end_ns=fallback)
    _check_trace(call, mapped)
    _check_points(mapped)


@PROPERTY_SETTINGS
@given(payload=call_payloads(), fallback=st.integers(0, MAX_NS))
def test_ids_are_stable_and_a_turn_alone_gets_its_whole_call_ids(
    payload: dict[str, Any], fallback: int
) -> None:
    call = parse_call(payload)
    first = map_call(call, fallback_end_ns=fallback)
    again = map_call(parse_call(payload), fallback_end_ns=fallback)
    assert [(s.key, s.span_id, s.parent_span_id) for s in again.spans] == [
        (s.key, s.span_id, s.parent_span_id) for s in first.spans
    ]
    assert again.spans == first.spans and again.points == first.points

    root = first.root
    assert root is not None
    whole: dict[str, SpanRecord] = {s.key: s for s in first.spans}
    ctx = CallContext(
        call.id, call.agent_id, call.agent_name, root.start_ns, MappingOptions(), call.deployment_id
    )
    seen: dict[str, int] = {}
    # the response latency of a streamed turn comes from the turns received before it (section 5.1)
    latencies = response_latencies(call.transcript)
    for index, item in enumerate(call.transcript):
        if item.is_system:
            continue
        base = ids.turn_key(item.role, item.start_timestamp)
        seen[base] = seen.get(base, 0) + 1
        # a call_turn webhook knows nothing else of other turns: the first occurrence maps alone
        occurrence = seen[base]
        alone = map_turn(ctx, item, occurrence, response_latency=latencies.get(index))
        for span in alone:
            match = whole[span.key]
            assert (span.span_id, span.parent_span_id) == (match.span_id, match.parent_span_id)
            assert (span.start_ns, span.end_ns, span.name) == (match.start_ns, match.end_ns, match.name)
            assert span.attributes == match.attributes


@PROPERTY_SETTINGS
@given(payload=call_payloads(), suffix=ids_text, fallback=st.integers(0, MAX_NS))
def test_metric_points_belong_to_spans_and_never_carry_the_call_id(
    payload: dict[str, Any], suffix: str, fallback: int
) -> None:
    marked = parse_call({**payload, "id": f"{MARK}{suffix}"})
    mapped = map_call(marked, fallback_end_ns=fallback)
    _check_points(mapped)
    for point in mapped.points:
        for value in point.attributes.values():
            assert marked.id not in str(value)
    # and the points do not depend on the call id at all, beyond the ids of their spans
    other = map_call(parse_call({**payload, "id": f"{MARK}{suffix}{MARK}"}), fallback_end_ns=fallback)
    assert [(p.instrument, p.value, p.attributes, p.span_key) for p in other.points] == [
        (p.instrument, p.value, p.attributes, p.span_key) for p in mapped.points
    ]


@PROPERTY_SETTINGS
@given(
    payload=call_payloads(),
    policy=st.sampled_from(TextPolicy),
    max_chars=st.integers(1, 300),
    max_bytes=st.integers(64, 4096),
    phones=st.booleans(),
)
def test_string_attributes_respect_the_byte_cap_under_any_options(
    payload: dict[str, Any], policy: TextPolicy, max_chars: int, max_bytes: int, phones: bool
) -> None:
    options = MappingOptions(policy, max_chars, phones, max_bytes)
    mapped = map_call(parse_call(payload), options, fallback_end_ns=0)
    # the identity attributes every span repeats are not capped (ids are short in practice)
    shared = {c.GEN_AI_CONVERSATION_ID, c.GEN_AI_AGENT_ID, c.GEN_AI_AGENT_NAME}
    for span in mapped.spans:
        for attributes in [span.attributes, *(e.attributes for e in span.events)]:
            for key, value in attributes.items():
                if isinstance(value, str) and key not in shared:
                    assert len(value.encode()) <= max_bytes, key
        if policy is TextPolicy.DROP:
            assert c.TURN_TEXT not in span.attributes
            assert not {c.OI_INPUT_VALUE, c.OI_OUTPUT_VALUE} & set(span.attributes)  # every copy
    _encode(mapped)


@settings(PROPERTY_SETTINGS, max_examples=40)
@given(payload=call_payloads(), field=st.sampled_from(["start_time", "end_time"]), data=st.data())
def test_times_outside_what_otlp_can_carry_are_rejected_not_mapped(
    payload: dict[str, Any], field: str, data: st.DataObject
) -> None:
    bad = data.draw(
        st.sampled_from(
            [
                "1969-12-31T23:59:59.999999999Z",
                "1970-01-01T00:30:00+01:00",
                "0001-01-01T00:00:00Z",
                "2262-04-11T23:47:16.854775808Z",
                "9999-12-31T23:59:60.999999999Z",
            ]
        )
    )
    with pytest.raises(ValidationError, match=field):
        parse_call({**payload, field: bad})
