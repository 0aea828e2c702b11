"""Mapping records straight to OTLP: the ExportTraceServiceRequest of a batch of spans, in the
protobuf wire format, written without ``ReadableSpan`` and without the SDK's encoder.

The output is the SDK path's to the byte: ``encode_traces(records, resource)`` equals
``encode_trace_request(to_readable_spans(records, resource)).SerializeToString()``, field for
field and in the same order (fields by number, attributes in insertion order). That is proven in
tests/delivery/test_otlp.py on every golden fixture and on property-generated spans. What the SDK
path sets, so this module does too:

* one ResourceSpans (``resource``'s attributes and schema URL) with one ScopeSpans (scope
  ``otelbridge`` at ``otelbridge.__version__``, no schema URL), spans in the order given; no
  spans, no bytes;
* ids as 16/8 bytes big-endian; kind INTERNAL; no trace state; no links;
* ``flags`` = SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (0x100): the SDK's encoder sets it on
  every span, and never the IS_REMOTE bit (parents are local contexts); trace flags are not
  copied into the low byte;
* a status on every span: empty (UNSET), or ERROR with ``SpanRecord.error`` as its message;
* proto3 defaults left out: a zero time, an empty name, a zero dropped count;
* an attribute the SDK's encoder cannot encode (an int out of int64, a string that is not
  UTF-8 encodable) is left out and logged, as the SDK's encoder does.

Why hand-written: building KeyValue/AnyValue messages costs 0.3-0.8 µs each even with the upb
backend, and a span carries 30 of them (text chunk events included); an attribute here is a few
bytes concatenations, and whole key/value pairs that repeat within a request (conversation id,
agent id, operation name, provider, chunk indexes) are encoded once per request.
:func:`trace_request` parses the bytes into the message for callers that want one.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelbridge import __version__
from otelbridge.mapping import conventions
from otelbridge.mapping.records import EventRecord, SpanRecord

if TYPE_CHECKING:  # read for its attributes and schema URL only: no SDK import at run time
    from opentelemetry.sdk.resources import Resource

_logger = logging.getLogger(__name__)

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64: Final = 2**64
#: strings up to this many UTF-8 bytes are worth a look-up in the per-request cache; longer ones
#: (turn text, tool payloads) are seldom repeated and costly to hash
_CACHED_STR_BYTES: Final = 64
#: encoded attribute keys kept across requests; keys come from webhooks' metadata too, so bounded
_MAX_KEYS: Final = 4096

_SMALL: Final = tuple(bytes((i,)) for i in range(128))
#: a short string's AnyValue head after KeyValue.value's tag: its length, string_value's tag
#: and the string's length, by the string's UTF-8 length (< 126)
_STRING_HEADS: Final = tuple(bytes((n + 2, 0x0A, n)) for n in range(126))
#: Span.events' tag and a short event's length, by its length (< 128)
_EVENT_HEADS: Final = tuple(bytes((0x5A, n)) for n in range(128))
_DOUBLE: Final = struct.Struct("<d").pack
_TAGGED_FIXED64: Final = struct.Struct("<BQ").pack  # a one-byte tag, then a fixed64

# wire tags (field number << 3 | wire type), per message
_KV_KEY: Final = b"\x0a"  # KeyValue.key = 1
_KV_VALUE: Final = b"\x12"  # KeyValue.value = 2
_AV_STRING: Final = b"\x0a"  # AnyValue.string_value = 1
_AV_BOOL_TRUE: Final = b"\x10\x01"  # AnyValue.bool_value = 2
_AV_BOOL_FALSE: Final = b"\x10\x00"
_AV_INT: Final = b"\x18"  # AnyValue.int_value = 3
_AV_DOUBLE: Final = b"\x21"  # AnyValue.double_value = 4 (fixed64)
_AV_ARRAY: Final = b"\x2a"  # AnyValue.array_value = 5
_AV_KVLIST: Final = b"\x32"  # AnyValue.kvlist_value = 6
_AV_BYTES: Final = b"\x3a"  # AnyValue.bytes_value = 7
_LIST_VALUES: Final = b"\x0a"  # ArrayValue.values = 1, KeyValueList.values = 1
_SPAN_TRACE_ID: Final = b"\x0a\x10"  # Span.trace_id = 1, 16 bytes
_SPAN_SPAN_ID: Final = b"\x12\x08"  # Span.span_id = 2, 8 bytes
_SPAN_PARENT_ID: Final = b"\x22\x08"  # Span.parent_span_id = 4, 8 bytes
_SPAN_NAME: Final = b"\x2a"  # Span.name = 5
_SPAN_KIND_INTERNAL: Final = b"\x30\x01"  # Span.kind = 6, SPAN_KIND_INTERNAL
_SPAN_ATTRIBUTE: Final = b"\x4a"  # Span.attributes = 9
_SPAN_DROPPED_ATTRIBUTES: Final = b"\x50"  # Span.dropped_attributes_count = 10
_SPAN_EVENT: Final = b"\x5a"  # Span.events = 11
_SPAN_STATUS_UNSET: Final = b"\x7a\x00"  # Span.status = 15, an empty Status
_STATUS_MESSAGE: Final = b"\x12"  # Status.message = 2
_STATUS_CODE_ERROR: Final = b"\x18\x02"  # Status.code = 3, STATUS_CODE_ERROR
_SPAN_STATUS: Final = b"\x7a"
#: Span.flags = 16 (fixed32): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, what the SDK's encoder sets
_SPAN_FLAGS: Final = b"\x85\x01" + struct.pack("<I", 0x100)
_EVENT_NAME: Final = b"\x12"  # Span.Event.name = 2
_EVENT_ATTRIBUTE: Final = b"\x1a"  # Span.Event.attributes = 3
_EVENT_DROPPED_ATTRIBUTES: Final = b"\x20"  # Span.Event.dropped_attributes_count = 4
_RESOURCE_ATTRIBUTE: Final = b"\x0a"  # Resource.attributes = 1
_SCOPE_NAME: Final = b"\x0a"  # InstrumentationScope.name = 1
_SCOPE_VERSION: Final = b"\x12"  # InstrumentationScope.version = 2
_SCOPE_SPANS_SCOPE: Final = b"\x0a"  # ScopeSpans.scope = 1
_SCOPE_SPANS_SPAN: Final = b"\x12"  # ScopeSpans.spans = 2
_RESOURCE_SPANS_RESOURCE: Final = b"\x0a"  # ResourceSpans.resource = 1
_RESOURCE_SPANS_SCOPE_SPANS: Final = b"\x12"  # ResourceSpans.scope_spans = 2
_RESOURCE_SPANS_SCHEMA_URL: Final = b"\x1a"  # ResourceSpans.schema_url = 3
_REQUEST_RESOURCE_SPANS: Final = b"\x0a"  # ExportTraceServiceRequest.resource_spans = 1


def _varint(n: int) -> bytes:
    """An unsigned varint (lengths, counts); ``n`` must be >= 0."""
    if n < 128:
        return _SMALL[n]
    if n < 16384:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _uint32(n: int) -> bytes:
    if not 0 <= n <= 0xFFFFFFFF:
        raise ValueError(f"{n} is out of range for a uint32 count")
    return _varint(n)


def _length_delimited(tag: bytes, body: bytes) -> bytes:
    return tag + _varint(len(body)) + body


_KEYS: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    """KeyValue.key, tag and length included (nothing for an empty key, as proto3 has it),
    then KeyValue.value's tag: what comes before the value's length."""
    encoded = _KEYS.get(key)
    if encoded is None:
        raw = key.encode()
        encoded = (_KV_KEY + _varint(len(raw)) + raw if raw else b"") + _KV_VALUE
        if len(_KEYS) >= _MAX_KEYS:
            _KEYS.clear()
        _KEYS[key] = encoded
    return encoded


def _any_value(value: object) -> bytes:
    """An AnyValue's body, with the SDK encoder's type tests in its order (bool before int,
    str and bytes before Sequence); raises on what the SDK's encoder cannot encode either."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _AV_BOOL_TRUE if value else _AV_BOOL_FALSE
    if isinstance(value, str):
        raw = value.encode()
        return _AV_STRING + _varint(len(raw)) + raw
    if isinstance(value, int):
        number = int(value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise ValueError(f"{number} is out of range for an int64")
        return _AV_INT + _varint(number % _UINT64)
    if isinstance(value, float):
        return _AV_DOUBLE + _DOUBLE(value)
    if isinstance(value, bytes):
        return _AV_BYTES + _varint(len(value)) + value
    if isinstance(value, Sequence):
        items = b"".join(_length_delimited(_LIST_VALUES, _any_value(v)) for v in value)
        return _length_delimited(_AV_ARRAY, items)
    if isinstance(value, Mapping):
        pairs = b"".join(
            _length_delimited(_LIST_VALUES, _key(str(k)) + _length_delimited(b"", _any_value(v)))
            for k, v in value.items()
        )
        return _length_delimited(_AV_KVLIST, pairs)
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: object) -> bytes:
    """A KeyValue with its length prefix (the tag is the caller's)."""
    body = _key(key) + _length_delimited(b"", _any_value(value))
    return _varint(len(body)) + body


def _attributes_one_by_one(tag: bytes, attributes: Mapping[str, object], parts: list[bytes]) -> None:
    """The slow path, after a value failed: each attribute on its own, failures left out."""
    for key, value in attributes.items():
        try:
            encoded = _key_value(key, value)
        except Exception as error:  # the SDK's encoder catches all, logs and goes on
            _logger.exception("Failed to encode key %s: %s", key, error)
        else:
            parts.append(tag + encoded)


def _attributes(
    tag: bytes,
    attributes: Mapping[str, Any],
    parts: list[bytes],
    strings: dict[tuple[str, str], bytes] | None,
    ints: dict[tuple[str, int], bytes],
) -> None:
    """Append each KeyValue of ``attributes``, ``tag`` and length included, to ``parts``.

    ``strings`` and ``ints`` hold the pairs already encoded with this tag in this request (two
    tables, so that 1, 1.0 and True, equal as dict keys, never meet); ``strings`` is None where
    string values seldom repeat (span events: text chunks). ``Any``: the exact-type tests
    narrow ``value`` at run time, where an isinstance would cost a call per attribute."""
    start = len(parts)
    keys, small, heads, append = _KEYS, _SMALL, _STRING_HEADS, parts.append
    try:
        for key, value in attributes.items():
            kind = type(value)
            if kind is str:
                if strings is not None:
                    cache_key = (key, value)
                    encoded = strings.get(cache_key)
                    if encoded is not None:
                        append(encoded)
                        continue
                raw = value.encode()
                size = len(raw)
                prefix = keys.get(key) or _key(key)
                if size < 126 and (body_size := len(prefix) + 3 + size) < 128:
                    encoded = b"".join((tag, small[body_size], prefix, heads[size], raw))
                else:
                    body = prefix + _length_delimited(b"", _AV_STRING + _varint(size) + raw)
                    encoded = tag + _varint(len(body)) + body
                if strings is not None and size <= _CACHED_STR_BYTES:
                    strings[cache_key] = encoded
            elif kind is int:
                int_key = (key, value)
                encoded = ints.get(int_key)
                if encoded is None:
                    encoded = ints[int_key] = tag + _key_value(key, value)
            elif kind is float:
                prefix = keys.get(key) or _key(key)
                body_size = len(prefix) + 10
                if body_size < 128:
                    encoded = b"".join((tag, small[body_size], prefix, b"\x09\x21", _DOUBLE(value)))
                else:
                    encoded = tag + _key_value(key, value)
            else:
                encoded = tag + _key_value(key, value)
            append(encoded)
    except Exception:
        del parts[start:]
        _attributes_one_by_one(tag, attributes, parts)


def _events(
    events: list[EventRecord], body: list[bytes], names: dict[str, bytes], ints: dict[tuple[str, int], bytes]
) -> None:
    """Append each event as a Span.events entry (tag, length, Event) to the span's ``body``;
    ``names`` and ``ints`` hold the event names and int pairs already encoded in this request."""
    append, keys, small, heads, event_heads = body.append, _KEYS, _SMALL, _STRING_HEADS, _EVENT_HEADS
    for event in events:
        # written into the span's parts, behind a slot for the tag and length: no list and
        # no join per event
        slot = len(body)
        append(b"")
        name = names.get(event.name)
        if name is None:
            name = names[event.name] = (
                _length_delimited(_EVENT_NAME, event.name.encode()) if event.name else b""
            )
        if event.time_ns:  # Span.Event.time_unix_nano = 1 (fixed64)
            name = _TAGGED_FIXED64(0x09, event.time_ns) + name
        append(name)
        size = len(name)
        # _attributes inlined for the common case (ints seen before, short strings, floats): a span
        # has ten events for each of its own attribute sets (text chunks)
        items: Mapping[str, Any] = event.attributes  # Any: narrowed by the type tests below
        for key, value in items.items():
            kind = type(value)
            if kind is int:
                encoded = ints.get((key, value))
                if encoded is not None:
                    append(encoded)
                    size += len(encoded)
                    continue
            elif kind is str:
                raw = value.encode()
                value_size = len(raw)
                prefix = keys.get(key) or _key(key)
                if value_size < 126 and (kv_size := len(prefix) + 3 + value_size) < 128:
                    append(b"".join((_EVENT_ATTRIBUTE, small[kv_size], prefix, heads[value_size], raw)))
                    size += kv_size + 2
                    continue
            elif kind is float:
                prefix = keys.get(key) or _key(key)
                if (kv_size := len(prefix) + 10) < 128:
                    append(b"".join((_EVENT_ATTRIBUTE, small[kv_size], prefix, b"\x09\x21", _DOUBLE(value))))
                    size += kv_size + 2
                    continue
            # anything else (an int not seen yet, a long string): the general path
            del body[slot + 2 :]
            encoded_items: list[bytes] = []
            _attributes(_EVENT_ATTRIBUTE, items, encoded_items, None, ints)
            body += encoded_items
            size = len(name) + sum(map(len, encoded_items))
            break
        if event.dropped_attributes:
            dropped = _EVENT_DROPPED_ATTRIBUTES + _uint32(event.dropped_attributes)
            append(dropped)
            size += len(dropped)
        body[slot] = event_heads[size] if size < 128 else _SPAN_EVENT + _varint(size)


def _spans(records: Iterable[SpanRecord], parts: list[bytes]) -> None:
    """Append each record as a ScopeSpans.spans entry (tag, length, Span) to ``parts``."""
    # the key/value pairs and event names already encoded in this request
    span_strings: dict[tuple[str, str], bytes] = {}
    span_ints: dict[tuple[str, int], bytes] = {}
    event_ints: dict[tuple[str, int], bytes] = {}
    event_names: dict[str, bytes] = {}
    append_part = parts.append
    for record in records:
        body: list[bytes] = [
            _SPAN_TRACE_ID,
            record.trace_id.to_bytes(16, "big"),
            _SPAN_SPAN_ID,
            record.span_id.to_bytes(8, "big"),
        ]
        append = body.append
        if record.parent_span_id is not None:
            append(_SPAN_PARENT_ID)
            append(record.parent_span_id.to_bytes(8, "big"))
        if record.name:
            append(_length_delimited(_SPAN_NAME, record.name.encode()))
        append(_SPAN_KIND_INTERNAL)
        if record.start_ns:
            append(_TAGGED_FIXED64(0x39, record.start_ns))  # Span.start_time_unix_nano = 7
        if record.end_ns:
            append(_TAGGED_FIXED64(0x41, record.end_ns))  # Span.end_time_unix_nano = 8
        if record.attributes:
            _attributes(_SPAN_ATTRIBUTE, record.attributes, body, span_strings, span_ints)
        if record.dropped_attributes:
            append(_SPAN_DROPPED_ATTRIBUTES + _uint32(record.dropped_attributes))
        if record.events:
            _events(record.events, body, event_names, event_ints)
        if record.error is None:
            append(_SPAN_STATUS_UNSET)
        else:
            message = record.error.encode()
            status = (
                _STATUS_MESSAGE + _varint(len(message)) + message if message else b""
            ) + _STATUS_CODE_ERROR
            append(_SPAN_STATUS + _varint(len(status)) + status)
        append(_SPAN_FLAGS)
        span = b"".join(body)
        append_part(_SCOPE_SPANS_SPAN + _varint(len(span)))
        append_part(span)


_SCOPE: Final = _length_delimited(
    _SCOPE_SPANS_SCOPE,
    _length_delimited(_SCOPE_NAME, conventions.INSTRUMENTATION_SCOPE.encode())
    + _length_delimited(_SCOPE_VERSION, __version__.encode()),
)

#: the encoded Resource message of the resources seen last (one per process, in practice);
#: the Resource is held so that its id is not reused while cached
_RESOURCES: dict[int, tuple[Resource, bytes, bytes]] = {}
_MAX_RESOURCES: Final = 8


def _resource(resource: Resource) -> tuple[bytes, bytes]:
    """ResourceSpans.resource and ResourceSpans.schema_url, tags and lengths included."""
    cached = _RESOURCES.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1], cached[2]
    parts: list[bytes] = []
    _attributes_one_by_one(_RESOURCE_ATTRIBUTE, resource.attributes, parts)
    encoded = _length_delimited(_RESOURCE_SPANS_RESOURCE, b"".join(parts))
    schema = resource.schema_url.encode()
    schema_url = _length_delimited(_RESOURCE_SPANS_SCHEMA_URL, schema) if schema else b""
    if len(_RESOURCES) >= _MAX_RESOURCES:
        _RESOURCES.clear()
    _RESOURCES[id(resource)] = (resource, encoded, schema_url)
    return encoded, schema_url


def encode_traces(spans: Iterable[SpanRecord], resource: Resource) -> bytes:
    """The serialized ExportTraceServiceRequest of ``spans`` under ``resource``: the bytes of
    ``encode_trace_request(to_readable_spans(spans, resource)).SerializeToString()``."""
    # the request is joined once: its head (tags and lengths) goes into the first slots when
    # the spans' sizes are known
    parts: list[bytes] = [b"", b"", b"", b"", b"", _SCOPE]
    _spans(spans, parts)
    if len(parts) == 6:
        return b""
    resource_part, schema_url = _resource(resource)
    scope_spans_size = sum(map(len, parts))
    size_of_scope_spans = _varint(scope_spans_size)
    resource_spans_size = (
        len(resource_part) + 1 + len(size_of_scope_spans) + scope_spans_size + len(schema_url)
    )
    parts[:5] = (
        _REQUEST_RESOURCE_SPANS,
        _varint(resource_spans_size),
        resource_part,
        _RESOURCE_SPANS_SCOPE_SPANS,
        size_of_scope_spans,
    )
    parts.append(schema_url)
    return b"".join(parts)


def trace_request(spans: Iterable[SpanRecord], resource: Resource) -> ExportTraceServiceRequest:
    """The ExportTraceServiceRequest of ``spans`` under ``resource``, equal to
    ``encode_trace_request(to_readable_spans(spans, resource))``."""
    request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(encode_traces(spans, resource))
    return request
