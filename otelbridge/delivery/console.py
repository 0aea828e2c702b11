"""The ``console`` exporter: a readable tree per call of exactly what would be exported.

``replay`` renders each mapped call whole. ``serve`` gets spans as they stream (turns first,
the root at the call's end), so :class:`ConsoleTransport` keeps a call's spans until its root
span arrives and then prints the call's tree; spans that come after the root (a late
``call_analysis``) print as a short tree of their own. Metrics print one line per metric and
export.

Every value that came from a call (ids, agent and tool names, roles, statuses, end reasons,
errors, metric names) is printed through :func:`otelbridge.logs.escape_controls`, as the log
prints it: an ESC, OSC or CSI sequence, a ``\\r`` or a bidi control in a call id cannot
retitle, clear or rewrite the terminal that reads the tree.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Final, TextIO

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from otelbridge.delivery.environment import Signal
from otelbridge.delivery.transport import SendResult
from otelbridge.logs import escape_controls
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import Attributes, AttributeValue, EventRecord, MappedCall, SpanRecord

_TEXT_PREVIEW: Final = 60
#: calls whose root has not arrived, kept by the serve console at most (oldest printed first)
MAX_PENDING_CALLS: Final = 1000


def _shown(value: object) -> str:
    """A value from a call, as printed: control characters escaped (``\\x1b``, ``\\r``…)."""
    return escape_controls(str(value))


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:.3f}s"


def _describe(span: SpanRecord, origin_ns: int) -> str:
    a = span.attributes
    parts = [_shown(span.name), f"+{_seconds(span.start_ns - origin_ns)}",
             f"{_seconds(span.end_ns - span.start_ns)}"]  # fmt: skip
    for key, label in ((c.TTS_TTFB, "tts_ttfb"), (c.STT_TTFB, "stt_ttfb")):
        if key in a:
            parts.append(f"{label}={_shown(a[key])}s")
    if a.get(c.TURN_INTERRUPTED) is True:
        parts.append("interrupted")
    if span.events:
        parts.append(f"{len(span.events)} events")
    if a.get(c.TIME_ADJUSTED):
        reasons = a.get(c.TIME_ADJUSTMENTS, [])
        shown = ",".join(map(str, reasons)) if isinstance(reasons, list) else reasons
        parts.append(f"adjusted({_shown(shown)})")
    text = a.get(c.TURN_TEXT)
    if isinstance(text, str):
        preview = text if len(text) <= _TEXT_PREVIEW else text[: _TEXT_PREVIEW - 1] + "…"
        parts.append(repr(preview))  # repr escapes every non-printable character
    return "  ".join(parts)


def render_spans(spans: Sequence[SpanRecord], *, points: int | None = None) -> str:
    """The tree of one call's ``spans``: the root's line, then its descendants. Without the
    root among them (spans exported after it), the head names the call's trace."""
    root = next((s for s in spans if s.is_root), None)
    ids = {s.span_id for s in spans}
    if root is not None:
        a = root.attributes
        head = [
            f"call {_shown(a.get(c.CALL_ID))}",
            f"trace {root.trace_id:032x}",
            f"agent {_shown(a.get(c.AGENT_NAME) or a.get(c.AGENT_ID))}",
            _shown(a.get(c.CALL_STATUS))
            + (f" ({_shown(a[c.CALL_END_REASON])})" if c.CALL_END_REASON in a else ""),
            _seconds(root.end_ns - root.start_ns),
        ]
        if root.error:
            head.append(f"ERROR: {_shown(root.error)}")
        origin = root.start_ns
    else:
        call_id = next((s.attributes[k] for s in spans for k in (c.CALL_ID, c.GEN_AI_CONVERSATION_ID)
                        if k in s.attributes), None)  # fmt: skip
        head = [f"call {_shown(call_id)}", f"trace {spans[0].trace_id:032x}", "(spans after the root)"]
        origin = min(s.start_ns for s in spans)
    lines = ["  ".join(head)]
    children: dict[int | None, list[SpanRecord]] = {}
    for span in spans:
        if span is root:
            continue
        parent = span.parent_span_id if span.parent_span_id in ids else None
        children.setdefault(parent, []).append(span)

    def walk(parent: int | None, prefix: str) -> None:
        kids = sorted(children.get(parent, []), key=lambda s: (s.start_ns, s.span_id))
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{prefix}{'└─ ' if last else '├─ '}{_describe(kid, origin)}")
            walk(kid.span_id, prefix + ("   " if last else "│  "))

    walk(root.span_id if root is not None else None, "")
    if root is not None:
        walk(None, "")  # children whose parent is not the root and not here (none normally)
        if root.events:
            lines.append(f"   ({len(root.events)} log events outside any turn)")
    if points is not None:
        lines.append(f"   {points} metric points")
    return "\n".join(lines)


def render(mapped: MappedCall) -> str:
    return render_spans(mapped.spans, points=len(mapped.points))


def render_all(calls: Iterable[MappedCall]) -> str:
    return "\n\n".join(render(m) for m in calls)


# --- OTLP requests back into records (serve) ----------------------------------------------
def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _attributes(kvs: Iterable[KeyValue]) -> Attributes:
    attributes: Attributes = {}
    for kv in kvs:
        value: AttributeValue = _value(kv.value)
        attributes[kv.key] = value
    return attributes


def span_records(body: bytes) -> list[SpanRecord]:
    """The spans of a serialized ExportTraceServiceRequest (``DecodeError`` if it is not one)."""
    request = ExportTraceServiceRequest.FromString(body)
    records = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                error = span.status.message if span.status.code == Status.STATUS_CODE_ERROR else None
                parent = int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else None
                events = [EventRecord(e.name, e.time_unix_nano, _attributes(e.attributes))
                          for e in span.events]  # fmt: skip
                records.append(
                    SpanRecord(
                        key="",
                        name=span.name,
                        trace_id=int.from_bytes(span.trace_id, "big"),
                        span_id=int.from_bytes(span.span_id, "big"),
                        parent_span_id=parent,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        events=events,
                        error=error,
                    )
                )
    return records


def metric_lines(body: bytes) -> list[str]:
    """One line per metric of a serialized ExportMetricsServiceRequest."""
    request = ExportMetricsServiceRequest.FromString(body)
    lines = []
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                unit = f" {_shown(metric.unit)}" if metric.unit else ""
                if kind in ("sum", "gauge"):
                    numbers = (metric.sum if kind == "sum" else metric.gauge).data_points
                    total = sum(getattr(n, n.WhichOneof("value") or "as_int") for n in numbers)
                    summary = f"{len(numbers)} series, total {total:g}{unit}"
                elif kind == "histogram":
                    histograms = metric.histogram.data_points
                    count, total = sum(p.count for p in histograms), sum(p.sum for p in histograms)
                    summary = f"{len(histograms)} series, {count} observations, sum {total:g}{unit}"
                else:
                    summary = str(kind)
                lines.append(f"metric {_shown(metric.name)} ({kind}): {summary}")
    return lines


class ConsoleTransport:
    """Prints each call's tree to ``stream`` (stdout by default) when its root span arrives,
    and a line per metric per export. Thread-safe; never raises."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._pending: dict[int, list[SpanRecord]] = {}

    def endpoint(self, signal: Signal) -> str:
        return "console"

    def _trees(self, spans: list[SpanRecord]) -> list[str]:
        """Add ``spans``; the trees now complete (their root arrived), oldest call first."""
        done: list[int] = []
        for span in spans:
            self._pending.setdefault(span.trace_id, []).append(span)
            if span.is_root:
                done.append(span.trace_id)
        while len(self._pending) > MAX_PENDING_CALLS:  # calls that never end: print what is there
            done.append(next(iter(self._pending)))
        return [render_spans(self._pending.pop(t)) for t in dict.fromkeys(done) if t in self._pending]

    def send(self, signal: Signal, body: bytes) -> SendResult:
        try:
            records = span_records(body) if signal == "traces" else []
            lines = metric_lines(body) if signal == "metrics" else []
        except (DecodeError, ValueError, RuntimeError) as exc:
            return SendResult("reject", "decode error", f"not an OTLP {signal} request: {type(exc).__name__}")
        try:
            with self._lock:
                text = "".join(tree + "\n\n" for tree in self._trees(records)) + "".join(
                    line + "\n" for line in lines
                )
                stream = self._stream if self._stream is not None else sys.stdout
                stream.write(text)
                stream.flush()
        except Exception as exc:  # never raise: e.g. a closed pipe
            return SendResult("retry", "error", f"cannot write: {type(exc).__name__}")
        what = f"{len(records)} spans" if signal == "traces" else f"{len(lines)} metrics"
        return SendResult("ok", "console", what)

    def close(self) -> None:
        """Prints the calls still without a root; the stream is not ours: flushed, not closed."""
        stream = self._stream if self._stream is not None else sys.stdout
        with contextlib.suppress(Exception), self._lock:
            for spans in self._pending.values():
                stream.write(render_spans(spans) + "\n\n")
            self._pending.clear()
            stream.flush()
