"""The series bounds of the call metrics: admission, ``other``, eviction, dropping, the SDK."""

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.resources import Resource

from otelbridge.delivery.cardinality import (
    IDLE_EVICTION_S,
    MAX_LABEL_BYTES,
    VOCABULARY_LIMITS,
    Admission,
    SeriesLimits,
    label_value,
    worst_case,
    worst_case_table,
)
from otelbridge.delivery.meter import MetricRecorder
from otelbridge.delivery.telemetry import Telemetry
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import InstrumentKind, MetricPoint

ROOT = Path(__file__).resolve().parents[2]
Series = dict[str, set[frozenset[tuple[str, object]]]]


def _sample(text: str, name: str, label: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + "{") and label in line]
    return float(line.rsplit(" ", 1)[1])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _point(instrument: str, **attrs: str) -> MetricPoint:
    return MetricPoint(instrument, InstrumentKind.COUNTER, "1", "d", 1, dict(attrs), "k", 7, 9)


def _calls(agent: str, deployment: str = "none", reason: str = "agent_hangup") -> MetricPoint:
    return _point(
        c.METRIC_CALLS,
        **{
            c.METRIC_ATTR_AGENT_ID: agent,
            c.METRIC_ATTR_STATUS: "completed",
            c.METRIC_ATTR_DEPLOYMENT_ID: deployment,
            c.METRIC_ATTR_END_REASON: reason,
        },
    )


def _tool(agent: str, tool: str) -> MetricPoint:
    return _point(c.METRIC_TOOL_CALLS, **{c.METRIC_ATTR_AGENT_ID: agent, c.METRIC_ATTR_TOOL_NAME: tool})


class Meter:
    """A recorder on a provider with an in-memory reader, and the series the reader sees."""

    def __init__(self, **limits: int) -> None:
        self.clock = Clock()
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.recorder = MetricRecorder(self.provider, SeriesLimits(**limits), clock=self.clock)

    def series(self) -> Series:
        data = self.reader.get_metrics_data()
        out: Series = {}
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out[m.name] = {frozenset((dp.attributes or {}).items()) for dp in m.data.data_points}
        return out

    def values(self, instrument: str, key: str) -> set[object]:
        return {dict(attrs)[key] for attrs in self.series().get(instrument, set())}


def test_admission_is_first_come_and_makes_room_only_for_idle_values() -> None:
    admitted = Admission(2)
    assert admitted.admit("a", 0) == (True, None)
    assert admitted.admit("b", 1) == (True, None)
    assert admitted.admit("c", 2) == (False, None)  # full, nothing idle
    assert admitted.admit("a", 3) == (True, None)  # seen again: now the most recent
    assert admitted.admit("c", 1 + IDLE_EVICTION_S) == (True, "b")  # b idle for an hour: out
    assert "b" not in admitted and len(admitted) == 2
    assert Admission(0).admit("a", 0) == (False, None)


def test_agents_past_the_limit_read_other_with_their_agent_scoped_labels() -> None:
    meter = Meter(agents=2)
    meter.recorder.record([_calls(f"agent_{i}", f"dep_{i}") for i in range(5)] + [_tool("agent_4", "lookup")])
    assert meter.values(c.METRIC_CALLS, c.METRIC_ATTR_AGENT_ID) == {"agent_0", "agent_1", "other"}
    others = [dict(s) for s in meter.series()[c.METRIC_CALLS] if dict(s)[c.METRIC_ATTR_AGENT_ID] == "other"]
    assert [s[c.METRIC_ATTR_DEPLOYMENT_ID] for s in others] == ["other"]  # one series, not one per deployment
    assert meter.values(c.METRIC_TOOL_CALLS, c.METRIC_ATTR_TOOL_NAME) == {"other"}
    assert meter.recorder.folded["agents"] == 4


def test_an_idle_agent_gives_its_place_and_its_series_are_dropped() -> None:
    meter = Meter(agents=2)
    meter.recorder.record([_calls("old"), _tool("old", "t"), _calls("busy")])
    meter.clock.now = IDLE_EVICTION_S / 2
    meter.recorder.record([_calls("busy")])
    meter.clock.now = IDLE_EVICTION_S + 1
    meter.recorder.record([_calls("new")])
    assert meter.values(c.METRIC_CALLS, c.METRIC_ATTR_AGENT_ID) == {"busy", "new"}
    assert c.METRIC_TOOL_CALLS not in meter.series()  # the old agent's every series
    assert meter.recorder.dropped["agents"] == 2 and not meter.recorder.folded["agents"]


def test_tool_names_per_agent() -> None:
    meter = Meter(tool_names=2)
    meter.recorder.record([_tool("a", f"t{i}") for i in range(4)] + [_tool("b", "t3")])
    series = {tuple(sorted(dict(s).items())) for s in meter.series()[c.METRIC_TOOL_CALLS]}
    tools = {(dict(s)[c.METRIC_ATTR_AGENT_ID], dict(s)[c.METRIC_ATTR_TOOL_NAME]) for s in map(dict, series)}
    assert tools == {("a", "t0"), ("a", "t1"), ("a", "other"), ("b", "t3")}
    assert meter.recorder.folded["tool_names"] == 2


def test_log_metric_names_per_agent_and_values_per_name() -> None:
    meter = Meter(log_metric_names=2, log_metric_values=1)
    points = [
        _point(f"cartesia.log_metric.m{i}", **{c.METRIC_ATTR_AGENT_ID: agent, c.METRIC_ATTR_LOG_VALUE: value})
        for agent in ("a", "b")
        for i in range(3)
        for value in ("x", "y")
    ]
    meter.recorder.record(points)
    series = meter.series()
    assert {n for n in series if n.startswith("cartesia.log_metric.m")} == {
        "cartesia.log_metric.m0",
        "cartesia.log_metric.m1",
    }
    assert meter.values("cartesia.log_metric.m0", c.METRIC_ATTR_LOG_VALUE) == {"x", "other"}
    assert meter.values(c.METRIC_LOG_METRIC_OTHER, c.METRIC_ATTR_AGENT_ID) == {"a", "b"}
    assert meter.recorder.folded["log_metric_names"] == 4  # m2, twice per agent
    assert meter.recorder.folded["log_metric_values"] == 4  # "y" of m0 and m1, per agent


def test_vocabularies_are_bounded() -> None:
    meter = Meter()
    limit = VOCABULARY_LIMITS[c.METRIC_ATTR_END_REASON]
    meter.recorder.record([_calls("a", reason=f"reason_{i}") for i in range(limit + 10)])
    assert len(meter.values(c.METRIC_CALLS, c.METRIC_ATTR_END_REASON)) == limit + 1
    assert "other" in meter.values(c.METRIC_CALLS, c.METRIC_ATTR_END_REASON)
    assert meter.recorder.folded["vocabulary"] == 10


def test_long_label_values_are_cut_and_stay_distinct() -> None:
    long_a, long_b = "x" * 5000 + "a", "x" * 5000 + "b"
    cut_a, was_cut = label_value(long_a)
    assert was_cut and len(cut_a.encode()) <= MAX_LABEL_BYTES and cut_a != label_value(long_b)[0]
    assert label_value("é" * 32) == ("é" * 32, False)  # 64 bytes: kept
    cut, _ = label_value("é" * 33)
    assert len(cut.encode()) <= MAX_LABEL_BYTES and cut.startswith("é")
    meter = Meter()
    meter.recorder.record([_calls(long_a), _calls(long_b)])
    agents = meter.values(c.METRIC_CALLS, c.METRIC_ATTR_AGENT_ID)
    assert len(agents) == 2 and all(len(str(a).encode()) <= MAX_LABEL_BYTES for a in agents)
    assert meter.recorder.folded["label_bytes"] == 2


def test_fallen_deployments_lose_their_series_in_every_reader() -> None:
    telemetry = Telemetry(Resource.create({}))
    telemetry.recorder.record([_calls("a", "dep_old"), _calls("a", "dep_new"), _calls("b", "dep_old")])
    assert b'cartesia_deployment_id="dep_old"' in telemetry.prometheus_text()
    telemetry.recorder.forget_deployments([("a", "dep_old")])
    text = telemetry.prometheus_text().decode()
    calls = [line for line in text.splitlines() if line.startswith("cartesia_calls_total{")]
    assert len(calls) == 2 and not any('agent_id="a"' in x and "dep_old" in x for x in calls)
    assert _sample(text, "otelbridge_metrics_series_dropped_total", 'limit="deployments"') == 1
    # the OTLP reader forgot it too
    assert telemetry.otlp_reader is not None
    data = telemetry.otlp_reader.get_metrics_data()
    assert data is not None
    points = [
        dict(dp.attributes or {})
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == c.METRIC_CALLS
        for dp in m.data.data_points
    ]
    assert sorted((p[c.METRIC_ATTR_AGENT_ID], p[c.METRIC_ATTR_DEPLOYMENT_ID]) for p in points) == [
        ("a", "dep_new"),
        ("b", "dep_old"),
    ]


def test_self_metrics_count_every_limit_from_zero() -> None:
    telemetry = Telemetry(Resource.create({}), limits=SeriesLimits(agents=1))
    telemetry.recorder.record([_calls("a"), _calls("b")])
    text = telemetry.prometheus_text().decode()
    assert _sample(text, "otelbridge_metrics_folded_total", 'limit="agents"') == 1
    assert _sample(text, "otelbridge_metrics_folded_total", 'limit="tool_names"') == 0


def test_the_sdk_cardinality_limit_is_set_from_the_bounds() -> None:
    limits = SeriesLimits(agents=3, deployments=1)
    assert limits.sdk_cardinality_limit() == 4 * 3 + 1
    telemetry = Telemetry(Resource.create({}), limits=limits)
    # agents past the bound are other: the SDK's own overflow is reached only by a vocabulary
    # product; 20 end reasons x 4 agents x 3 deployment labels pass 13
    telemetry.recorder.record([_calls(f"a{i % 4}", f"d{i % 2}", f"r{i}") for i in range(20)])
    text = telemetry.prometheus_text().decode()
    calls = [line for line in text.splitlines() if line.startswith("cartesia_calls_total{")]
    assert len(calls) == 13 + 1  # the limit, and the SDK's overflow point
    assert any('otel_metric_overflow="true"' in line for line in calls)


def test_worst_case_holds_the_sdk_limit_and_the_page_is_current() -> None:
    limits = SeriesLimits()
    for case in worst_case(limits):
        if not case.instrument.startswith(c.METRIC_LOG_METRIC_PREFIX):
            assert case.series <= limits.sdk_cardinality_limit() + 1
    page = (ROOT / "docs" / "cardinality.md").read_text()
    block = page.split("<!-- worst-case:begin -->\n")[1].split("\n<!-- worst-case:end -->")[0]
    assert block == worst_case_table(), (
        "docs/cardinality.md is stale: paste the output of `python3 -c "
        '"from otelbridge.delivery.cardinality import worst_case_table; print(worst_case_table())"`'
    )


_AGENTS = st.sampled_from(["a", "b", "c"])
_POINTS = st.one_of(
    st.builds(_calls, _AGENTS, st.sampled_from(["d1", "d2"]), st.sampled_from(["r1", "r2", "r" * 300])),
    st.builds(_tool, _AGENTS, st.sampled_from(["t1", "t2", "t3"])),
    st.builds(
        lambda agent, value: MetricPoint(
            c.METRIC_TTS_TTFB,
            InstrumentKind.HISTOGRAM,
            "s",
            "d",
            value,
            {c.METRIC_ATTR_AGENT_ID: agent},
            "k",
            7,
            9,
        ),
        _AGENTS,
        st.sampled_from([0.1, 0.7, 3.0]),
    ),
    st.builds(
        lambda agent, name, text: MetricPoint(
            f"{c.METRIC_LOG_METRIC_PREFIX}{name}",
            InstrumentKind.COUNTER,
            "1",
            "d",
            1,
            {c.METRIC_ATTR_AGENT_ID: agent, c.METRIC_ATTR_LOG_VALUE: text},
            "k",
            7,
            9,
        ),
        _AGENTS,
        st.sampled_from(["m0", "m1"]),
        st.sampled_from(["x", "y"]),
    ),
)


def _recorded(meter: Meter) -> tuple[object, ...]:
    """What a recorder's readers and tallies hold (exemplars aside: a batch's counter points of
    one series are summed, with the last one's)."""
    counters = _counter_values(meter)
    histograms = {
        (m.name, frozenset((dp.attributes or {}).items())): (dp.count, dp.sum, tuple(dp.bucket_counts))
        for m in meter.recorder.histograms.collect(AggregationTemporality.CUMULATIVE)
        for dp in m.data.data_points
        if isinstance(dp, HistogramDataPoint)
    }
    return counters, histograms, dict(meter.recorder.folded), dict(meter.recorder.dropped)


def _counter_values(meter: Meter) -> dict[str, dict[frozenset[tuple[str, object]], float]]:
    data = meter.reader.get_metrics_data()
    out: dict[str, dict[frozenset[tuple[str, object]], float]] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = {
                    frozenset((dp.attributes or {}).items()): dp.value
                    for dp in m.data.data_points
                    if isinstance(dp, NumberDataPoint)
                }
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(_POINTS, max_size=14)), max_size=6))
def test_a_batch_is_bounded_as_its_points_one_by_one(batches: list[tuple[bool, list[MetricPoint]]]) -> None:
    """Within one ``record`` call the bounds are worked out once per attribute set: the result
    (series, folds, drops, and which idle value goes first later) is that of the points
    recorded one by one at the same time."""
    limits = {"agents": 2, "tool_names": 1, "log_metric_names": 1, "log_metric_values": 1}
    whole, one_by_one = Meter(**limits), Meter(**limits)
    for idle, points in batches:
        for meter in (whole, one_by_one):
            meter.clock.now += IDLE_EVICTION_S if idle else 1.0
        whole.recorder.record(points)
        for point in points:
            one_by_one.recorder.record([point])
    assert _recorded(whole) == _recorded(one_by_one)
