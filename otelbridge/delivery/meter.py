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
        self._max_names = max_log_metric_names
        self._max_values = max_string_values
        #: observations folded by the bounds, by reason (for self-metrics)
        self.folded: dict[str, int] = {"name": 0, "value": 0}

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
                    self.folded["name"] += 1
                    self._counter(c.METRIC_LOG_METRIC_OTHER, "1",
                                  "LogMetric observations past the name limit").add(
                        1, {c.METRIC_ATTR_AGENT_ID: str(attributes.get(c.METRIC_ATTR_AGENT_ID, ""))}
                    )  # fmt: skip
                    return
                self._log_metric_names.add(name)
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
