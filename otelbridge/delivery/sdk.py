"""The one module that builds OpenTelemetry SDK objects from mapping records.

The SDK's tracer cannot set span ids, so finished spans of past calls are built directly as
``ReadableSpan`` (the FIELD-NOTES trap: the class is not meant to be built by users) and
handed to the SDK's own OTLP encoder and exporters. The SDK is pinned in pyproject.toml and
this module is guarded by the golden tests in tests/mapping/test_golden.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from otelbridge import __version__
from otelbridge.mapping import conventions
from otelbridge.mapping.records import Attributes, SpanRecord

SCOPE = InstrumentationScope(conventions.INSTRUMENTATION_SCOPE, __version__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


def build_resource(service_name: str, instance_id: str, extra: Mapping[str, str] | None = None) -> Resource:
    """A deterministic resource (no detectors): ``extra`` first, then the two we own."""
    attributes: dict[str, str] = dict(extra or {})
    attributes["service.name"] = service_name
    attributes["service.instance.id"] = instance_id
    attributes.setdefault("telemetry.sdk.language", "python")
    return Resource(attributes)


def span_context(trace_id: int, span_id: int) -> SpanContext:
    """A SAMPLED context: an unsampled parent makes backends and exemplars drop children."""
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)


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


#: spans per OTLP trace request (~1-2 MB encoded, under gRPC's 4 MiB default message limit):
#: replay keeps whole calls together up to it, the processor cuts its spooled requests at it
MAX_SPANS_PER_REQUEST = 1000


def encode_trace_request(spans: Iterable[ReadableSpan]) -> ExportTraceServiceRequest:
    """The OTLP ExportTraceServiceRequest the SDK's exporters would send for ``spans``."""
    return encode_spans(list(spans))
