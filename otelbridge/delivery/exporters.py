"""The SDK's own OTLP exporters, chosen and configured by the standard OTEL_* variables.

``OTEL_EXPORTER_OTLP_PROTOCOL`` (and the per-signal ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL``)
is read only by the SDK's auto-configuration, so it is read here: ``http/protobuf`` (default)
or ``grpc``. Everything else (endpoint, headers, timeout, compression, certificate, insecure)
is read by the exporter classes themselves.
"""

from __future__ import annotations

import os
import re
from typing import Final, Literal
from urllib.parse import urlsplit

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
    problems += _more_problems()
    return problems


_SIGNALS: Final[tuple[Signal, ...]] = ("traces", "metrics")
_PREFIXES: Final = ("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_METRICS_")
# One name=value entry as opentelemetry.util.re.parse_env_headers(liberal=True) accepts it; the
# exporters silently drop (and log, value included) any other.
_HEADER_ENTRY: Final = re.compile(r"[ \t]*[!#-'*+\-.0-9A-Z^-z|~]+[ \t]*=[ \t]*[ !#-+\--:<-\[\]-~]*[ \t]*")
_TIMEOUT_MAX_S: Final = 300.0


def _more_problems() -> list[str]:
    """The checks added with the spool transport (TLS files, insecure, headers, paths)."""
    problems: list[str] = []
    for name in (f"{prefix}INSECURE" for prefix in _PREFIXES):
        value = _env(name)
        if value is not None and value.lower() not in ("true", "false"):
            problems.append(f"{name}={value!r}: not true or false. Fix: true (plaintext gRPC) or false")
    for suffix in ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"):
        for name in (f"{prefix}{suffix}" for prefix in _PREFIXES):
            value = _env(name)
            if value is not None and not (os.path.isfile(value) and os.access(value, os.R_OK)):
                problems.append(
                    f"{name}={value!r}: no readable file there. Fix: the path of a PEM file "
                    "readable by this process"
                )
    reported: set[str] = set()
    for signal in _SIGNALS:
        specific = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
        key_name = next(
            (n for n in (f"{specific}CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY") if _env(n)), None
        )
        cert = _env(f"{specific}CLIENT_CERTIFICATE") or _env("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
        if key_name is not None and not cert and key_name not in reported:
            reported.add(key_name)
            problems.append(
                f"{key_name}={_env(key_name)!r}: a client key without a client certificate "
                f"({signal}). Fix: set OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE (or the per-signal one) too"
            )
    for name in (f"{prefix}HEADERS" for prefix in _PREFIXES):
        value = _env(name)
        if value is None:
            continue
        bad = [
            str(i)
            for i, entry in enumerate(value.split(","), 1)
            if entry.strip() and not _HEADER_ENTRY.fullmatch(entry)
        ]
        if bad:  # the value is not shown: headers carry secrets
            problems.append(
                f"{name}=<not shown>: entry {', '.join(bad)} is not name=value and would be dropped. "
                "Fix: comma-separated name=value pairs, e.g. x-api-key=KEY,x-team=TEAM; "
                "percent-encode commas, quotes, semicolons and backslashes in values"
            )
    for name in (f"{prefix}TIMEOUT" for prefix in _PREFIXES):
        value = _env(name)
        try:
            seconds = float(value) if value is not None else None
        except ValueError:
            continue  # reported above
        if seconds is not None and seconds > _TIMEOUT_MAX_S:
            problems.append(
                f"{name}={value!r}: Python's OTLP exporters read seconds (the specification says "
                f"milliseconds); {seconds:g} s looks like milliseconds. Fix: e.g. 10"
            )
    for signal in _SIGNALS:
        name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        value = _env(name)
        if value is None or protocol(signal) == "grpc" or not value.startswith(("http://", "https://")):
            continue
        if urlsplit(value).path in ("", "/"):
            problems.append(
                f"{name}={value!r}: a per-signal endpoint is used as it is, so {signal} would be "
                f"posted to '/'. Fix: {value.rstrip('/')}/v1/{signal} (or set OTEL_EXPORTER_OTLP_ENDPOINT, "
                "which gets the path appended)"
            )
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
