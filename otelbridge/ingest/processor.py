"""Inbox -> calls -> spool: the streaming assembly of webhook deliveries, exactly once.

:meth:`Processor.process_batch` claims inbox rows (:meth:`otelbridge.store.InboxStore.claim`)
and, in the same transaction of the state store, updates the calls they belong to, spools one
OTLP request with every new span, records the new span ids in the ledger and stores the new
metric points. A crash anywhere leaves either all of it or none of it; re-delivered or
re-processed events find their spans in the ledger and add nothing.

Per event type (see :mod:`otelbridge.mapping.increments` for the rules):

* ``call_turn`` — once the call's start time (the anchor of turn offsets) is known, the turn
  and its tool calls go out at once, with their TTFB points. Before that (a turn that beats
  its ``call_started``) the event waits in ``call_events``.
* ``call_started`` — sets the anchor and agent name; releases turns that waited.
* ``call_completed`` / ``call_failed`` — the call is assembled from every event kept for it
  (:class:`~otelbridge.ingest.assembly.CallAssembler`); the root span and whatever the turn
  stream missed go out; the call is closed and its kept events deleted.
* ``post_call_analysis`` — before the root is out, the summary waits and lands on the root;
  after, it goes out as a ``call_analysis`` span.

A call that hears nothing for ``call_timeout`` is exported as it stands (:meth:`sweep`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json, to_json

from otelbridge.cartesia.models import AgentCall, EvaluationResult, parse_evaluation
from otelbridge.cartesia.webhooks import (
    CALL_STARTED,
    CALL_TURN,
    END_EVENTS,
    POST_CALL_ANALYSIS,
    WebhookEvent,
    parse_webhook_event,
    synthetic_body,
    synthetic_event,
)
from otelbridge.delivery.otlp import MAX_SPANS_PER_REQUEST
from otelbridge.delivery.spool import Spool
from otelbridge.ingest.assembly import CallAssembler
from otelbridge.mapping import conventions as c
from otelbridge.mapping.deployments import Labeller, fold, folded_count, labeller
from otelbridge.mapping.evaluations import map_evaluation
from otelbridge.mapping.increments import Increment, analysis_span, call_increment, turn_increment
from otelbridge.mapping.latency import TurnTiming, preceding, spoken_timings
from otelbridge.mapping.policy import MappingOptions
from otelbridge.mapping.records import InstrumentKind, MetricPoint, SpanRecord
from otelbridge.mapping.traces import CallContext, UnplaceableCallError
from otelbridge.store import (
    CallRow,
    Dropped,
    InboxStore,
    RunningCall,
    StateStore,
    StateTx,
    StoreWriteError,
)

log = logging.getLogger("otelbridge.processor")

#: bodies read per batch: a batch of whole polled calls stays small in memory
BATCH_BYTES = 512 * 1024
#: processed inbox rows deleted together while rows keep coming (also whenever the inbox runs
#: dry). Under ``serve`` the webhook process deletes them first, inside its own commits.
INBOX_TRIM_ROWS = 10_000
#: ... or as many bytes of bodies: one delete of a backfill's whole calls (~15 kB each) stays
#: small (deleting 10,000 of them at once raised the backfill's peak RSS by 30 MB)
INBOX_TRIM_BYTES = 8 * 1024 * 1024
#: inbox rows taken between two checkpoints of inbox.db's WAL (~2 MB of webhooks)
INBOX_CHECKPOINT_ROWS = 2000
#: calls whose mapping context (ids, common attributes) is kept between their events: a streamed
#: turn built it afresh, two hashes and the common attributes each time
CONTEXTS_KEPT = 1024
#: a call read from the List Calls API, validated, and its JSON as the API sent it
ListedCall = tuple[AgentCall, dict[str, Any]]
#: meta key: the last call of the ledger the sweep's walk reached (it forgets the ledger rows
#: of calls with no row: an evaluation's, whose call the processor never heard of or forgot)
LEDGER_WALK = "ledger_walk"
#: calls of the ledger walked per sweep (~7 ms on SQLite): a million calls kept take 8 hours
#: of sweeps every 30 s, past the retention
LEDGER_WALK_CALLS = 1000
#: the ``source`` of the synthetic events of calls the poller read (poller.py)
POLL = "poll"
#: the agent of a call first heard of through an event that does not name it (a ``call_turn``
#: may come without ``agent_id``), until one does
UNKNOWN_AGENT = "unknown"
#: an LLM-judge result read by the poller (``{"type": ..., "call_id", "agent_id", "evaluation": {...}}``)
EVALUATION_EVENT = "otelbridge.evaluation"


class _EventFailed(Exception):
    """An event failed in a batch run without a savepoint per event."""


@dataclass(slots=True)
class BatchResult:
    events: int = 0
    spans: int = 0
    #: (points table id, point) stored by this batch, to record into the meter
    points: list[tuple[int, MetricPoint]] = field(default_factory=list)
    calls_closed: int = 0
    late_log_items: int = 0
    failed_events: int = 0
    dropped: Dropped = field(default_factory=Dropped)
    events_by_type: dict[str, int] = field(default_factory=dict)
    #: points whose deployment read ``other`` (past the per-agent bound)
    deployments_folded: int = 0
    #: (agent id, deployment id) of deployments that stopped being one of the most recent: their
    #: series are dropped from the metrics
    fallen_deployments: list[tuple[str, str]] = field(default_factory=list)


def points_to_json(points: Sequence[MetricPoint]) -> str:
    """A batch's points as one stored row: each instrument (name, kind, unit, description),
    attribute set and span (key, trace id, span id) once, then a field array per point naming
    them by index. A call's 83 points have about 10 attribute sets and 22 spans: repeated, they
    were two thirds of the row (a row per point, before, cost an insert and a serialization
    each)."""
    instrument_at: dict[str, int] = {}
    instruments: list[list[str]] = []
    # by value and type: True == 1, but a stored attribute keeps its type
    attributes_at: dict[tuple[object, ...], int] = {}
    attribute_sets: list[dict[str, str | bool | int]] = []
    span_at: dict[tuple[str, int, int], int] = {}
    spans: list[tuple[str, int, int]] = []
    rows: list[tuple[int, int | float, int, int]] = []
    for p in points:
        at = instrument_at.get(p.instrument)
        if at is None:
            at = instrument_at[p.instrument] = len(instruments)
            instruments.append([p.instrument, p.kind, p.unit, p.description])
        attributes = p.attributes
        key = (*attributes.items(), *map(type, attributes.values()))
        attributes_index = attributes_at.get(key)
        if attributes_index is None:
            attributes_index = attributes_at[key] = len(attribute_sets)
            attribute_sets.append(attributes)
        span = (p.span_key, p.trace_id, p.span_id)
        span_index = span_at.get(span)
        if span_index is None:
            span_index = span_at[span] = len(spans)
            spans.append(span)
        rows.append((at, p.value, attributes_index, span_index))
    row = {"instruments": instruments, "attributes": attribute_sets, "spans": spans, "points": rows}
    return to_json(row).decode()


def points_from_json(text: str) -> list[MetricPoint]:
    """A stored row's points: a batch (:func:`points_to_json`; or, of earlier versions, a batch
    with each point's attributes and span in full, or one point as an object)."""
    data: dict[str, Any] = from_json(text)
    if "points" not in data:
        data["kind"] = InstrumentKind(data["kind"])
        return [MetricPoint(**data)]
    instruments = [(name, InstrumentKind(kind), unit, description)
                   for name, kind, unit, description in data["instruments"]]  # fmt: skip
    points = []
    if "spans" not in data:  # each point in full
        for at, value, attributes, key, trace_id, span_id in data["points"]:
            name, kind, unit, description = instruments[at]
            points.append(
                MetricPoint(name, kind, unit, description, value, attributes, key, trace_id, span_id)
            )
        return points
    attribute_sets, spans = data["attributes"], data["spans"]
    for at, value, attributes_index, span_index in data["points"]:
        name, kind, unit, description = instruments[at]
        key, trace_id, span_id = spans[span_index]
        # a dict of its own: a point's attributes are never shared with another's
        attributes = dict(attribute_sets[attributes_index])
        points.append(MetricPoint(name, kind, unit, description, value, attributes, key, trace_id, span_id))
    return points


class Processor:
    def __init__(
        self,
        state: StateStore,
        inbox: InboxStore,
        spool: Spool,
        options: MappingOptions,
        encode_spans: Callable[[list[SpanRecord]], bytes],
        *,
        call_timeout_ns: int,
        retention_ns: int,
        deployments_per_agent: int = 20,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._state, self._inbox, self._spool = state, inbox, spool
        self._options = options
        self._encode = encode_spans
        self._call_timeout_ns = call_timeout_ns
        self._retention_ns = retention_ns
        self._deployments_per_agent = deployments_per_agent
        #: agent -> its deployments' first calls, as read in the current transaction
        self._first_calls: dict[str, dict[str, int]] = {}
        #: by every field a context is built from: a call row that learns its agent's name or
        #: its deployment gets a new one
        self._contexts = functools.lru_cache(maxsize=CONTEXTS_KEPT)(self._new_context)
        #: deployments that fell out of the bound in the current batch (for its result)
        self._fallen: list[tuple[str, str]] = []
        self._clock = clock
        #: what this processor last deleted inbox.db through (None: nothing yet), and the rows
        #: and bytes taken since
        self._trimmed_through: int | None = None
        self._untrimmed_rows = 0
        self._untrimmed_bytes = 0
        self._uncheckpointed = 0

    # --- batches ------------------------------------------------------------------------
    def _new_batch(self) -> BatchResult:
        """The result of a batch about to start, and its caches reset: the deployments read in
        its transaction, the ones that fall out of the bound in it."""
        result = BatchResult()
        self._first_calls.clear()
        self._fallen = result.fallen_deployments
        return result

    def watermark(self) -> int:
        """How far the inbox has been processed (the engine's position; 0 before the first)."""
        return self._inbox.processed_through() or 0

    def process_batch(self, limit: int = 500) -> BatchResult:
        # First without a savepoint per event (two statements each; two round trips on
        # PostgreSQL): an event that fails rolls the whole batch back, which then runs again
        # with them, where that event alone is skipped.
        try:
            return self._process_batch(limit, guarded=False)
        except _EventFailed:
            return self._process_batch(limit, guarded=True)

    def _process_batch(self, limit: int, *, guarded: bool) -> BatchResult:
        now = self._clock()
        result = self._new_batch()
        spans: list[SpanRecord] = []
        points: list[MetricPoint] = []
        with self._state.transaction() as tx:
            # claimed inside the write transaction: committed with what it produced, or not at all
            claim = self._inbox.claim(tx, limit, BATCH_BYTES)
            rows = claim.rows
            for row in rows:
                result.events += 1
                increment = self._event(tx, row.body, row.received_ns, result, guarded=guarded)
                spans += increment.spans
                points += increment.points
                result.late_log_items += increment.late_log_items
            if rows:
                self._spool_batch(tx, spans, points, now, result)
        watermark = claim.through
        # Deleting processed rows is a write (and an fsync) on inbox.db, whose lock the webhook
        # side needs for every group commit: here it is done every INBOX_TRIM_ROWS rows or when
        # the inbox runs dry (the webhook process also deletes them in its commits). The
        # claim, not the deletion, marks progress (an engine that deletes as it claims does
        # nothing here).
        if rows:
            self._untrimmed_rows += len(rows)
            self._untrimmed_bytes += sum(len(row.body) for row in rows)
            self._uncheckpointed += len(rows)
            if self._uncheckpointed >= INBOX_CHECKPOINT_ROWS:
                self._inbox.checkpoint()  # here, in the background process, not on the request path
                self._uncheckpointed = 0
        due = self._untrimmed_rows >= INBOX_TRIM_ROWS or self._untrimmed_bytes >= INBOX_TRIM_BYTES
        if watermark != self._trimmed_through and (not rows or due):
            self._inbox.delete_through(watermark)
            self._trimmed_through, self._untrimmed_rows, self._untrimmed_bytes = watermark, 0, 0
        return result

    def take_calls(
        self, calls: Sequence[ListedCall], source: str, running: Sequence[RunningCall], now_ns: int
    ) -> BatchResult:
        """Calls read from the List Calls API (validated by the caller), processed at once as
        their synthetic events, in one transaction with the ``running`` ones to re-read: no
        inbox row, no second validation. Only the holder of the pipeline lease may call this."""
        result = self._new_batch()
        spans: list[SpanRecord] = []
        points: list[MetricPoint] = []
        with self._state.transaction() as tx:
            for call, raw in calls:
                result.events += 1
                event = synthetic_event(call, source)
                # a final call is processed whole; an unfinished one may be kept, as stored JSON
                body = None if call.is_final else synthetic_body(event, raw)
                increment = self._take(tx, event, body, now_ns, result)
                spans += increment.spans
                points += increment.points
                result.late_log_items += increment.late_log_items
            if running:
                tx.remember_running(running)
            self._spool_batch(tx, spans, points, now_ns, result)
        return result

    def sweep(self, *, every_open_call: bool = False) -> BatchResult:
        """Export calls silent for ``call_timeout`` (``every_open_call``: every call still open,
        as a drain retiring the volume does); forget calls closed before the retention, and the
        ledger rows of no call older than it."""
        now = self._clock()
        result = self._new_batch()
        spans: list[SpanRecord] = []
        points: list[MetricPoint] = []
        silent_since = now if every_open_call else now - self._call_timeout_ns
        with self._state.transaction() as tx:
            for call_id in tx.stale_calls(silent_since, 500):
                call = tx.load_call(call_id)
                assert call is not None
                if every_open_call:
                    log.info("call %s: still open, exporting it as it stands", call_id)
                else:
                    log.info(
                        "call %s: no news for %ds, exporting it as it stands",
                        call_id,
                        self._call_timeout_ns // 1_000_000_000,
                    )
                increment = self._sync(tx, call, None, with_root=True)
                self._taken(tx, call, increment, now)
                self._close(tx, call, now)
                result.calls_closed += 1
                spans += increment.spans
                points += increment.points
                self._save(tx, call)
            result.deployments_folded += folded_count(points)
            self._spool_batch(tx, spans, points, now, result)
            cutoff = now - self._retention_ns
            tx.forget_calls_closed_before(cutoff, 5000)
            # what no call row owns (an evaluation's spans): a step of a walk over the ledger
            _, walked = tx.forget_ledger_without_call(
                tx.get_meta(LEDGER_WALK) or "", cutoff, LEDGER_WALK_CALLS
            )
            tx.set_meta(LEDGER_WALK, walked or "")
            tx.purge_dead_letters(cutoff)
            result.dropped = self._spool.enforce_caps(tx, now)
        return result

    def _spool_batch(
        self,
        tx: StateTx,
        spans: list[SpanRecord],
        points: list[MetricPoint],
        now: int,
        result: BatchResult,
    ) -> None:
        for start in range(0, len(spans), MAX_SPANS_PER_REQUEST):
            chunk = spans[start : start + MAX_SPANS_PER_REQUEST]
            call_ends = [s.end_ns for s in chunk if s.parent_span_id is None]
            tx.spool_add("traces", self._encode(chunk), len(chunk), now, call_ends=call_ends)
            result.spans += len(chunk)
        if spans:
            result.dropped.merge(self._spool.enforce_caps(tx, now))
        if points:
            row_id = tx.add_point(points_to_json(points))
            result.points.extend((row_id, point) for point in points)

    # --- one event ------------------------------------------------------------------------
    def _event(
        self, tx: StateTx, body: bytes, received_ns: int, result: BatchResult, *, guarded: bool
    ) -> Increment:
        try:
            data = from_json(body)
            if isinstance(data, dict) and data.get("type") == EVALUATION_EVENT:
                evaluation = parse_evaluation(data.get("evaluation"))
                result.events_by_type[EVALUATION_EVENT] = result.events_by_type.get(EVALUATION_EVENT, 0) + 1
                work = functools.partial(self._evaluation, tx, evaluation, received_ns)
                return self._isolated(tx, EVALUATION_EVENT, evaluation.call_id, result, guarded, work)
            event = parse_webhook_event(data)
        except (ValueError, ValidationError) as exc:  # validated on receipt: only a schema change
            log.error("inbox event skipped: no longer valid (%s)", type(exc).__name__)
            result.failed_events += 1
            return Increment()
        return self._take(tx, event, body, received_ns, result, guarded=guarded)

    def _take(
        self,
        tx: StateTx,
        event: WebhookEvent,
        body: bytes | None,
        received_ns: int,
        result: BatchResult,
        *,
        guarded: bool = True,
    ) -> Increment:
        """One validated event (``body``: its JSON, kept when the event must wait; None for a
        final listed call, which never waits). ``guarded``: in a savepoint of its own, skipped
        alone if it fails; else its failure is :class:`_EventFailed`, for the whole batch."""
        result.events_by_type[event.type] = result.events_by_type.get(event.type, 0) + 1
        call_id = event.resolved_call_id
        if call_id is None or not event.is_known:
            return Increment()
        work = functools.partial(self._apply, tx, event, body, call_id, received_ns)
        return self._isolated(tx, event.type, call_id, result, guarded, work)

    def _isolated(
        self,
        tx: StateTx,
        event_type: str,
        call_id: str,
        result: BatchResult,
        guarded: bool,
        work: Callable[[], Increment],
    ) -> Increment:
        """``work`` for one event: ``guarded``, in a savepoint of its own, skipped alone if it
        fails; else its failure is :class:`_EventFailed`, for the whole batch to run again
        guarded. A failure of the store itself fails the batch."""
        try:
            with tx.savepoint() if guarded else nullcontext():
                increment = work()
        except StoreWriteError:  # the store failed, not the event: the whole batch fails
            raise
        except Exception as exc:  # a bug must not wedge the inbox: skip the event, loudly
            if not guarded:
                raise _EventFailed from exc
            self._first_calls.clear()  # it may hold what the rollback undid
            log.exception("call %s: %s event could not be processed and was skipped", call_id, event_type)
            result.failed_events += 1
            return Increment()
        result.deployments_folded += folded_count(increment.points)
        return increment

    def _evaluation(self, tx: StateTx, evaluation: EvaluationResult, received_ns: int) -> Increment:
        span, points = map_evaluation(evaluation, self._options)
        if not tx.newly_exported(evaluation.call_id, [span.span_id], received_ns):
            return Increment()  # read before: its span is out already
        return Increment([span], points)

    def _apply(
        self, tx: StateTx, event: WebhookEvent, body: bytes | None, call_id: str, received_ns: int
    ) -> Increment:
        agent_id = event.agent_id or (event.call.agent_id if event.call is not None else None)
        call = tx.load_call(call_id) or CallRow(call_id, agent_id or UNKNOWN_AGENT)
        if agent_id and call.agent_id == UNKNOWN_AGENT:  # first heard of through a turn without it
            call.agent_id = agent_id
        call.last_event_ns = max(call.last_event_ns, received_ns)
        if event.call is not None:
            call.agent_name = event.call.agent_name or call.agent_name
            call.deployment_id = event.call.deployment_id or call.deployment_id
            if event.call.start_time is not None and call.start_ns is None:
                call.start_ns = event.call.start_time
        if event.type == CALL_STARTED and event.is_legacy and call.start_ns is None:
            call.start_ns = event.timestamp
        closed = call.closed_ns is not None
        increment = Increment()
        ledgered = False  # a streamed turn's spans, or a late summary's, are in the ledger once mapped

        if event.type == CALL_TURN and event.turn is not None:
            timing = TurnTiming.of(event.turn)
            if call.start_ns is not None:
                previous = self._preceding(tx, call, timing)
                whole = turn_increment(self._context(call), event.turn, (), previous, timing)
                # its spans recorded in the ledger at once: the ones not there before go out
                fresh = tx.newly_exported(call_id, [s.span_id for s in whole.spans], received_ns)
                increment = whole.only(fresh)
                ledgered = True
            else:
                self._keep(tx, call, body)
            self._remember_turns(tx, call, [timing])
        elif event.type == CALL_STARTED:
            if not closed:
                if event.source == POLL:
                    self._drop_superseded_polls(tx, call_id)
                self._keep(tx, call, body)
                if call.pending and call.start_ns is not None:
                    increment = self._sync(tx, call, None, with_root=False)
        elif event.type in END_EVENTS:
            # the end event joins the kept ones as parsed (closing drops them all anyway)
            increment = self._sync(tx, call, event, with_root=True, kept=not closed)
            if not closed:  # else a late or repeated end: only what is still missing
                self._close(tx, call, received_ns)
            elif event.call is not None and event.call.summary:
                # a copy read after the root went out (List Calls) may bring the summary the
                # webhook end lacked: as a post_call_analysis would, its own span
                late = self._late_summary(tx, call, event.call.summary, event, received_ns)
                increment.spans += late.spans  # ledgered again with the rest: no harm
        elif event.type == POST_CALL_ANALYSIS and event.analysis is not None:
            if not closed:
                self._keep(tx, call, body)
            elif event.analysis.summary:
                increment = self._late_summary(tx, call, event.analysis.summary, event, received_ns)
                ledgered = True

        self._taken(tx, call, increment, received_ns, ledgered=ledgered)
        self._save(tx, call)
        return increment

    def _late_summary(
        self, tx: StateTx, call: CallRow, summary: str, event: WebhookEvent, received_ns: int
    ) -> Increment:
        """The summary of a call whose root is out already (without one): a span of its own,
        once (ledgered here)."""
        if call.summary_exported or call.start_ns is None:
            return Increment()
        at = event.timestamp if event.timestamp is not None else received_ns
        span = analysis_span(self._context(call), summary, at)
        call.summary_exported = True
        if not tx.newly_exported(call.call_id, [span.span_id], received_ns):
            return Increment()  # read before: its span is out already
        return Increment([span])

    def _taken(
        self, tx: StateTx, call: CallRow, increment: Increment, now: int, *, ledgered: bool = False
    ) -> None:
        """Ledger the spans and log items of ``increment`` (unless ``ledgered``), bound the
        deployments of its points and note what its root settles."""
        if not ledgered and (increment.spans or increment.log_items):
            tx.record_exported(
                call.call_id, [*(s.span_id for s in increment.spans), *increment.log_items], now
            )
        if not increment.spans:
            return
        if increment.points:
            call_ns = call.start_ns if call.start_ns is not None else increment.spans[0].start_ns
            increment.points = fold(increment.points, self._labeller(tx, call.agent_id, call_ns))
        root = increment.root
        if root is not None:
            call.root_exported = True
            call.start_ns = call.start_ns if call.start_ns is not None else root.start_ns
            if c.CALL_SUMMARY in root.attributes:
                call.summary_exported = True

    def _sync(
        self,
        tx: StateTx,
        call: CallRow,
        current: WebhookEvent | None,
        *,
        with_root: bool,
        kept: bool = True,
    ) -> Increment:
        """Assemble the call from its kept events (and ``current``) and take what is missing."""
        assembler = CallAssembler()
        if kept:
            for raw in tx.kept_events(call.call_id):
                assembler.add(parse_webhook_event(from_json(raw)))
        if current is not None:
            assembler.add(current)
        assembled = assembler.calls()
        if not assembled:
            return Increment()
        built = assembled[0]
        whole = built.call
        if call.start_ns is not None and whole.start_time != call.start_ns:
            # The anchor the call's spans already have (streamed turns, an earlier root): the
            # assembled copy may lack it (a listed copy read before the call started, a 2025
            # end alone after the call closed), and a start derived anew misplaces its turns.
            whole = whole.model_copy(update={"start_time": call.start_ns})
        # turns received before (streamed): they may precede a transcript turn the stream missed
        known = tx.turns(call.call_id) if call.latest_turn is not None else []
        self._remember_turns(tx, call, spoken_timings(whole.transcript))
        try:
            increment = call_increment(
                whole,
                self._options,
                tx.exported(call.call_id),
                with_root=with_root,
                fallback_end_ns=built.fallback_end_ns,
                known_turns=known,
            )
        except UnplaceableCallError as exc:
            log.warning("%s; its spans wait for an event with a time", exc)
            return Increment()
        if increment.late_log_items:
            log.info(
                "call %s: %d log item(s) arrived after the root span was exported; not exported",
                call.call_id,
                increment.late_log_items,
            )
        if with_root:
            call.pending = False
        return increment

    def _context(self, call: CallRow) -> CallContext:
        assert call.start_ns is not None
        return self._contexts(call.call_id, call.agent_id, call.agent_name, call.start_ns, call.deployment_id)

    def _new_context(
        self, call_id: str, agent_id: str, agent_name: str | None, start_ns: int, deployment_id: str | None
    ) -> CallContext:
        return CallContext(call_id, agent_id, agent_name, start_ns, self._options, deployment_id)

    # --- storage ----------------------------------------------------------------------------
    @staticmethod
    def _preceding(tx: StateTx, call: CallRow, turn: TurnTiming) -> TurnTiming | None:
        """The received turn before ``turn``: the latest one when ``turn`` starts after it, else of
        those starting last before it (one index seek)."""
        latest = call.latest_turn
        if latest is None or latest.start_us < turn.start_us:
            return latest
        return preceding(tx.turns_starting_last_before(call.call_id, turn.start_us), turn.start_us)

    @staticmethod
    def _remember_turns(tx: StateTx, call: CallRow, turns: list[TurnTiming]) -> None:
        if not turns:
            return
        tx.remember_turns(call.call_id, turns)
        candidates = turns if call.latest_turn is None else [call.latest_turn, *turns]
        call.latest_turn = max(candidates, key=lambda t: t.order)

    def _labeller(self, tx: StateTx, agent_id: str, call_ns: int) -> Labeller:
        """Deployment labels for a call of ``agent_id``, the first calls kept in the store (read
        once per agent and transaction: most events of a batch are turns of few agents)."""
        first_calls = self._first_calls.get(agent_id)
        if first_calls is None:
            first_calls = self._first_calls[agent_id] = tx.deployments(agent_id)

        def changed(deployment_id: str, first_call_ns: int | None) -> None:
            if first_call_ns is None:
                tx.forget_deployment(agent_id, deployment_id)
            else:
                tx.set_deployment(agent_id, deployment_id, first_call_ns)

        def fell(deployment_id: str) -> None:
            self._fallen.append((agent_id, deployment_id))

        return labeller(first_calls, call_ns, self._deployments_per_agent, changed, fell)

    @staticmethod
    def _keep(tx: StateTx, call: CallRow, body: bytes | None) -> None:
        if body is None:  # only final listed calls come without one, and an end is never kept
            raise ValueError(f"call {call.call_id}: an event to keep came without its JSON")
        tx.keep_event(call.call_id, body)
        call.pending = True

    @staticmethod
    def _drop_superseded_polls(tx: StateTx, call_id: str) -> None:
        """Before a newer poll copy of a running call is kept: drop the older ones it holds
        all of (the poller re-reads the call every interval; each copy kept made every later
        event of the call parse them all). The first call_started kept stays, whatever its
        source: it is the one the assembler takes, the others add nothing to the call it
        assembles (assembly.py). A webhook's event is never dropped."""
        first_started = True
        superseded: list[int] = []
        for event_id, kept in tx.kept_events_with_ids(call_id):
            data = from_json(kept)
            if not isinstance(data, dict) or data.get("type") != CALL_STARTED:
                continue
            if first_started:
                first_started = False
            elif data.get("source") == POLL:
                superseded.append(event_id)
        if superseded:
            tx.drop_kept_events_by_id(call_id, superseded)

    @staticmethod
    def _close(tx: StateTx, call: CallRow, now: int) -> None:
        call.closed_ns = now
        call.pending = False
        tx.drop_kept_events(call.call_id)

    @staticmethod
    def _save(tx: StateTx, call: CallRow) -> None:
        tx.save_call(call)


def load_unexported_points(state: StateStore) -> list[tuple[int, MetricPoint]]:
    """Points stored but not yet in a spooled metrics request (to re-record after a restart)."""
    with state.reading() as tx:
        rows = tx.points()
    return [(row_id, point) for row_id, text in rows for point in points_from_json(text)]
