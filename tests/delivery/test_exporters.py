import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

from otelbridge.delivery import exporters


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def test_http_protobuf_is_the_default() -> None:
    exporter = exporters.span_exporter()
    assert isinstance(exporter, HttpSpanExporter)
    exporter.shutdown()  # type: ignore[no-untyped-call]
    assert exporters.endpoint("traces") == "http://localhost:4318/v1/traces"


def test_grpc_by_protocol_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    exporter = exporters.span_exporter()
    assert isinstance(exporter, GrpcSpanExporter)
    exporter.shutdown()
    assert exporters.endpoint("traces") == "http://127.0.0.1:4317"


def test_per_signal_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://mimir/otlp/v1/metrics")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert exporters.endpoint("metrics") == "http://mimir/otlp/v1/metrics"
    assert exporters.protocol("traces") == "grpc" and exporters.protocol("metrics") == "http/protobuf"


def test_environment_problems_name_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")
    problems = exporters.environment_problems()
    assert [p.split("=")[0] for p in problems] == [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    assert all("Fix:" in p for p in problems)
