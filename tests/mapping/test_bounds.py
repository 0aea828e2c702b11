"""Everything a webhook can make long is bounded: names, keys, the number of attributes."""

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelbridge.cartesia.models import parse_call
from otelbridge.mapping import conventions as c
from otelbridge.mapping import map_call
from otelbridge.mapping.policy import MAX_ATTRIBUTES, MAX_KEY_BYTES, MAX_NAME_BYTES, NAME_CUT
from otelbridge.mapping.records import EventRecord, MappedCall, SpanRecord
from tests.support.sdk_reference import build_resource, encode_trace_request, to_readable_spans

HUGE = "é" * 50_000  # 100 KB of two-byte characters


def _hostile_call() -> dict[str, Any]:
    many = {f"key_{i}": i for i in range(5_000)}
    return {
        "id": "ac_bounds",
        "agent_id": "agent_1",
        "agent_name": HUGE,
        "status": "completed",
        "start_time": "2026-04-16T01:08:37Z",
        "end_time": "2026-04-16T01:08:57Z",
        "metadata": {"k" * 10_000: "long key", "nested": {"deep" * 3_000: 1}, **many},
        "transcript": [
            {"role": "narrator" + HUGE, "text": "hi", "start_timestamp": 1.0, "end_timestamp": 2.0},
            {
                "role": "assistant",
                "text": "checking",
                "start_timestamp": 2.0,
                "end_timestamp": 3.0,
                "tool_calls": [{"id": "t1", "name": HUGE, "arguments": {}}],
            },
            {
                "role": "system",
                "start_timestamp": 2.5,
                "end_timestamp": 2.5,
                "log_event": {"event": HUGE, "metadata": {"x" * 9_000: "v", **many}},
            },
        ],
    }


def _mapped() -> MappedCall:
    return map_call(parse_call(_hostile_call()))


def test_names_keys_and_counts_are_bounded() -> None:
    mapped = _mapped()
    events = [e for s in mapped.spans for e in s.events]
    assert events
    records: list[SpanRecord | EventRecord] = [*mapped.spans, *events]
    for record in records:
        assert len(record.name.encode()) <= MAX_NAME_BYTES
        assert len(record.attributes) <= MAX_ATTRIBUTES
        for key in record.attributes:
            assert len(key.encode()) <= MAX_KEY_BYTES


def test_every_cut_is_marked_and_counted() -> None:
    mapped = _mapped()
    root = mapped.root
    assert root is not None
    cuts = root.attributes[c.TRUNCATED]
    assert isinstance(cuts, list)
    assert NAME_CUT in cuts  # the agent name in "invoke_agent {name}"
    assert c.CALL_METADATA_PREFIX + "*" in cuts  # metadata keys left out
    kept = [k for k in root.attributes if k.startswith(c.CALL_METADATA_PREFIX)]
    # 5,002 metadata keys were sent: what was kept and what was dropped add up
    assert root.dropped_attributes > 4_800
    assert len(kept) + root.dropped_attributes == 5_002
    assert root.attributes[c.CONTRACT] == c.CONTRACT_VERSION  # added after the metadata: kept
    turn = next(s for s in mapped.spans if s.name.startswith(c.SPAN_TURN_PREFIX))
    tool = next(s for s in mapped.spans if s.name.startswith(c.SPAN_TOOL))
    for span in (turn, tool):
        assert NAME_CUT in span.attributes[c.TRUNCATED]  # type: ignore[operator]
    (log,) = [e for s in mapped.spans for e in s.events if e.name.startswith("é")]
    assert NAME_CUT in log.attributes[c.TRUNCATED]  # type: ignore[operator]
    assert c.LOG_METADATA_PREFIX + "*" in log.attributes[c.TRUNCATED]  # type: ignore[operator]
    assert log.dropped_attributes > 4_800


def test_a_cut_key_is_listed() -> None:
    root = _mapped().root
    assert root is not None
    cut_keys = [k for k in root.attributes if len(k.encode()) == MAX_KEY_BYTES]
    assert cut_keys
    assert set(cut_keys) <= set(root.attributes[c.TRUNCATED])  # type: ignore[arg-type]


def test_dropped_counts_reach_otlp() -> None:
    mapped = _mapped()
    request = encode_trace_request(to_readable_spans(mapped.spans, build_resource("svc", "i")))
    decoded = ExportTraceServiceRequest.FromString(request.SerializeToString())
    spans = decoded.resource_spans[0].scope_spans[0].spans
    root = next(s for s in spans if not s.parent_span_id)
    assert root.dropped_attributes_count == mapped.root.dropped_attributes  # type: ignore[union-attr]
    events = [e for s in spans for e in s.events if e.dropped_attributes_count]
    assert len(events) == 1
    # the whole request stays small although the call was megabytes of names and keys
    assert decoded.ByteSize() < 200_000


def test_an_ordinary_call_drops_nothing() -> None:
    call = _hostile_call()
    call.update(agent_name="Support", metadata={"tier": "gold"}, transcript=[])
    root = map_call(parse_call(call)).root
    assert root is not None
    assert root.dropped_attributes == 0 and c.TRUNCATED not in root.attributes
