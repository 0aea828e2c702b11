"""Mapping records straight to OTLP: the ExportTraceServiceRequest of a batch of spans, built
with opentelemetry-proto's generated classes, without ``ReadableSpan`` and without the SDK.

:func:`trace_request` builds the message and protobuf's upb backend serializes it
(:func:`encode_traces`). The library's classes rather than a wire format of our own: a
hand-written encoder was faster, but the brief prefers a well-kept library to our own code
(the costs of each way are in docs/benchmarks.md). ``add()`` then field by field is the
cheapest way to fill a message; the Resource and scope messages are kept across requests, and
the int pairs that repeat within one (text chunk indexes) are copied.

The output is the SDK path's to the byte: ``encode_traces(records, resource)`` equals
``encode_trace_request(to_readable_spans(records, resource)).SerializeToString()`` (the same
messages, serialized by the same upb; attributes in insertion order), and ``trace_request``
equals ``encode_trace_request(...)`` as a message. That is proven in
tests/delivery/test_otlp.py on every golden fixture, on property-generated calls and on
property-generated span records of every attribute type. What the SDK path sets, so this
module does too:

* one ResourceSpans (``resource``'s attributes and schema URL) with one ScopeSpans (scope
  ``otelbridge`` at ``otelbridge.__version__``, no schema URL), spans in the order given; no
  spans, an empty request (no bytes);
* ids as 16/8 bytes big-endian; kind INTERNAL; no trace state; no links;
* ``flags`` = SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (0x100): the SDK's encoder sets it on
  every span, and never the IS_REMOTE bit (parents are local contexts); trace flags are not
  copied into the low byte;
* a status on every span: empty (UNSET), or ERROR with ``SpanRecord.error`` as its message;
* ``dropped_attributes_count`` on spans and events;
* an attribute the SDK's encoder cannot encode (an int out of int64, a string that is not
  UTF-8 encodable, an unknown type) is left out and logged, as the SDK's encoder does; the
  values are converted by the same protobuf classes, so they fail alike.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceMessage
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status

from otelbridge import __version__
from otelbridge.mapping import conventions
from otelbridge.mapping.records import EventRecord, SpanRecord

if TYPE_CHECKING:  # read for its attributes and schema URL only: no SDK import at run time
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
    from opentelemetry.sdk.resources import Resource

_logger = logging.getLogger(__name__)

_KIND_INTERNAL: Final = Span.SpanKind.SPAN_KIND_INTERNAL
_ERROR: Final = Status.StatusCode.STATUS_CODE_ERROR
#: what the SDK's encoder sets on every span: HAS_IS_REMOTE, never IS_REMOTE (parents are local)
_FLAGS: Final = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_SCOPE: Final = InstrumentationScope(name=conventions.INSTRUMENTATION_SCOPE, version=__version__)


#: spans per OTLP trace request (~1-2 MB encoded, under gRPC's 4 MiB default message limit):
#: replay keeps whole calls together up to it, the processor cuts its spooled requests at it
MAX_SPANS_PER_REQUEST = 1000


def _set_value(target: AnyValue, value: object) -> None:
    """Set ``target`` to ``value`` as the SDK encoder's ``_encode_value`` has it, with its type
    tests in its order (bool before int, str and bytes before Sequence); raises on what that
    cannot encode either (an int out of int64, a string that is not UTF-8 encodable, ...)."""
    if value is None:
        target.SetInParent()
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, Sequence):
        array = target.array_value
        array.SetInParent()  # an empty list is an empty ArrayValue, not an empty AnyValue
        add = array.values.add
        for item in value:
            _set_value(add(), item)
    elif isinstance(value, Mapping):
        pairs = target.kvlist_value
        pairs.SetInParent()
        add_pair = pairs.values.add
        for key, item in value.items():
            pair = add_pair()
            pair.key = str(key)
            _set_value(pair.value, item)
    else:
        raise TypeError(f"Invalid type {type(value)} of value {value}")


def _add_attributes(
    container: RepeatedCompositeFieldContainer[KeyValue],
    attributes: Mapping[str, Any],
    ints: dict[tuple[str, int], KeyValue],
) -> None:
    """Add a KeyValue per attribute to ``container``. One that fails is removed again and
    logged: the SDK's encoder leaves it out and logs it.

    ``ints`` holds the int pairs already built in this request (text chunk indexes): a copy of
    one is cheaper than a new one. Strings are not cached: measured, a copy is no cheaper than
    a new KeyValue and the look-ups cost more than the hits save. ``Any``: the exact-type tests
    narrow ``value`` at run time (``bool`` is not ``int`` there, and 1, 1.0 and True never meet
    in ``ints``)."""
    add = container.add
    for key, value in attributes.items():
        kind = type(value)
        try:
            if kind is str:
                kv = add()
                kv.key = key
                kv.value.string_value = value
            elif kind is int:
                pair = (key, value)
                cached = ints.get(pair)
                if cached is None:
                    kv = add()
                    kv.key = key
                    kv.value.int_value = value
                    ints[pair] = kv  # once built: a pair that fails is not kept
                else:
                    add().CopyFrom(cached)
            elif kind is float:
                kv = add()
                kv.key = key
                kv.value.double_value = value
            else:
                kv = add()
                kv.key = key
                _set_value(kv.value, value)
        except Exception as error:  # the SDK's encoder catches all, logs and goes on
            del container[-1]  # all that can fail comes after add()
            _logger.exception("Failed to encode key %s: %s", key, error)


def _add_events(
    container: RepeatedCompositeFieldContainer[Span.Event],
    events: list[EventRecord],
    ints: dict[tuple[str, int], KeyValue],
) -> None:
    """Add a Span.Event per record; :func:`_add_attributes` inlined (a span has ten events for
    each of its own attribute sets: the call would cost 2% of the request)."""
    add = container.add
    for event in events:
        message = add()
        message.time_unix_nano = event.time_ns
        message.name = event.name
        attributes: Mapping[str, Any] = event.attributes
        if attributes:
            pairs = message.attributes
            add_pair = pairs.add
            for key, value in attributes.items():
                kind = type(value)
                try:
                    if kind is str:
                        kv = add_pair()
                        kv.key = key
                        kv.value.string_value = value
                    elif kind is int:
                        pair = (key, value)
                        cached = ints.get(pair)
                        if cached is None:
                            kv = add_pair()
                            kv.key = key
                            kv.value.int_value = value
                            ints[pair] = kv  # once built: a pair that fails is not kept
                        else:
                            add_pair().CopyFrom(cached)
                    elif kind is float:
                        kv = add_pair()
                        kv.key = key
                        kv.value.double_value = value
                    else:
                        kv = add_pair()
                        kv.key = key
                        _set_value(kv.value, value)
                except Exception as error:  # as in _add_attributes
                    del pairs[-1]
                    _logger.exception("Failed to encode key %s: %s", key, error)
        if event.dropped_attributes:
            message.dropped_attributes_count = event.dropped_attributes


#: the Resource message of the resources seen last (one per process, in practice); the SDK's
#: Resource is held so that its id is not reused while cached
_RESOURCES: dict[int, tuple[Resource, ResourceMessage]] = {}
_MAX_RESOURCES: Final = 8


def _resource(resource: Resource) -> ResourceMessage:
    cached = _RESOURCES.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1]
    message = ResourceMessage()
    _add_attributes(message.attributes, resource.attributes, {})
    if len(_RESOURCES) >= _MAX_RESOURCES:
        _RESOURCES.clear()
    _RESOURCES[id(resource)] = (resource, message)
    return message


def trace_request(spans: Iterable[SpanRecord], resource: Resource) -> ExportTraceServiceRequest:
    """The ExportTraceServiceRequest of ``spans`` under ``resource``, equal to
    ``encode_trace_request(to_readable_spans(spans, resource))``: one ResourceSpans with one
    ScopeSpans, spans in the order given; no spans, an empty request."""
    request = ExportTraceServiceRequest()
    add_span = None
    # the int KeyValues already built in this request, by pair
    ints: dict[tuple[str, int], KeyValue] = {}
    for record in spans:
        if add_span is None:
            resource_spans = request.resource_spans.add()
            resource_spans.resource.CopyFrom(_resource(resource))
            resource_spans.schema_url = resource.schema_url
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.CopyFrom(_SCOPE)
            add_span = scope_spans.spans.add
        span = add_span()
        span.trace_id = record.trace_id.to_bytes(16, "big")
        span.span_id = record.span_id.to_bytes(8, "big")
        if record.parent_span_id is not None:
            span.parent_span_id = record.parent_span_id.to_bytes(8, "big")
        span.name = record.name
        span.kind = _KIND_INTERNAL
        span.start_time_unix_nano = record.start_ns
        span.end_time_unix_nano = record.end_ns
        if record.attributes:
            _add_attributes(span.attributes, record.attributes, ints)
        if record.dropped_attributes:
            span.dropped_attributes_count = record.dropped_attributes
        if record.events:
            _add_events(span.events, record.events, ints)
        status = span.status
        if record.error is None:
            status.SetInParent()  # UNSET: present, empty
        else:
            status.code = _ERROR
            status.message = record.error
        span.flags = _FLAGS
    return request


def encode_traces(spans: Iterable[SpanRecord], resource: Resource) -> bytes:
    """The serialized ExportTraceServiceRequest of ``spans`` under ``resource``: the bytes of
    ``encode_trace_request(to_readable_spans(spans, resource)).SerializeToString()``."""
    encoded: bytes = trace_request(spans, resource).SerializeToString()
    return encoded
