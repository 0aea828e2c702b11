"""What is still to be exported of a call, given the span ids already exported: pure.

The daemon exports a call piece by piece as webhooks arrive (``call_turn`` spans at once, the
root at ``call_completed``/``call_failed``) and the ledger remembers every span id it exported.
Whatever path a call takes — turns streamed one by one, a completion that arrives first, the
same delivery twice, a List Calls poll of a call webhooks already half exported — the spans
and points of the call go out exactly once, because every increment here is the mapping of
everything known about the call minus what the ledger holds.

Rules (docs/conventions.md, "Streaming"):

* A span goes out once: the ledger (``exported``) decides.
* Metric points follow their span: a point goes out with the span it points at.
* Log items (``system`` transcript entries) arrive only with a whole call. They go out with the
  root span, never before it: on their turn when that turn goes out together with the root,
  otherwise (their turn was streamed earlier) as events of the root span. The ledger holds an
  id per log item settled (:func:`log_item_ids`) beside the span ids: when the root is already
  out, an item it went out with adds nothing, and one it did not carry can no longer be placed
  and is counted as ``late_log_items``, once (its id goes into the ledger too).
* A summary that arrives after the root went out becomes a ``call_analysis`` span, a child of
  the root at the time of the analysis event (:func:`analysis_span`), which also carries it as
  OpenInference's ``output.value`` (the root's can no longer change).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from otelbridge.cartesia.models import AgentCall, TranscriptItem
from otelbridge.mapping import conventions as c
from otelbridge.mapping import ids
from otelbridge.mapping.latency import TurnTiming, latency_after
from otelbridge.mapping.metrics import map_call_points, turn_points
from otelbridge.mapping.policy import MappingOptions
from otelbridge.mapping.records import MetricPoint, SpanRecord, event_time
from otelbridge.mapping.traces import CallContext, map_call_spans, map_turn, openinference_text


@dataclass(slots=True)
class Increment:
    spans: list[SpanRecord] = field(default_factory=list)
    points: list[MetricPoint] = field(default_factory=list)
    #: log items that could not be placed: their span and the root were already exported
    late_log_items: int = 0
    #: the ledger ids (:func:`log_item_ids`) of the log items this increment settles: those that
    #: go out with its root, and those it counts late
    log_items: list[int] = field(default_factory=list)

    @property
    def root(self) -> SpanRecord | None:
        return next((s for s in self.spans if s.parent_span_id is None), None)

    def __bool__(self) -> bool:
        return bool(self.spans or self.points)

    def only(self, span_ids: Collection[int]) -> Increment:
        """The spans of ``span_ids``, and their points."""
        return Increment(
            [s for s in self.spans if s.span_id in span_ids],
            [p for p in self.points if p.span_id in span_ids],
            self.late_log_items,
            self.log_items,
        )


def call_increment(
    call: AgentCall,
    options: MappingOptions,
    exported: Collection[int],
    *,
    with_root: bool,
    fallback_end_ns: int | None = None,
    known_turns: Iterable[TurnTiming] = (),
) -> Increment:
    """Everything of ``call`` not yet in ``exported``. Without ``with_root`` the root span, the
    call-level points and every log item stay back (for the call's end). ``known_turns``: the
    call's turns received apart from ``call`` (for response latency)."""
    spans = map_call_spans(call, options, fallback_end_ns, known_turns)
    root = spans.root
    root_new = with_root and root.span_id not in exported
    emit = {s.span_id for s in spans.all() if s.span_id not in exported}
    if not root_new:
        emit.discard(root.span_id)

    late = 0
    settled: list[int] = []  # the log items' ledger ids: out with the root now, or late
    item_ids = log_item_ids(call) if with_root and spans.log_events else {}
    for index, target, event in spans.log_events:
        if root_new:
            settled.append(item_ids[index])
            if target.span_id in emit:
                continue  # goes out on its own span, together with the root
        target.events.remove(event)
        if root_new:
            root.events.append(event)
            if index in spans.log_metric_spans:
                spans.log_metric_spans[index] = root
        else:
            spans.log_metric_spans.pop(index, None)
            if with_root and item_ids[index] not in exported:  # else: out with the root before
                late += 1
                settled.append(item_ids[index])
    root.events.sort(key=event_time)

    points = [p for p in map_call_points(call, spans) if p.span_id in emit]
    return Increment([s for s in spans.all() if s.span_id in emit], points, late, settled)


def log_item_ids(call: AgentCall) -> dict[int, int]:
    """Transcript index -> ledger id of each log item of ``call``: a span id's hash of the key
    ``log:{kind}:{name}:{start}`` (``:{n}`` for the n-th item of one key), what the item is and
    not its place, which differs between the API's copy of a call and one assembled from
    webhooks. No span has such a key: the id never names a span."""
    out: dict[int, int] = {}
    occurrences: dict[str, int] = {}
    for index, item in enumerate(call.transcript):
        if not item.is_system:
            continue
        if item.log_metric is not None:
            base = f"log:metric:{item.log_metric.name}:{ids.start_key(item.start_timestamp)}"
        elif item.log_event is not None:
            base = f"log:event:{item.log_event.event}:{ids.start_key(item.start_timestamp)}"
        else:
            continue
        n = occurrences[base] = occurrences.get(base, 0) + 1
        out[index] = ids.span_id(call.id, base if n == 1 else f"{base}:{n}")
    return out


def turn_increment(
    ctx: CallContext,
    item: TranscriptItem,
    exported: Collection[int],
    previous: TurnTiming | None = None,
    timing: TurnTiming | None = None,
) -> Increment:
    """One turn of a ``call_turn`` webhook (and its tool calls), minus what is out already;
    ``previous`` is the spoken turn before it among those received (for response latency),
    ``timing`` the turn's own ``TurnTiming.of(item)`` where the caller has it already."""
    timing = TurnTiming.of(item) if timing is None else timing
    spans = map_turn(ctx, item, response_latency=latency_after(previous, timing))
    whole = Increment(spans, turn_points(ctx, item, spans))
    return whole.only({s.span_id for s in spans if s.span_id not in exported}) if exported else whole


def analysis_span(ctx: CallContext, summary: str, at_ns: int) -> SpanRecord:
    """The summary of a call whose root span is already out: an instant child of the root."""
    sink = ctx.sink(c.OPERATION_CALL_ANALYSIS)
    span = SpanRecord(
        key=ids.analysis_key(),
        name=c.SPAN_CALL_ANALYSIS,
        trace_id=ctx.trace_id,
        span_id=ids.span_id(ctx.call_id, ids.analysis_key()),
        parent_span_id=ctx.root_span_id,
        start_ns=at_ns,
        end_ns=at_ns,
        attributes=sink.attributes,
    )
    sink.put(c.CALL_SUMMARY, summary)
    # the root went out without it: here is where an OpenInference backend finds the summary
    sink.put(c.OI_SPAN_KIND, c.OI_KIND_CHAIN)
    openinference_text(sink, c.OI_OUTPUT_VALUE, c.OI_OUTPUT_MIME_TYPE, summary, c.MIME_TEXT)
    sink.list_cuts()
    return span
