"""The direct OTLP encoder (otelbridge.delivery.otlp) against the SDK path it replaces.

The encoder builds the request with opentelemetry-proto's generated classes and lets protobuf
serialize it. The proof of equal output (issue 20): for every golden fixture, for
property-generated calls and for property-generated span records of every attribute type, the
bytes of ``encode_traces(records, resource)`` are the bytes of
``encode_trace_request(to_readable_spans(records, resource)).SerializeToString()``, the two
decode to equal ExportTraceServiceRequest messages (ids, attributes, events, links, times,
status, flags, resource and scope), and ``trace_request`` equals ``encode_trace_request`` as a
message. Equal bytes mean the same fields in the same order, so no normalizing of attribute
order is needed.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Final, Literal, cast

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from pydantic import ValidationError

from otelbridge import __version__
from otelbridge.cartesia.models import parse_call
from otelbridge.delivery.otlp import encode_traces, trace_request
from otelbridge.mapping import UnplaceableCallError, map_call
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import Attributes, EventRecord, SpanRecord
from tests.mapping.golden import TESTDATA, map_fixture
from tests.mapping.test_golden import FIXTURES
from tests.mapping.test_properties import call_payloads
from tests.support.sdk_reference import build_resource, encode_trace_request, to_readable_spans

RESOURCE: Final = build_resource("otelbridge-otlp", "instance-1", {"deployment.environment": "test"})
PROPERTY_SETTINGS: Final = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def sdk_bytes(records: Sequence[SpanRecord], resource: Resource = RESOURCE) -> bytes:
    return bytes(encode_trace_request(to_readable_spans(records, resource)).SerializeToString())


def assert_same(records: Sequence[SpanRecord], resource: Resource = RESOURCE) -> bytes:
    """The direct encoding equals the SDK path's, as bytes and as decoded messages."""
    old = sdk_bytes(records, resource)
    new = encode_traces(records, resource)
    assert new == old
    old_message = ExportTraceServiceRequest.FromString(old)
    new_message = ExportTraceServiceRequest.FromString(new)
    if not _has_nan(records):  # NaN != NaN: equal bytes are the proof there
        assert new_message == old_message
        assert trace_request(records, resource) == encode_trace_request(to_readable_spans(records, resource))
    # the bytes round-trip: what a receiver decodes serializes back to them
    assert new_message.SerializeToString() == new
    return new


def _has_nan(records: Sequence[SpanRecord]) -> bool:
    def values(attributes: Attributes) -> list[object]:
        out: list[object] = []
        for value in attributes.values():
            out += value if isinstance(value, list | tuple) else [value]
        return out

    return any(
        isinstance(v, float) and math.isnan(v)
        for s in records
        for v in values(s.attributes) + [x for e in s.events for x in values(e.attributes)]
    )


# --- golden fixtures and generated calls ----------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURES)
def test_golden_fixture_encodes_as_the_sdk_does(fixture: str) -> None:
    spans = [s for call in map_fixture(TESTDATA / fixture) for s in call.spans]
    assert spans or fixture == "empty_transcript.json"
    assert_same(spans)


def test_all_golden_fixtures_in_one_request() -> None:
    """One request across calls: what is cached per request must not leak between spans."""
    spans = [s for fixture in FIXTURES for call in map_fixture(TESTDATA / fixture) for s in call.spans]
    encoded = assert_same(spans)
    (resource_spans,) = ExportTraceServiceRequest.FromString(encoded).resource_spans
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == c.INSTRUMENTATION_SCOPE and scope_spans.scope.version == __version__
    assert [s.span_id for s in scope_spans.spans] == [s.span_id.to_bytes(8, "big") for s in spans]


@PROPERTY_SETTINGS
@given(payload=call_payloads())
def test_generated_calls_encode_as_the_sdk_does(payload: dict[str, Any]) -> None:
    try:
        mapped = map_call(parse_call(payload), fallback_end_ns=1_776_301_717_000_000_000)
    except (ValidationError, UnplaceableCallError):
        assume(False)
        raise
    assert_same(mapped.spans)


# --- generated span records -----------------------------------------------------------------

_SURROGATES: Final[tuple[Literal["Cs"]]] = ("Cs",)
_chars = st.characters(exclude_categories=_SURROGATES)
texts = st.text(_chars, max_size=8) | st.text(_chars, min_size=120, max_size=600) | st.just("")
keys = st.text(_chars, min_size=1, max_size=12) | st.text(_chars, min_size=130, max_size=200)
int64 = st.integers(INT64_MIN, INT64_MAX) | st.sampled_from([0, 1, -1, 127, 128, INT64_MIN, INT64_MAX])
floats = st.floats() | st.sampled_from([0.0, -0.0, math.inf, -math.inf, 5e-324])
string_sequences = st.lists(texts, max_size=4) | st.lists(texts, max_size=4).map(tuple)
values: st.SearchStrategy[Any] = st.one_of(
    texts, st.booleans(), int64, floats, string_sequences, st.sampled_from(["agent_1", 7, True, 1.0])
)
attribute_sets = st.dictionaries(keys | st.sampled_from(["k", "gen_ai.agent.id"]), values, max_size=8)
u64 = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**64 - 1])
counts = st.integers(0, 2**32 - 1) | st.just(0)

events = st.builds(
    EventRecord,
    name=texts | st.sampled_from(["cartesia.text_chunk", ""]),
    time_ns=u64,
    attributes=attribute_sets,
    dropped_attributes=counts,
)


@st.composite
def span_records(draw: st.DrawFn) -> SpanRecord:
    return SpanRecord(
        key=draw(texts),
        name=draw(texts | st.sampled_from(["user_turn", ""])),
        trace_id=draw(st.integers(0, 2**128 - 1) | st.sampled_from([0, 2**128 - 1])),
        span_id=draw(u64),
        parent_span_id=draw(st.none() | u64),
        start_ns=draw(u64),
        end_ns=draw(u64),
        attributes=draw(attribute_sets | st.dictionaries(keys, values, min_size=20, max_size=200)),
        events=draw(st.lists(events, max_size=5)),
        error=draw(st.none() | texts),
        dropped_attributes=draw(counts),
    )


@PROPERTY_SETTINGS
@given(records=st.lists(span_records(), max_size=6))
def test_generated_records_encode_as_the_sdk_does(records: list[SpanRecord]) -> None:
    assert_same(records)


@PROPERTY_SETTINGS
@given(records=st.lists(span_records(), min_size=1, max_size=3), data=st.data())
def test_repeated_values_encode_alike_wherever_they_are(
    records: list[SpanRecord], data: st.DataObject
) -> None:
    """The same pairs again, in other spans and events: the per-request caches hold them by
    type, so that 1, 1.0 and True (equal dict keys) and 0.0 and -0.0 stay apart."""
    key = data.draw(keys)
    twins: list[object] = [1, 1.0, True, 0, 0.0, -0.0, False, "1", ("1",)]
    for record in records:
        for value in twins:
            record.attributes = {**record.attributes, key: cast(Any, value)}
            record.events.append(EventRecord("twin", 1, {key: cast(Any, value)}))
        record.events.append(EventRecord("twin", 2, {key: 1, "x": "y"}))
    assert_same(records + records)


# --- edges ----------------------------------------------------------------------------------


def record(**overrides: Any) -> SpanRecord:
    fields: dict[str, Any] = {
        "key": "k",
        "name": "span",
        "trace_id": 0x0123456789ABCDEF0123456789ABCDEF,
        "span_id": 0x0123456789ABCDEF,
        "parent_span_id": None,
        "start_ns": 1_776_301_717_000_000_000,
        "end_ns": 1_776_301_718_000_000_000,
    }
    return SpanRecord(**(fields | overrides))


def test_no_spans_no_bytes() -> None:
    assert encode_traces([], RESOURCE) == b"" == sdk_bytes([])
    assert trace_request(iter([]), RESOURCE) == ExportTraceServiceRequest()


def test_ids_flags_kind_and_status() -> None:
    root = record()
    child = record(span_id=2, parent_span_id=root.span_id, error="it failed")
    empty_error = record(span_id=3, parent_span_id=0, error="")
    request = ExportTraceServiceRequest.FromString(assert_same([root, child, empty_error]))
    spans = request.resource_spans[0].scope_spans[0].spans
    assert spans[0].trace_id == bytes.fromhex("0123456789abcdef0123456789abcdef")
    assert spans[0].span_id == bytes.fromhex("0123456789abcdef") and spans[0].parent_span_id == b""
    assert spans[1].parent_span_id == spans[0].span_id and spans[2].parent_span_id == bytes(8)
    assert {s.flags for s in spans} == {0x100}  # HAS_IS_REMOTE, parents local
    assert {s.kind for s in spans} == {1}  # SPAN_KIND_INTERNAL
    assert spans[0].HasField("status") and spans[0].status.code == 0
    assert (spans[1].status.code, spans[1].status.message) == (2, "it failed")
    assert (spans[2].status.code, spans[2].status.message) == (2, "")


def test_sizes_past_one_and_two_byte_lengths() -> None:
    big = record(
        name="n" * 300,
        attributes={"k" * 200: "v" * 20_000, "list": ["é" * 100] * 200},
        events=[EventRecord("e" * 130, 5, {"text": "t" * 126, "index": 2**40})] * 50,
    )
    assert len(assert_same([big])) > 16_384 * 2


def test_resources_are_kept_apart_and_schema_urls_written() -> None:
    spans = [record()]
    other = build_resource("other", "instance-2")
    with_schema = Resource(
        {"service.name": "s", "n": 3, "l": ("a", "b")}, "https://opentelemetry.io/schemas/1.26.0"
    )
    for resource in (RESOURCE, other, with_schema, RESOURCE):
        assert_same(spans, resource)
    assert encode_traces(spans, RESOURCE) != encode_traces(spans, other)


def test_unusual_attribute_values_encode_as_the_sdk_does() -> None:
    """Outside the record type, still as the SDK's encoder has them: None is an empty AnyValue,
    bytes and mappings are encoded, enums by their value, an empty key is left out of the
    KeyValue."""
    attributes = cast(
        Attributes,
        {
            "none": None,
            "bytes": b"\x00\xff",
            "map": {"a": 1, "b": ["x", 2.5], 3: {"c": None}},
            "mixed": [1, "a", True, 2.5, None, b"b", []],
            "enum": c.OPERATION_INVOKE_AGENT,
            "": "empty key",
            "empty list": [],
        },
    )
    assert_same([record(attributes=attributes, events=[EventRecord("e", 1, dict(attributes))])])


@pytest.mark.parametrize(
    "bad",
    [2**63, INT64_MIN - 1, [1, 2**64], "\ud800", ["ok", "\udfff"], object()],
    ids=["int64+1", "int64-1", "in-list", "surrogate", "surrogate-in-list", "object"],
)
def test_unencodable_values_are_left_out_as_the_sdk_does(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    attributes = cast(Attributes, {"before": 1, "bad": bad, "after": "x"})
    events = [
        EventRecord("e", 1, dict(attributes)),
        EventRecord("text", 2, cast(Attributes, {"index": 3, "bad": bad})),
    ]
    with caplog.at_level(logging.ERROR):
        request = ExportTraceServiceRequest.FromString(
            assert_same([record(attributes=attributes, events=events)])
        )
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert [kv.key for kv in span.attributes] == ["before", "after"]
    assert [[kv.key for kv in e.attributes] for e in span.events] == [["before", "after"], ["index"]]
    assert any(r.name == "otelbridge.delivery.otlp" and "bad" in r.getMessage() for r in caplog.records)


def test_dropped_attribute_counts() -> None:
    spans = [
        record(dropped_attributes=3, events=[EventRecord("e", 1, {"a": 1}, dropped_attributes=2**32 - 1)])
    ]
    span = ExportTraceServiceRequest.FromString(assert_same(spans)).resource_spans[0].scope_spans[0].spans[0]
    assert (span.dropped_attributes_count, span.events[0].dropped_attributes_count) == (3, 2**32 - 1)


def test_a_value_that_failed_is_not_reused(caplog: pytest.LogCaptureFixture) -> None:
    """Int pairs are built once per request and copied after: one that failed must not be."""
    bad = cast(Attributes, {"n": 2**63, "i": 1})
    spans = [
        record(span_id=s, attributes=dict(bad), events=[EventRecord("e", 1, dict(bad))] * 2) for s in (1, 2)
    ]
    spans.append(record(span_id=3, attributes={"n": 5, "i": 1}, events=[EventRecord("e", 1, {"n": 5})]))
    with caplog.at_level(logging.ERROR):
        request = ExportTraceServiceRequest.FromString(assert_same(spans))
    got = [
        [(kv.key, kv.value.int_value) for kv in attributes]
        for span in request.resource_spans[0].scope_spans[0].spans
        for attributes in [span.attributes, *(e.attributes for e in span.events)]
    ]
    assert got == [[("i", 1)]] * 6 + [[("n", 5), ("i", 1)], [("n", 5)]]


def test_no_sdk_at_run_time() -> None:
    """The module builds opentelemetry-proto messages: the SDK is not imported."""
    code = (
        "import sys, otelbridge.delivery.otlp\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
