"""The SDK's own OTLP exporters, chosen and configured by the standard OTEL_* variables.

``OTEL_EXPORTER_OTLP_PROTOCOL`` (and the per-signal ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL``)
is read only by the SDK's auto-configuration, so it is read here: ``http/protobuf`` (default)
or ``grpc``. Everything else (endpoint, headers, timeout, compression, certificate, insecure)
is read by the exporter classes themselves.
"""

from __future__ import annotations

import os
from typing import Final, Literal

from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

Signal = Literal["traces", "metrics"]
PROTOCOLS: Final = ("http/protobuf", "grpc")
COMPRESSIONS: Final = ("gzip", "deflate", "none")


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


def protocol(signal: Signal) -> str:
    return (
        _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )


def endpoint(signal: Signal) -> str:
    """Where ``signal`` goes, as the exporter will resolve it (for messages)."""
    specific = _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific:
        return specific
    base = _env("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol(signal) == "grpc":
        return base or "http://localhost:4317"
    return f"{(base or 'http://localhost:4318').rstrip('/')}/v1/{signal}"


def environment_problems() -> list[str]:
    """Problems with the OTEL_* exporter variables, each naming the variable and the fix."""
    problems = []
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                 "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"):  # fmt: skip
        value = _env(name)
        if value is not None and value not in PROTOCOLS:
            problems.append(f"{name}={value!r}: unsupported. Fix: use http/protobuf or grpc")
    for name in ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                 "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"):  # fmt: skip
        value = _env(name)
        if value is not None:
            try:
                ok = float(value) > 0
            except ValueError:
                ok = False
            if not ok:
                problems.append(f"{name}={value!r}: not a positive number of seconds. Fix: e.g. 10")
    for name in ("OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                 "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION"):  # fmt: skip
        value = _env(name)
        if value is not None and value.lower() not in COMPRESSIONS:
            problems.append(f"{name}={value!r}: unsupported. Fix: use gzip, deflate or none")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):  # fmt: skip
        value = _env(name)
        if value is not None and not value.startswith(("http://", "https://")):
            problems.append(f"{name}={value!r}: not an http(s) URL. Fix: e.g. http://localhost:4318")
    return problems


def span_exporter() -> SpanExporter:
    if protocol("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def metric_exporter(temporality: Literal["cumulative", "delta"] = "cumulative") -> MetricExporter:
    from opentelemetry.sdk.metrics import Counter, Histogram

    chosen = AggregationTemporality.DELTA if temporality == "delta" else AggregationTemporality.CUMULATIVE
    preferred: dict[type, AggregationTemporality] = {Counter: chosen, Histogram: chosen}
    if protocol("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(preferred_temporality=preferred)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(preferred_temporality=preferred)
