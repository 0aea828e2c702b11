"""Feeds metric points from the mapping into an SDK MeterProvider.

Instruments are made on first use with explicit bucket boundaries (the SDK's defaults,
0/5/10/25…, are useless for seconds). Each observation is recorded in the context of its span
so that exemplars point at the turn. Bounds that need memory across calls live here: at most
``max_log_metric_names`` LogMetric instruments (later names fold into
``cartesia.log_metric.other``) and ``max_string_values`` distinct values per string LogMetric
(later values read ``other``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Final

from opentelemetry import trace
from opentelemetry.metrics import Counter, Histogram, Meter
from opentelemetry.sdk.metrics import MeterProvider

from otelbridge import __version__
from otelbridge.delivery.sdk import span_context
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import InstrumentKind, MetricPoint

OVERFLOW_VALUE: Final = "other"

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


class MetricRecorder:
    def __init__(
        self,
        meter_provider: MeterProvider,
        *,
        max_log_metric_names: int = 50,
        max_string_values: int = 20,
    ) -> None:
        self._meter: Meter = meter_provider.get_meter(c.INSTRUMENTATION_SCOPE, __version__)
        self._instruments: dict[str, Histogram | Counter] = {}
        self._log_metric_names: set[str] = set()
        self._string_values: dict[str, set[str]] = {}
        #: the kind each LogMetric name was first recorded as (one instrument per name)
        self._kinds: dict[str, InstrumentKind] = {}
        self._max_names = max_log_metric_names
        self._max_values = max_string_values
        #: observations folded by the bounds, by reason (for self-metrics): past the name limit,
        #: past the value limit, or of the other kind than the name's first (number vs string)
        self.folded: dict[str, int] = {"name": 0, "value": 0, "kind": 0}

    def record(self, points: Iterable[MetricPoint]) -> None:
        """Record ``points``; counter points of one series are summed first (one SDK call
        instead of many; the exemplar is the series' last point)."""
        sums: dict[tuple[str, tuple[tuple[str, str | bool | int], ...]], MetricPoint] = {}
        for point in points:
            if point.kind is InstrumentKind.HISTOGRAM:
                self._record(point)
                continue
            key = (point.instrument, tuple(sorted(point.attributes.items())))
            seen = sums.get(key)
            sums[key] = point if seen is None else replace(point, value=seen.value + point.value)
        for point in sums.values():
            self._record(point)

    def _record(self, point: MetricPoint) -> None:
        name, attributes = point.instrument, point.attributes
        if name.startswith(c.METRIC_LOG_METRIC_PREFIX):
            if name not in self._log_metric_names:
                if len(self._log_metric_names) >= self._max_names:
                    self._fold(point, "name")
                    return
                self._log_metric_names.add(name)
            # A name sent as a number and (in this call or another) as a string would need a
            # histogram and a counter of one name, which no backend can hold: the first wins.
            if self._kinds.setdefault(name, point.kind) is not point.kind:
                self._fold(point, "kind")
                return
            value = attributes.get(c.METRIC_ATTR_LOG_VALUE)
            if isinstance(value, str):
                seen = self._string_values.setdefault(name, set())
                if value not in seen:
                    if len(seen) >= self._max_values:
                        self.folded["value"] += 1
                        attributes = {**attributes, c.METRIC_ATTR_LOG_VALUE: OVERFLOW_VALUE}
                    else:
                        seen.add(value)
        context = trace.set_span_in_context(
            trace.NonRecordingSpan(span_context(point.trace_id, point.span_id))
        )
        if point.kind is InstrumentKind.HISTOGRAM:
            self._histogram(point).record(point.value, attributes, context=context)
        else:
            self._counter(name, point.unit, point.description).add(point.value, attributes, context=context)

    def _fold(self, point: MetricPoint, reason: str) -> None:
        """Count ``point`` in ``cartesia.log_metric.other`` instead of its own instrument."""
        self.folded[reason] += 1
        agent = str(point.attributes.get(c.METRIC_ATTR_AGENT_ID, ""))
        description = "LogMetric observations past the name limit or of another kind than their name's first"
        self._counter(c.METRIC_LOG_METRIC_OTHER, "1", description).add(1, {c.METRIC_ATTR_AGENT_ID: agent})

    def _histogram(self, point: MetricPoint) -> Histogram:
        instrument = self._instruments.get(point.instrument)
        if instrument is None:
            instrument = self._meter.create_histogram(
                point.instrument,
                unit=point.unit,
                description=point.description,
                explicit_bucket_boundaries_advisory=bucket_boundaries(point),
            )
            self._instruments[point.instrument] = instrument
        assert isinstance(instrument, Histogram)
        return instrument

    def _counter(self, name: str, unit: str, description: str) -> Counter:
        instrument = self._instruments.get(name)
        if instrument is None:
            instrument = self._meter.create_counter(name, unit=unit, description=description)
            self._instruments[name] = instrument
        assert isinstance(instrument, Counter)
        return instrument
