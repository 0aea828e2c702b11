"""Telemetry: what each reader keeps, with and without the series for ``/metrics``."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.resources import Resource

from otelbridge.delivery.telemetry import Telemetry
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import InstrumentKind, MetricPoint
from tests.delivery.test_cardinality import _calls


def _otlp_calls(telemetry: Telemetry) -> list[tuple[str, str, int]]:
    collected = telemetry.collect_otlp()
    assert collected is not None
    request = ExportMetricsServiceRequest.FromString(collected[0])
    out = []
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == c.METRIC_CALLS:
                    for dp in metric.sum.data_points:
                        labels = {kv.key: kv.value.string_value for kv in dp.attributes}
                        out.append(
                            (labels[c.METRIC_ATTR_AGENT_ID], labels[c.METRIC_ATTR_DEPLOYMENT_ID], dp.as_int)
                        )
    return sorted(out)


@pytest.mark.parametrize("prometheus", [True, False])
def test_points_reach_otlp_with_or_without_the_prometheus_series(prometheus: bool) -> None:
    telemetry = Telemetry(Resource.create({}), prometheus=prometheus)
    telemetry.recorder.record([_calls("a", "d1"), _calls("a", "d1"), _calls("b", "d2")])
    assert _otlp_calls(telemetry) == [("a", "d1", 2), ("b", "d2", 1)]
    telemetry.recorder.forget_deployments([("a", "d1")])  # whatever readers there are
    assert _otlp_calls(telemetry) == [("b", "d2", 1)]
    if prometheus:
        assert b'cartesia_deployment_id="d2"' in telemetry.prometheus_text()
    else:
        assert telemetry.registry is None
        with pytest.raises(RuntimeError, match="no series for /metrics"):
            telemetry.prometheus_text()
    telemetry.shutdown()


def test_without_the_otlp_reader_only_prometheus_keeps_series() -> None:
    """The metrics exporter ``none``: /metrics still serves every series, nothing is collected."""
    telemetry = Telemetry(Resource.create({}), otlp=False)
    telemetry.recorder.record([_calls("a", "d1"), _calls("b", "d2")])
    assert telemetry.otlp_reader is None and telemetry.collect_otlp() is None
    text = telemetry.prometheus_text()
    assert b'cartesia_deployment_id="d1"' in text and b'cartesia_deployment_id="d2"' in text
    telemetry.recorder.forget_deployments([("a", "d1")])
    assert b'cartesia_deployment_id="d1"' not in telemetry.prometheus_text()
    telemetry.shutdown()


def _histograms(telemetry: Telemetry) -> list[tuple[str, str, int, list[bytes]]]:
    """(scope, metric, count, exemplar span ids) of every histogram point in an OTLP collection."""
    collected = telemetry.collect_otlp()
    assert collected is not None
    request = ExportMetricsServiceRequest.FromString(collected[0])
    return [
        (sm.scope.name, metric.name, dp.count, [e.span_id for e in dp.exemplars])
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.HasField("histogram")
        for dp in metric.histogram.data_points
    ]


@pytest.mark.parametrize("counters", [True, False])
def test_histograms_reach_otlp_and_prometheus_from_one_aggregation(counters: bool) -> None:
    """The call histograms join the call metrics' scope (made when no counter is there yet):
    OTLP with each collection's new exemplars, /metrics cumulative, and a scrape takes nothing
    from the next OTLP collection."""
    telemetry = Telemetry(Resource.create({}))
    ttfb = MetricPoint(c.METRIC_TTS_TTFB, InstrumentKind.HISTOGRAM, "s", "TTS TTFB", 0.2,
                       {c.METRIC_ATTR_AGENT_ID: "a"}, "k", 7, 9)  # fmt: skip
    telemetry.recorder.record([ttfb, *([_calls("a", "d1")] if counters else [])])
    scrape = telemetry.prometheus_text().decode()
    assert 'cartesia_tts_ttfb_seconds_count{cartesia_agent_id="a"' in scrape
    span = (9).to_bytes(8, "big")
    assert _histograms(telemetry) == [(c.INSTRUMENTATION_SCOPE, c.METRIC_TTS_TTFB, 1, [span])]
    telemetry.recorder.record([ttfb])
    assert _histograms(telemetry) == [(c.INSTRUMENTATION_SCOPE, c.METRIC_TTS_TTFB, 2, [span])]
    assert _histograms(telemetry) == [(c.INSTRUMENTATION_SCOPE, c.METRIC_TTS_TTFB, 2, [])]
    count = next(line for line in telemetry.prometheus_text().decode().splitlines()
                 if line.startswith("cartesia_tts_ttfb_seconds_count{"))  # fmt: skip
    assert count.endswith(" 2.0")
    telemetry.shutdown()
