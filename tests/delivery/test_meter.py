from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.resources import Resource

from otelbridge.delivery.cardinality import SeriesLimits
from otelbridge.delivery.meter import MetricRecorder
from otelbridge.delivery.telemetry import with_metrics
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import InstrumentKind, MetricPoint


def _point(
    instrument: str,
    value: float,
    kind: InstrumentKind = InstrumentKind.HISTOGRAM,
    unit: str = "s",
    **attrs: str,
) -> MetricPoint:
    return MetricPoint(instrument, kind, unit, "d", value, {c.AGENT_ID: "a", **attrs}, "k", 7, 9)


def _collect(points: list[MetricPoint], **limits: int) -> tuple[dict[str, list], MetricRecorder]:  # type: ignore[type-arg]
    reader = InMemoryMetricReader()
    recorder = MetricRecorder(MeterProvider(metric_readers=[reader]), SeriesLimits(**limits))
    recorder.record(points)
    histograms = recorder.histograms.collect(AggregationTemporality.CUMULATIVE)
    data = with_metrics(reader.get_metrics_data(), histograms, Resource.create({}))
    assert data is not None
    metrics = {
        m.name: list(m.data.data_points) for sm in data.resource_metrics[0].scope_metrics for m in sm.metrics
    }
    return metrics, recorder


def test_ttfb_histogram_buckets_and_exemplar() -> None:
    metrics, _ = _collect([_point(c.METRIC_TTS_TTFB, 0.18)])
    (dp,) = metrics[c.METRIC_TTS_TTFB]
    assert isinstance(dp, HistogramDataPoint)
    assert tuple(dp.explicit_bounds) == c.TTFB_BUCKETS_S
    assert dp.count == 1 and dp.sum == 0.18
    (exemplar,) = dp.exemplars
    assert (exemplar.trace_id, exemplar.span_id) == (7, 9)


def test_log_metric_durations_get_seconds_buckets() -> None:
    metrics, _ = _collect([_point("cartesia.log_metric.agent_turn", 0.355, unit="s")])
    (dp,) = metrics["cartesia.log_metric.agent_turn"]
    assert isinstance(dp, HistogramDataPoint) and tuple(dp.explicit_bounds) == c.LOG_METRIC_SECONDS_BUCKETS


def test_name_bound_folds_into_other() -> None:
    points = [_point(f"cartesia.log_metric.m{i}", 1.0, unit="1") for i in range(5)]
    metrics, recorder = _collect(points, log_metric_names=3)
    assert {n for n in metrics if n.startswith("cartesia.log_metric.m")} == {
        "cartesia.log_metric.m0",
        "cartesia.log_metric.m1",
        "cartesia.log_metric.m2",
    }
    (other,) = metrics[c.METRIC_LOG_METRIC_OTHER]
    assert isinstance(other, NumberDataPoint) and other.value == 2
    assert recorder.folded["log_metric_names"] == 2


def test_string_value_bound() -> None:
    points = [
        _point("cartesia.log_metric.tier", 1, InstrumentKind.COUNTER, "1", **{c.LOG_METRIC_VALUE: v})
        for v in ["a", "b", "c", "a", "d"]
    ]
    metrics, recorder = _collect(points, log_metric_values=2)
    values = {str(dp.attributes[c.LOG_METRIC_VALUE]): dp.value for dp in metrics["cartesia.log_metric.tier"]}
    assert values == {"a": 2, "b": 1, "other": 2}
    assert recorder.folded["log_metric_values"] == 2


def test_a_name_sent_as_a_number_and_as_a_string_keeps_its_first_kind() -> None:
    """One instrument per name: a LogMetric sent as a number, then (this call or another) as a
    string, counts the string in cartesia.log_metric.other instead of crashing the recorder."""
    points = [
        _point("cartesia.log_metric.n", 1.0, unit="1"),
        _point("cartesia.log_metric.n", 1, InstrumentKind.COUNTER, "1", **{c.LOG_METRIC_VALUE: "x"}),
        _point("cartesia.log_metric.n", 2.0, unit="1"),
    ]
    metrics, recorder = _collect(points)
    (histogram,) = metrics["cartesia.log_metric.n"]
    assert isinstance(histogram, HistogramDataPoint) and histogram.count == 2
    assert [dp.value for dp in metrics["cartesia.log_metric.other"]] == [1]
    assert recorder.folded["log_metric_kind"] == 1


def test_points_sharing_one_attribute_dict_are_bounded_and_counted_each() -> None:
    """A turn's points share their labels' dict: each point reads ``other`` and counts in
    ``folded``, and the shared dict is left as it was."""
    shared: dict[str, str | bool | int] = {c.METRIC_ATTR_AGENT_ID: "b", c.METRIC_ATTR_ROLE: "user"}
    points = [
        _point(c.METRIC_TTS_TTFB, 0.1),  # agent "a" takes the one place
        MetricPoint(c.METRIC_TTS_TTFB, InstrumentKind.HISTOGRAM, "s", "d", 0.2, shared, "k", 7, 9),
        MetricPoint(c.METRIC_STT_TTFB, InstrumentKind.HISTOGRAM, "s", "d", 0.3, shared, "k", 7, 9),
        MetricPoint(c.METRIC_TURNS, InstrumentKind.COUNTER, "1", "d", 1, shared, "k", 7, 9),
    ]
    metrics, recorder = _collect(points, agents=1)
    assert recorder.folded["agents"] == 3
    for name in (c.METRIC_STT_TTFB, c.METRIC_TURNS):
        (dp,) = metrics[name]
        assert dict(dp.attributes or {})[c.METRIC_ATTR_AGENT_ID] == "other"
    agents = {dict(dp.attributes or {})[c.METRIC_ATTR_AGENT_ID] for dp in metrics[c.METRIC_TTS_TTFB]}
    assert agents == {"a", "other"}
    assert shared == {c.METRIC_ATTR_AGENT_ID: "b", c.METRIC_ATTR_ROLE: "user"}  # not changed in place


def test_counter_points_of_one_series_are_one_add_with_the_last_points_exemplar() -> None:
    points = [
        MetricPoint(
            c.METRIC_TURNS, InstrumentKind.COUNTER, "{turn}", "d", value, {c.AGENT_ID: "a"}, "k", 7, span
        )
        for value, span in ((1, 11), (2, 12), (4, 13))
    ]
    other = MetricPoint(
        c.METRIC_TURNS, InstrumentKind.COUNTER, "{turn}", "d", 5, {c.AGENT_ID: "b"}, "k", 7, 14
    )
    metrics, _ = _collect([*points, other])
    by_agent = {dict(dp.attributes or {})[c.AGENT_ID]: dp for dp in metrics[c.METRIC_TURNS]}
    assert {agent: dp.value for agent, dp in by_agent.items() if isinstance(dp, NumberDataPoint)} == {
        "a": 7,
        "b": 5,
    }
    (exemplar,) = by_agent["a"].exemplars
    assert (exemplar.span_id, exemplar.value) == (13, 7)
