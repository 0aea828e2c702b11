"""Feeds metric points from the mapping into the meter: histograms into our own aggregation
(:mod:`otelbridge.delivery.histograms`), counters into an SDK MeterProvider.

Histograms get explicit bucket boundaries (the SDK's defaults, 0/5/10/25…, are useless for
seconds). Each observation keeps its span, so that exemplars point at the turn. The bounds on
series, which need memory across calls, are applied here before a point is recorded
(:mod:`otelbridge.delivery.cardinality`).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import Counter, Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.trace import SpanContext, TraceFlags

from otelbridge import __version__
from otelbridge.delivery.cardinality import (
    OTHER,
    VOCABULARY_LIMITS,
    Admission,
    SeriesLimits,
    forget_series,
    label_value,
)
from otelbridge.delivery.histograms import HistogramStore
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import InstrumentKind, MetricPoint

OVERFLOW_VALUE: Final = OTHER
#: labels that read ``other`` with their agent when it is past the agents' limit
_AGENT_SCOPED: Final = (
    c.METRIC_ATTR_TOOL_NAME,
    c.GEN_AI_EVALUATION_NAME,
    c.METRIC_ATTR_DEPLOYMENT_ID,
    c.METRIC_ATTR_LOG_VALUE,
)
_Attrs = dict[str, str | bool | int]

_BUCKETS: Final[dict[str, tuple[float, ...]]] = {
    c.METRIC_TTS_TTFB: c.TTFB_BUCKETS_S,
    c.METRIC_STT_TTFB: c.TTFB_BUCKETS_S,
    c.METRIC_CALL_DURATION: c.CALL_DURATION_BUCKETS_S,
    c.METRIC_TURN_DURATION: c.TURN_DURATION_BUCKETS_S,
    c.METRIC_RESPONSE_LATENCY: c.RESPONSE_LATENCY_BUCKETS_S,
}


def bucket_boundaries(point: MetricPoint) -> tuple[float, ...] | None:
    if point.instrument in _BUCKETS:
        return _BUCKETS[point.instrument]
    if point.unit == "s":  # LogMetric durations: the other instruments are named above
        return c.LOG_METRIC_SECONDS_BUCKETS
    return None


class _Labels:
    """A point's attributes, copied on the first change (most points keep theirs)."""

    __slots__ = ("changed", "original")

    def __init__(self, original: _Attrs) -> None:
        self.original = original
        self.changed: _Attrs | None = None

    @property
    def current(self) -> _Attrs:
        return self.original if self.changed is None else self.changed

    def get(self, key: str) -> str | bool | int | None:
        changed = self.changed
        return (self.original if changed is None else changed).get(key)

    def __setitem__(self, key: str, value: str) -> None:
        if self.changed is None:
            self.changed = dict(self.original)
        self.changed[key] = value


def span_context(trace_id: int, span_id: int) -> SpanContext:
    """A SAMPLED context (the exemplar's span): an unsampled one makes backends drop it."""
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


class MetricRecorder:
    """Records points within ``limits``: counters into ``meter_provider``, histograms into
    :attr:`histograms` (which :func:`otelbridge.delivery.telemetry.collect_request` and the
    ``/metrics`` reader add to what the SDK collects). ``folded`` counts the points (by limit)
    whose label read ``other`` or was cut, ``dropped`` the series dropped (by limit)."""

    def __init__(
        self,
        meter_provider: MeterProvider,
        limits: SeriesLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._provider = meter_provider
        self._meter: Meter = meter_provider.get_meter(c.INSTRUMENTATION_SCOPE, __version__)
        self._counters: dict[str, Counter] = {}
        self._limits = limits or SeriesLimits()
        self.histograms = HistogramStore(self._limits.sdk_cardinality_limit())
        self._clock = clock
        self._agents = Admission(self._limits.agents)
        #: agent -> label -> the values admitted for that agent
        self._per_agent: dict[str, dict[str, Admission]] = {}
        #: agent -> its LogMetric instrument names
        self._log_metric_names: dict[str, Admission] = {}
        #: LogMetric instrument name -> its string values
        self._string_values: dict[str, Admission] = {}
        self._vocabularies = {label: Admission(limit) for label, limit in VOCABULARY_LIMITS.items()}
        #: labels admitted per agent: (the limit they count under, its value)
        self._per_agent_limits = {
            c.METRIC_ATTR_TOOL_NAME: ("tool_names", self._limits.tool_names),
            c.GEN_AI_EVALUATION_NAME: ("evaluation_names", self._limits.log_metric_names),
        }
        #: the kind each LogMetric name was first recorded as (one instrument per name)
        self._kinds: dict[str, InstrumentKind] = {}
        self.folded: Tally[str] = Tally()
        self.dropped: Tally[str] = Tally()
        #: the exemplar context of the last point recorded, and its (trace id, span id)
        self._context_ids: tuple[int, int] = (0, 0)
        self._context: Context | None = None
        #: the attribute sets that passed the bounds unchanged in the current :meth:`record`
        #: call (a call's 83 points have about 10 sets), with the admissions each touched
        self._unbounded: dict[tuple[tuple[str, str | bool | int], ...], list[tuple[Admission, str]]] = {}

    def record(self, points: Iterable[MetricPoint]) -> None:
        """Record ``points``; counter points of one series are summed first (one SDK call
        instead of many; the exemplar is the series' last point)."""
        now = self._clock()
        self._unbounded.clear()  # valid within one call: its points share one ``now``
        #: a series' last point, its values' sum and how many were summed
        sums: dict[tuple[str, tuple[tuple[str, str | bool | int], ...]], tuple[MetricPoint, float, int]] = {}
        for raw in points:
            point = self._bound(raw, now)
            if point is None:
                continue
            if point.kind is InstrumentKind.HISTOGRAM:
                self._record(point)
                continue
            key = (point.instrument, tuple(sorted(point.attributes.items())))
            seen = sums.get(key)
            sums[key] = (
                (point, point.value, 1) if seen is None else (point, seen[1] + point.value, seen[2] + 1)
            )
        for point, total, count in sums.values():
            self._record(point if count == 1 else replace(point, value=total))

    def forget_deployments(self, fallen: Iterable[tuple[str, str]]) -> None:
        """Drop the series of deployments (agent id, deployment id) no longer among the most
        recent of their agent: their points now read ``other``."""
        for agent_id, deployment_id in fallen:
            match = {
                c.METRIC_ATTR_AGENT_ID: label_value(agent_id)[0],
                c.METRIC_ATTR_DEPLOYMENT_ID: label_value(deployment_id)[0],
            }
            self._drop("deployments", match)

    # --- the bounds -----------------------------------------------------------------------
    def _bound(self, point: MetricPoint, now: float) -> MetricPoint | None:
        """``point`` within the bounds (a copy when a label changed), or None when it was
        counted in ``cartesia.log_metric.other`` instead."""
        # A set that passed unchanged passes again in the same call: its values were admitted at
        # this call's ``now``, so none is idle and none can be evicted before the call ends. Its
        # admissions are only touched again, in the order admitting them would leave. Only
        # string values are bounded, and equal keys have equal strings (True == 1 only among
        # the others).
        log_metric = point.instrument.startswith(c.METRIC_LOG_METRIC_PREFIX)
        key = None if log_metric else tuple(point.attributes.items())
        if key is not None:
            touched = self._unbounded.get(key)
            if touched is not None:
                for admission, value in touched:
                    admission.touch(value)
                return point
        touched = []
        labels = self._bound_labels(point.attributes, now, touched)
        if log_metric:
            if not self._log_metric_admitted(point, str(labels.get(c.METRIC_ATTR_AGENT_ID) or ""), now):
                self._fold_log_metric(labels.current)
                return None
            text = labels.get(c.METRIC_ATTR_LOG_VALUE)
            if isinstance(text, str) and text != OTHER:
                values = self._string_values.get(point.instrument)
                if values is None:
                    values = self._string_values[point.instrument] = Admission(self._limits.log_metric_values)
                admitted, evicted = values.admit(text, now)
                if evicted is not None:
                    self._drop("log_metric_values", {c.METRIC_ATTR_LOG_VALUE: evicted}, point.instrument)
                if not admitted:
                    labels[c.METRIC_ATTR_LOG_VALUE] = OTHER
                    self.folded["log_metric_values"] += 1
        elif labels.changed is None:
            assert key is not None
            self._unbounded[key] = touched
        return point if labels.changed is None else replace(point, attributes=labels.changed)

    def _bound_labels(self, attributes: _Attrs, now: float, touched: list[tuple[Admission, str]]) -> _Labels:
        """``attributes`` within the label bounds: cut values, agents, per-agent labels and
        vocabularies; each admission asked is added to ``touched`` with its value."""
        labels = _Labels(attributes)
        for key, value in attributes.items():
            if isinstance(value, str):
                cut, was_cut = label_value(value)
                if was_cut:
                    labels[key] = cut
                    self.folded["label_bytes"] += 1
        agent = labels.get(c.METRIC_ATTR_AGENT_ID)
        if isinstance(agent, str):
            admitted, evicted = self._agents.admit(agent, now)
            touched.append((self._agents, agent))
            if evicted is not None:
                self._forget_agent(evicted)
            if not admitted:
                labels[c.METRIC_ATTR_AGENT_ID] = OTHER
                for key in _AGENT_SCOPED:
                    if labels.get(key) is not None:
                        labels[key] = OTHER
                self.folded["agents"] += 1
            else:
                self._bound_agent_labels(agent, labels, now, touched)
        self._bound_vocabularies(labels, now, touched)
        return labels

    def _bound_agent_labels(
        self, agent: str, labels: _Labels, now: float, touched: list[tuple[Admission, str]]
    ) -> None:
        for key, (limit, most) in self._per_agent_limits.items():
            value = labels.get(key)
            if not isinstance(value, str):
                continue
            sets = self._per_agent.setdefault(agent, {})
            admission = sets.get(key)
            if admission is None:
                admission = sets[key] = Admission(most)
            admitted, evicted = admission.admit(value, now)
            touched.append((admission, value))
            if evicted is not None:
                self._drop(limit, {c.METRIC_ATTR_AGENT_ID: agent, key: evicted})
            if not admitted:
                labels[key] = OTHER
                self.folded[limit] += 1

    def _bound_vocabularies(self, labels: _Labels, now: float, touched: list[tuple[Admission, str]]) -> None:
        for key, admission in self._vocabularies.items():
            value = labels.get(key)
            if not isinstance(value, str):
                continue
            admitted, evicted = admission.admit(value, now)
            touched.append((admission, value))
            if evicted is not None:
                self._drop("vocabulary", {key: evicted})
            if not admitted:
                labels[key] = OTHER
                self.folded["vocabulary"] += 1

    def _log_metric_admitted(self, point: MetricPoint, agent: str, now: float) -> bool:
        """May ``point`` have its own instrument? The agents past the limit share the names of
        ``other``."""
        name = point.instrument
        names = self._log_metric_names.get(agent)
        if names is None:
            names = self._log_metric_names[agent] = Admission(self._limits.log_metric_names)
        admitted, evicted = names.admit(name, now)
        if evicted is not None:
            self._drop("log_metric_names", {c.METRIC_ATTR_AGENT_ID: agent}, evicted)
        if not admitted:
            self.folded["log_metric_names"] += 1
            return False
        # A name sent as a number and (in this call or another) as a string would need a
        # histogram and a counter of one name, which no backend can hold: the first wins.
        if self._kinds.setdefault(name, point.kind) is not point.kind:
            self.folded["log_metric_kind"] += 1
            return False
        return True

    def _fold_log_metric(self, labels: _Attrs) -> None:
        """Count an observation in ``cartesia.log_metric.other`` instead of its own instrument."""
        agent = str(labels.get(c.METRIC_ATTR_AGENT_ID, ""))
        description = "LogMetric observations past the name limit or of another kind than their name's first"
        self._counter(c.METRIC_LOG_METRIC_OTHER, "1", description).add(1, {c.METRIC_ATTR_AGENT_ID: agent})

    def _forget_agent(self, agent: str) -> None:
        self._per_agent.pop(agent, None)
        self._log_metric_names.pop(agent, None)
        self._drop("agents", {c.METRIC_ATTR_AGENT_ID: agent})

    def _drop(self, limit: str, match: Mapping[str, str | bool | int], instrument: str | None = None) -> None:
        accepts = None if instrument is None else instrument.__eq__
        self.dropped[limit] += forget_series(self._provider, match, accepts) + self.histograms.forget(
            match, accepts
        )

    # --- the meter ----------------------------------------------------------------------------
    def _record(self, point: MetricPoint) -> None:
        if point.kind is InstrumentKind.HISTOGRAM:
            self.histograms.record(point, bucket_boundaries(point))
            return
        ids = (point.trace_id, point.span_id)
        if ids != self._context_ids:  # a turn's points come together: one context for them
            self._context_ids = ids
            self._context = trace.set_span_in_context(trace.NonRecordingSpan(span_context(*ids)))
        self._counter(point.instrument, point.unit, point.description).add(
            point.value, point.attributes, context=self._context
        )

    def _counter(self, name: str, unit: str, description: str) -> Counter:
        instrument = self._counters.get(name)
        if instrument is None:
            instrument = self._counters[name] = self._meter.create_counter(
                name, unit=unit, description=description
            )
        return instrument
