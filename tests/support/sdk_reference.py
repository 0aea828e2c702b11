"""The reference encoding: mapping records as SDK ``ReadableSpan``s through the SDK's own OTLP
encoder, the path otelbridge took before it built OTLP directly (otelbridge/delivery/otlp.py).

tests/delivery/test_otlp.py proves the two byte-equal; the benchmarks measure against it. The
SDK's tracer cannot set span ids, so the spans are built as ``ReadableSpan`` directly (the class
is not meant to be built by users: fine for a reference, not for the data path).
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode, TraceFlags

from otelbridge import __version__
from otelbridge.delivery.meter import span_context
from otelbridge.delivery.resource import build_resource
from otelbridge.mapping import conventions
from otelbridge.mapping.records import Attributes, SpanRecord

__all__ = ["build_resource", "encode_trace_request", "span_context", "to_readable_span", "to_readable_spans"]

SCOPE = InstrumentationScope(conventions.INSTRUMENTATION_SCOPE, __version__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


def _attributes(attributes: Attributes, dropped: int) -> Attributes | BoundedAttributes:
    """The SDK reads a dropped count only from ``BoundedAttributes``."""
    if not dropped:
        return attributes
    bounded = BoundedAttributes(attributes=attributes, immutable=False, max_value_len=None)
    bounded.dropped = dropped
    return bounded


def to_readable_span(record: SpanRecord, resource: Resource) -> ReadableSpan:
    parent = (
        span_context(record.trace_id, record.parent_span_id) if record.parent_span_id is not None else None
    )
    status = _UNSET if record.error is None else Status(StatusCode.ERROR, record.error)
    return ReadableSpan(
        name=record.name,
        context=span_context(record.trace_id, record.span_id),
        parent=parent,
        resource=resource,
        attributes=_attributes(record.attributes, record.dropped_attributes),
        events=[
            Event(e.name, _attributes(e.attributes, e.dropped_attributes), e.time_ns) for e in record.events
        ],
        kind=SpanKind.INTERNAL,
        status=status,
        start_time=record.start_ns,
        end_time=record.end_ns,
        instrumentation_scope=SCOPE,
    )


def to_readable_spans(records: Iterable[SpanRecord], resource: Resource) -> list[ReadableSpan]:
    return [to_readable_span(r, resource) for r in records]


def encode_trace_request(spans: Iterable[ReadableSpan]) -> ExportTraceServiceRequest:
    """The OTLP ExportTraceServiceRequest the SDK's exporters would send for ``spans``."""
    return encode_spans(list(spans))
