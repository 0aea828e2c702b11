"""The call metrics' histograms, aggregated here rather than by the SDK.

A turn records four histogram points. Through the SDK each cost about 11 µs: an API
measurement, then, for each of the two readers (OTLP and Prometheus), an attribute hash, a lock,
a bucket search and an exemplar reservoir. That was a fifth of the pipeline's CPU per turn
(docs/benchmarks.md). Here a point costs one lookup and one bucket search, and one aggregation
serves both readers:

* OTLP (:func:`otelbridge.delivery.telemetry.collect_request`): cumulative or delta, as
  ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` asks, with exemplars: the last point of
  each bucket since the previous collection, as the SDK's aligned-bucket reservoir keeps them;
* Prometheus (:meth:`HistogramStore.cumulative`): cumulative, without exemplars (the Python
  exporter carries none), read without resetting anything.

What comes out is the SDK's own data classes, with the SDK's semantics: ``bisect_left`` buckets
(upper bounds inclusive), min and max, start times, the ``otel.metric.overflow`` point past the
cardinality limit, and negative or non-finite values ignored. So the SDK's encoder and its
Prometheus exporter take them as they are. tests/delivery/test_histograms.py compares the two
aggregations point by point.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any, Final

from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import AggregationTemporality, Histogram, HistogramDataPoint, Metric

from otelbridge.delivery.cardinality import includes
from otelbridge.mapping.records import MetricPoint

log = logging.getLogger("otelbridge.metrics")

#: the SDK's default boundaries, for a histogram that names none (a LogMetric without a unit)
DEFAULT_BOUNDARIES: Final[tuple[float, ...]] = (
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
)  # fmt: skip
#: the attributes of the point that takes the series past the cardinality limit (the SDK's)
OVERFLOW_ATTRIBUTES: Final[Mapping[str, Any]] = {"otel.metric.overflow": True}
_OVERFLOW_KEY: Final = frozenset(OVERFLOW_ATTRIBUTES.items())
_Key = frozenset[tuple[str, Any]]
#: a bucket's exemplar: value, time, trace id, span id, the point's attributes
_Sample = tuple[float, int, int, int, Mapping[str, Any]]


class _Series:
    """One attribute set: what the OTLP reader last collected (``base_*``), and what came since
    (``counts`` … ``samples``; ``counts`` is None when nothing did)."""

    __slots__ = ("attributes", "base_counts", "base_high", "base_low", "base_total", "counts",
                 "high", "low", "samples", "since_ns", "start_ns", "total")  # fmt: skip

    def __init__(self, attributes: dict[str, Any], start_ns: int) -> None:
        self.attributes = attributes
        self.start_ns = start_ns  # of its cumulative points
        self.since_ns = start_ns  # of its delta points: the last OTLP collection
        self.base_counts: list[int] | None = None
        self.base_total: float = 0
        self.base_low, self.base_high = math.inf, -math.inf
        self.counts: list[int] | None = None
        self.total: float = 0
        self.low, self.high = math.inf, -math.inf
        self.samples: list[_Sample | None] | None = None


class _Instrument:
    __slots__ = ("boundaries", "collected_ns", "description", "name", "series", "unit")

    def __init__(self, name: str, unit: str, description: str, boundaries: tuple[float, ...]) -> None:
        self.name, self.unit, self.description, self.boundaries = name, unit, description, boundaries
        self.series: dict[_Key, _Series] = {}
        #: the last OTLP collection since the instrument exists: a new series starts there
        self.collected_ns: int | None = None


class HistogramStore:
    """The histograms of the call metrics, bounded to ``cardinality_limit`` series per
    instrument (then the ``otel.metric.overflow`` series, as the SDK does)."""

    def __init__(self, cardinality_limit: int = 2000, clock: Callable[[], int] = time.time_ns) -> None:
        self._limit = cardinality_limit
        self._clock = clock
        self._instruments: dict[str, _Instrument] = {}
        self._lock = threading.Lock()  # recorded on the event loop, collected in worker threads
        self._ignored: set[str] = set()

    def record(self, point: MetricPoint, boundaries: tuple[float, ...] | None) -> None:
        """Add ``point`` to its series (``boundaries``: the instrument's, fixed by its first
        point; None for the SDK's defaults)."""
        value = point.value
        if not (value >= 0 and math.isfinite(value)):  # the SDK's rule (NaN fails both)
            self._ignore(point.instrument)
            return
        now = self._clock()
        with self._lock:
            instrument = self._instruments.get(point.instrument)
            if instrument is None:
                instrument = self._instruments[point.instrument] = _Instrument(
                    point.instrument, point.unit, point.description, boundaries or DEFAULT_BOUNDARIES
                )
            attributes = point.attributes
            series = instrument.series.get(key := frozenset(attributes.items()))
            if series is None:
                series = self._new_series(instrument, key, attributes, now)
            index = bisect_left(instrument.boundaries, value)
            counts = series.counts
            if counts is None:
                counts = series.counts = _zeros(instrument.boundaries)
            counts[index] += 1
            series.total += value
            series.low = min(series.low, value)
            series.high = max(series.high, value)
            samples = series.samples
            if samples is None:
                samples = series.samples = [None] * len(counts)
            samples[index] = (value, now, point.trace_id, point.span_id, attributes)

    def _new_series(
        self, instrument: _Instrument, key: _Key, attributes: Mapping[str, Any], now: int
    ) -> _Series:
        if len(instrument.series) >= self._limit:
            overflow = instrument.series.get(_OVERFLOW_KEY)
            if overflow is not None:
                return overflow
            key, attributes = _OVERFLOW_KEY, OVERFLOW_ATTRIBUTES
        start = instrument.collected_ns if instrument.collected_ns is not None else now
        series = instrument.series[key] = _Series(dict(attributes), start)
        return series

    def _ignore(self, name: str) -> None:
        if name not in self._ignored and len(self._ignored) < 1000:
            self._ignored.add(name)
            log.warning("%s: a negative or non-finite value is not recorded in a histogram "
                        "(logged once per instrument)", name)  # fmt: skip

    def forget(self, match: Mapping[str, Any], instrument: Callable[[str], bool] | None = None) -> int:
        """Drop every series whose attributes include ``match`` (of the instruments ``instrument``
        accepts, or all); returns how many."""
        dropped = 0
        with self._lock:
            for histogram in self._instruments.values():
                if instrument is not None and not instrument(histogram.name):
                    continue
                series = histogram.series
                for key in [k for k, s in series.items() if includes(s.attributes, match)]:
                    del series[key]
                    dropped += 1
        return dropped

    def collect(self, temporality: AggregationTemporality) -> list[Metric]:
        """What the OTLP reader collects: every series (cumulative) or those with points since
        the last collection (delta), each with its exemplars since then; the next delta starts
        now."""
        now = self._clock()
        metrics: list[Metric] = []
        with self._lock:
            for instrument in self._instruments.values():
                points = [
                    point
                    for series in instrument.series.values()
                    if (point := _collect(series, instrument.boundaries, temporality, now)) is not None
                ]
                instrument.collected_ns = now
                if points:
                    metrics.append(_metric(instrument, points, temporality))
        return metrics

    def cumulative(self) -> list[Metric]:
        """What ``/metrics`` shows: every series, cumulative, no exemplars; nothing is reset."""
        now = self._clock()
        cumulative = AggregationTemporality.CUMULATIVE
        metrics: list[Metric] = []
        with self._lock:
            for instrument in self._instruments.values():
                points = [_total(series, instrument.boundaries, now) for series in instrument.series.values()]
                if points:
                    metrics.append(_metric(instrument, points, cumulative))
        return metrics


def _zeros(boundaries: tuple[float, ...]) -> list[int]:
    return [0] * (len(boundaries) + 1)


def _plus(counts: list[int], base: list[int]) -> list[int]:
    return [a + b for a, b in zip(counts, base, strict=True)]


def _metric(
    instrument: _Instrument, points: list[HistogramDataPoint], temporality: AggregationTemporality
) -> Metric:
    return Metric(instrument.name, instrument.description, instrument.unit, Histogram(points, temporality))


def _exemplars(series: _Series) -> list[Exemplar]:
    """The exemplars since the last collection, by bucket, as the SDK makes them: the span ids
    as given (zero included), and the point's attributes that its series lacks (none, but on
    the overflow series)."""
    if series.samples is None:
        return []
    mine = series.attributes
    return [
        Exemplar(
            {k: v for k, v in attrs.items() if k not in mine} if attrs else None, value, at, span_id, trace_id
        )
        for value, at, trace_id, span_id, attrs in filter(None, series.samples)
    ]


def _point(
    series: _Series,
    boundaries: tuple[float, ...],
    start_ns: int,
    now: int,
    interval: tuple[list[int], float, float, float],
    exemplars: list[Exemplar],
) -> HistogramDataPoint:
    counts, total, low, high = interval
    return HistogramDataPoint(
        attributes=series.attributes, start_time_unix_nano=start_ns, time_unix_nano=now,
        count=sum(counts), sum=total, bucket_counts=tuple(counts), explicit_bounds=boundaries,
        min=low, max=high, exemplars=exemplars,
    )  # fmt: skip


def _collect(
    series: _Series, boundaries: tuple[float, ...], temporality: AggregationTemporality, now: int
) -> HistogramDataPoint | None:
    """The series' OTLP point (None: a delta with nothing new); what came since the last
    collection joins the base, and the next interval starts now."""
    counts, total, low, high = series.counts, series.total, series.low, series.high
    exemplars = _exemplars(series)
    since, series.since_ns = series.since_ns, now
    series.counts, series.total, series.low, series.high, series.samples = None, 0, math.inf, -math.inf, None
    if counts is not None:
        # the SDK adds the interval to the previous values, in this order: the same float sums
        base = series.base_counts
        series.base_counts = counts if base is None else _plus(counts, base)
        series.base_total = total + series.base_total
        series.base_low, series.base_high = min(low, series.base_low), max(high, series.base_high)
    if temporality is AggregationTemporality.DELTA:
        if counts is None:
            return None
        return _point(series, boundaries, since, now, (counts, total, low, high), exemplars)
    base_counts = series.base_counts or _zeros(boundaries)
    cumulative = (base_counts, series.base_total, series.base_low, series.base_high)
    return _point(series, boundaries, series.start_ns, now, cumulative, exemplars)


def _total(series: _Series, boundaries: tuple[float, ...], now: int) -> HistogramDataPoint:
    """The series' cumulative point as of now, base and interval together, without exemplars."""
    base = series.base_counts or _zeros(boundaries)
    counts = base if series.counts is None else _plus(series.counts, base)
    low, high = min(series.low, series.base_low), max(series.high, series.base_high)
    return _point(
        series, boundaries, series.start_ns, now, (counts, series.total + series.base_total, low, high), []
    )
