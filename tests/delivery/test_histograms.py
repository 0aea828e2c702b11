"""HistogramStore against the SDK's own aggregation: the same points, collected at the same
moments, give the same data points (attributes, bucket counts, sums, min, max, exemplars),
cumulative and delta, past the cardinality limit, and after series are forgotten."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics._internal.aggregation import (
    _DEFAULT_EXPLICIT_BUCKET_HISTOGRAM_AGGREGATION_BOUNDARIES as SDK_DEFAULT,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
)
from opentelemetry.sdk.metrics.export import Histogram as SdkHistogramData

from otelbridge.delivery.cardinality import forget_series
from otelbridge.delivery.histograms import DEFAULT_BOUNDARIES, HistogramStore
from otelbridge.delivery.meter import span_context
from otelbridge.mapping.records import InstrumentKind, MetricPoint

BOUNDS = (0.1, 0.5, 1.0, 2.5)
CUMULATIVE, DELTA = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA


class Sdk:
    """The SDK path as the recorder used it: one histogram per name, each point recorded in the
    context of its span."""

    def __init__(self, temporality: AggregationTemporality, limit: int = 2000) -> None:
        self.reader = InMemoryMetricReader(
            preferred_temporality={SdkHistogram: temporality}, cardinality_limits={SdkHistogram: limit}
        )
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.meter = self.provider.get_meter("test")
        self.instruments: dict[str, Any] = {}

    def record(self, point: MetricPoint, bounds: tuple[float, ...] | None) -> None:
        histogram = self.instruments.get(point.instrument)
        if histogram is None:
            histogram = self.instruments[point.instrument] = self.meter.create_histogram(
                point.instrument, unit=point.unit, description=point.description,
                explicit_bucket_boundaries_advisory=bounds,
            )  # fmt: skip
        context = trace.set_span_in_context(
            trace.NonRecordingSpan(span_context(point.trace_id, point.span_id))
        )
        histogram.record(point.value, point.attributes, context=context)

    def collect(self) -> list[Metric]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]


def _point(
    name: str, value: float, attrs: dict[str, Any], trace_id: int = 7, span_id: int = 9
) -> MetricPoint:
    return MetricPoint(
        name, InstrumentKind.HISTOGRAM, "s", f"{name} seconds", value, attrs, "k", trace_id, span_id
    )


def _shape(metrics: list[Metric], *, exemplars: bool = True) -> dict[tuple[str, Any], tuple[Any, ...]]:
    """Data points by (metric, attributes), their times left out (each side reads its clock)."""
    out: dict[tuple[str, Any], tuple[Any, ...]] = {}
    for metric in metrics:
        assert isinstance(metric.data, SdkHistogramData)
        for dp in metric.data.data_points:
            assert isinstance(dp, HistogramDataPoint) and dp.start_time_unix_nano <= dp.time_unix_nano
            samples = sorted(
                (e.value, e.trace_id, e.span_id, dict(e.filtered_attributes or {})) for e in dp.exemplars
            )
            key = (metric.name, frozenset((dp.attributes or {}).items()))
            out[key] = (metric.unit, metric.description, metric.data.aggregation_temporality, dp.count,
                        dp.sum, tuple(dp.bucket_counts), tuple(dp.explicit_bounds), dp.min, dp.max,
                        samples if exemplars else None)  # fmt: skip
    return out


def test_default_boundaries_are_the_sdks() -> None:
    assert tuple(SDK_DEFAULT) == DEFAULT_BOUNDARIES


values = st.one_of(
    st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5, 3.0, 5.0, 10.0, 10000.0, 20000.0, -1.0, math.inf, math.nan]),
    st.floats(min_value=0, max_value=30, allow_nan=False),
)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["h.a", "h.b"]),
            values,
            st.sampled_from([{"agent": "x"}, {"agent": "y", "role": "user"}, {}, {"agent": "z"}]),
            st.sampled_from([(7, 9), (8, 10), (0, 0)]),
        ),
        st.just("collect"),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps=steps, temporality=st.sampled_from([CUMULATIVE, DELTA]), limit=st.sampled_from([2, 3, 2000]))
def test_the_same_points_collected_at_the_same_moments_give_the_sdks_data_points(
    steps: list[Any], temporality: AggregationTemporality, limit: int
) -> None:
    if temporality is DELTA:
        # the SDK counts a delta reader's series per interval; one aggregation serving /metrics
        # too counts them since they began (the test below)
        limit = 2000
    sdk, ours = Sdk(temporality, limit), HistogramStore(limit)
    prometheus = Sdk(CUMULATIVE, limit)  # what /metrics showed: cumulative, exemplars aside
    for step in [*steps, "collect"]:
        if step == "collect":
            assert _shape(ours.collect(temporality)) == _shape(sdk.collect())
            assert _shape(ours.cumulative(), exemplars=False) == _shape(prometheus.collect(), exemplars=False)
            continue
        name, value, attrs, (trace_id, span_id) = step
        point = _point(name, value, attrs, trace_id, span_id)
        bounds = BOUNDS if name == "h.a" else None
        for side in (sdk, prometheus):
            side.record(point, bounds)
        ours.record(point, bounds)


def _points(metrics: list[Metric]) -> list[HistogramDataPoint]:
    points = [dp for metric in metrics for dp in metric.data.data_points]
    assert all(isinstance(dp, HistogramDataPoint) for dp in points)
    return points  # type: ignore[return-value]


def test_delta_points_start_at_the_previous_collection_and_cumulative_ones_stay() -> None:
    now = [1_000]
    store = HistogramStore(clock=lambda: now[0])
    store.record(_point("h", 0.2, {"a": "1"}), BOUNDS)
    now[0] = 2_000
    (first,) = _points(store.collect(DELTA))
    assert (first.start_time_unix_nano, first.time_unix_nano, first.count) == (1_000, 2_000, 1)
    now[0] = 3_000
    store.record(_point("h", 0.3, {"a": "1"}), BOUNDS)
    store.record(_point("h", 0.3, {"a": "2"}), BOUNDS)  # a new series starts at the collection
    now[0] = 4_000
    points = {dict(dp.attributes or {})["a"]: dp for dp in _points(store.collect(DELTA))}
    assert {a: (dp.start_time_unix_nano, dp.count) for a, dp in points.items()} == {
        "1": (2_000, 1),
        "2": (2_000, 1),
    }
    now[0] = 5_000
    assert store.collect(DELTA) == []  # nothing new: no delta point
    (total,) = [dp for dp in _points(store.cumulative()) if dict(dp.attributes or {})["a"] == "1"]
    assert (total.start_time_unix_nano, total.count, total.sum, total.exemplars) == (1_000, 2, 0.5, [])


def test_cumulative_points_carry_each_collections_new_exemplars_only() -> None:
    store = HistogramStore()
    store.record(_point("h", 0.2, {"a": "1"}, 1, 2), BOUNDS)
    store.record(_point("h", 0.3, {"a": "1"}, 3, 4), BOUNDS)  # same bucket: the last one stays
    store.record(_point("h", 9.0, {"a": "1"}, 5, 6), BOUNDS)
    (dp,) = _points(store.collect(CUMULATIVE))
    assert [(e.value, e.trace_id, e.span_id) for e in dp.exemplars] == [(0.3, 3, 4), (9.0, 5, 6)]
    assert _points(store.cumulative())[0].count == 3  # /metrics resets nothing
    (again,) = _points(store.collect(CUMULATIVE))
    assert (again.count, again.exemplars) == (3, [])


def test_the_limit_counts_series_since_they_began_also_for_delta() -> None:
    """Past the limit, a new attribute set goes to the overflow series even in a delta interval
    where the older series were silent (the SDK's delta reader would give it its own series)."""
    store = HistogramStore(2)
    for agent in ("a", "b"):
        store.record(_point("h", 0.2, {"agent": agent}), BOUNDS)
    store.collect(DELTA)
    store.record(_point("h", 0.2, {"agent": "c"}), BOUNDS)
    (dp,) = _points(store.collect(DELTA))
    assert dp.attributes == {"otel.metric.overflow": True}
    assert [dict(e.filtered_attributes or {}) for e in dp.exemplars] == [{"agent": "c"}]


def test_forget_drops_the_series_the_sdk_helper_drops() -> None:
    sdk, ours = Sdk(CUMULATIVE), HistogramStore()
    for agent, deployment in [("a", "d1"), ("a", "d2"), ("b", "d1")]:
        point = _point("h", 0.4, {"agent": agent, "deployment": deployment})
        sdk.record(point, BOUNDS)
        ours.record(point, BOUNDS)
    match = {"agent": "a", "deployment": "d1"}
    assert ours.forget(match) == forget_series(sdk.provider, match) == 1
    assert ours.forget({"agent": "b"}, lambda name: name != "h") == 0
    assert _shape(ours.collect(CUMULATIVE)) == _shape(sdk.collect())


@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf])
def test_values_the_sdk_ignores_are_ignored_and_logged_once(
    value: float, caplog: pytest.LogCaptureFixture
) -> None:
    store = HistogramStore()
    for _ in range(3):
        store.record(_point("cartesia.log_metric.x", value, {"a": "1"}), None)
    assert store.collect(CUMULATIVE) == []
    assert [r.getMessage() for r in caplog.records] == [
        "cartesia.log_metric.x: a negative or non-finite value is not recorded in a histogram "
        "(logged once per instrument)"
    ]
