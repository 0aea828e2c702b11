"""Telemetry: what each reader keeps, with and without the series for ``/metrics``."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.resources import Resource

from otelbridge.delivery.telemetry import Telemetry
from otelbridge.mapping import conventions as c
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
