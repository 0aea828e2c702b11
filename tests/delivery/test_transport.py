"""otelbridge.delivery.transport against the in-process OTLP receivers (real HTTP and gRPC)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otelbridge import __version__
from otelbridge.delivery import transport as transport_module
from otelbridge.delivery.transport import (
    DiscardTransport,
    OtlpTransport,
    SendResult,
    Transport,
    failure_fix,
    parse_retry_after,
    probe,
)
from otelbridge.mapping.records import EventRecord, SpanRecord
from tests.support.otlp_receiver import (
    GRPC_METRICS_METHOD,
    GRPC_TRACES_METHOD,
    GrpcAnswer,
    GrpcOtlpReceiver,
    HttpAnswer,
    HttpOtlpReceiver,
)
from tests.support.sdk_reference import build_resource, encode_trace_request, to_readable_spans

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
T0 = 1_760_000_000_000_000_000


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No inherited OTEL_* variables, and no proxy (httpx honours *_PROXY like requests does)."""
    for name in list(os.environ):
        if name.startswith("OTEL_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture
def http_receiver() -> Iterator[HttpOtlpReceiver]:
    with HttpOtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcOtlpReceiver]:
    with GrpcOtlpReceiver() as receiver:
        yield receiver


MakeTransport = Callable[[Mapping[str, str]], Transport]


@pytest.fixture
def make_transport() -> Iterator[MakeTransport]:
    """``OtlpTransport``s of an environment, closed after the test."""
    made: list[Transport] = []

    def make(environ: Mapping[str, str]) -> Transport:
        transport = OtlpTransport(environ)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- request bodies -----------------------------------------------------------------------
def trace_request(padding: int = 0) -> ExportTraceServiceRequest:
    root = SpanRecord(
        key="call",
        name="voice.call",
        trace_id=TRACE_ID,
        span_id=0x1111111111111111,
        parent_span_id=None,
        start_ns=T0,
        end_ns=T0 + 30_000_000_000,
        attributes={"gen_ai.conversation.id": "call_1", "padding": "x" * padding},
    )
    turn = SpanRecord(
        key="turn/1",
        name="voice.turn",
        trace_id=TRACE_ID,
        span_id=0x2222222222222222,
        parent_span_id=root.span_id,
        start_ns=T0 + 1_000_000_000,
        end_ns=T0 + 4_000_000_000,
        attributes={"turn.number": 1, "turn.was_interrupted": False},
        events=[EventRecord("log", T0 + 2_000_000_000, {"k": "v"})],
    )
    resource = build_resource("voice-test", "instance-1")
    return encode_trace_request(to_readable_spans([root, turn], resource))


def metrics_request() -> ExportMetricsServiceRequest:
    labels = [KeyValue(key="agent", value=AnyValue(string_value="support"))]
    gauge = Metric(
        name="cartesia.calls.active",
        unit="1",
        gauge=Gauge(data_points=[NumberDataPoint(as_int=3, attributes=labels, time_unix_nano=T0)]),
    )
    histogram = Metric(
        name="cartesia.tts.ttfb",
        unit="s",
        histogram=Histogram(
            data_points=[
                HistogramDataPoint(
                    count=2, sum=0.75, bucket_counts=[1, 1], explicit_bounds=[0.5], attributes=labels
                )
            ],
            aggregation_temporality=AGGREGATION_TEMPORALITY_CUMULATIVE,
        ),
    )
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="voice-test"))])
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(resource=resource, scope_metrics=[ScopeMetrics(metrics=[gauge, histogram])])
        ]
    )


def encoded(request: ExportTraceServiceRequest | ExportMetricsServiceRequest) -> bytes:
    data: bytes = request.SerializeToString()
    return data


def assert_result(result: SendResult, outcome: str, status: str) -> None:
    assert (result.outcome, result.status) == (outcome, status), result


# --- OTLP/HTTP ----------------------------------------------------------------------------
def test_http_ok_delivers_the_same_spans(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    request = trace_request()
    transport = make_transport(http_receiver.env())
    result = transport.send("traces", encoded(request))
    assert result == SendResult("ok", "200", "accepted")
    assert http_receiver.trace_requests == [request]
    assert [s.name for s in http_receiver.spans()] == ["voice.call", "voice.turn"]
    seen = http_receiver.requests[0]
    assert seen.path == "/v1/traces"
    assert seen.headers["content-type"] == "application/x-protobuf"
    assert seen.headers["user-agent"] == f"otelbridge/{__version__}"
    assert "content-encoding" not in seen.headers
    assert transport.endpoint("traces") == f"{http_receiver.url}/v1/traces"


def test_http_reuses_one_connection(http_receiver: HttpOtlpReceiver, make_transport: MakeTransport) -> None:
    transport = make_transport(http_receiver.env())
    for _ in range(3):
        assert transport.send("traces", encoded(trace_request())).outcome == "ok"
    assert transport.send("metrics", encoded(metrics_request())).outcome == "ok"
    assert len(http_receiver.requests) == 4


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_http_compression_arrives_compressed_and_decodes(
    compression: str, http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    request = trace_request(padding=5000)
    body = encoded(request)
    env = {**http_receiver.env(), "OTEL_EXPORTER_OTLP_COMPRESSION": compression}
    assert_result(make_transport(env).send("traces", body), "ok", "200")
    seen = http_receiver.requests[0]
    assert seen.headers["content-encoding"] == compression
    assert int(seen.headers["content-length"]) < len(body) // 4  # compressed on the wire
    assert seen.body == body  # and the receiver's decompression gives back the very bytes
    assert http_receiver.trace_requests == [request]


def test_http_per_signal_compression_overrides(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    env = {
        **http_receiver.env(),
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "none",
    }
    transport = make_transport(env)
    transport.send("traces", encoded(trace_request()))
    transport.send("metrics", encoded(metrics_request()))
    traces, metrics = http_receiver.requests
    assert traces.headers.get("content-encoding") == "gzip"
    assert "content-encoding" not in metrics.headers


def test_http_headers_arrive_and_stay_out_of_results(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    env = {
        **http_receiver.env(),
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer s3cr3t-token,x-team=voice",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-team=traces-team,x-honeycomb-dataset=calls%20prod",
    }
    transport = make_transport(env)
    ok = transport.send("traces", encoded(trace_request()))
    http_receiver.reject_next(401, "unauthorized")
    rejected = transport.send("metrics", encoded(metrics_request()))
    traces, metrics = http_receiver.requests
    assert traces.headers["authorization"] == "Bearer s3cr3t-token"
    assert traces.headers["x-team"] == "traces-team"  # per-signal wins, key by key
    assert traces.headers["x-honeycomb-dataset"] == "calls prod"  # percent-decoded
    assert metrics.headers["authorization"] == "Bearer s3cr3t-token"
    assert metrics.headers["x-team"] == "voice"
    assert "x-honeycomb-dataset" not in metrics.headers
    assert_result(rejected, "reject", "401")
    for result in (ok, rejected):
        assert "s3cr3t" not in repr(result)
    assert "s3cr3t" not in transport.endpoint("traces") + transport.endpoint("metrics")


def test_http_headers_cannot_break_the_protocol(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    env = {
        **http_receiver.env(),
        "OTEL_EXPORTER_OTLP_HEADERS": "content-type=application/json,user-agent=custom/1,bad entry",
    }
    assert_result(make_transport(env).send("traces", encoded(trace_request())), "ok", "200")
    headers = http_receiver.requests[0].headers
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["user-agent"] == "custom/1"


def test_http_503_with_retry_after_seconds(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    http_receiver.fail_next(1, status=503, retry_after_s=7)
    result = make_transport(http_receiver.env()).send("traces", encoded(trace_request()))
    assert_result(result, "retry", "503")
    assert result.retry_after == 7.0
    assert result.message.startswith("Service Unavailable")  # the status is not repeated
    assert http_receiver.trace_requests == []  # not accepted


def test_http_retry_after_as_http_date(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    http_receiver.enqueue(HttpAnswer(503, {"Retry-After": format_datetime(when, usegmt=True)}))
    result = make_transport(http_receiver.env()).send("traces", encoded(trace_request()))
    assert_result(result, "retry", "503")
    assert result.retry_after is not None and 100 < result.retry_after <= 120


@pytest.mark.parametrize("status", [429, 500, 502, 504, 408])
def test_http_transient_statuses_are_retried(
    status: int, http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    http_receiver.fail_next(1, status=status)
    result = make_transport(http_receiver.env()).send("traces", encoded(trace_request()))
    assert_result(result, "retry", str(status))
    assert result.retry_after is None
    assert f"canned {status}" in result.message  # the google.rpc.Status message


def test_http_400_is_rejected_with_the_server_message(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    http_receiver.reject_next(400, "span 7 has an empty trace id")
    result = make_transport(http_receiver.env()).send("traces", encoded(trace_request()))
    assert result == SendResult("reject", "400", "Bad Request: span 7 has an empty trace id")


def test_http_plain_text_error_body_is_capped(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    page = b"<html>\n<body>upstream connect error " + b"x" * 5000 + b"</body></html>"
    http_receiver.enqueue(HttpAnswer(502, {}, page))
    result = make_transport(http_receiver.env()).send("traces", encoded(trace_request()))
    assert_result(result, "retry", "502")
    assert "upstream connect error" in result.message
    assert "\n" not in result.message
    assert len(result.message) < 260


def test_http_json_error_body_gives_its_message(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    body = json.dumps({"code": 3, "message": "invalid resource"}).encode()
    http_receiver.enqueue(HttpAnswer(400, {}, body))
    result = make_transport(http_receiver.env()).send("traces", encoded(trace_request()))
    assert result.message == "Bad Request: invalid resource"


def test_http_partial_success(http_receiver: HttpOtlpReceiver, make_transport: MakeTransport) -> None:
    http_receiver.partial_success_next(2, "spans too old", path="/v1/traces")
    http_receiver.partial_success_next(5, "bad points", path="/v1/metrics")
    transport = make_transport(http_receiver.env())
    traces = transport.send("traces", encoded(trace_request()))
    metrics = transport.send("metrics", encoded(metrics_request()))
    assert (traces.outcome, traces.rejected, traces.partial_message) == ("ok", 2, "spans too old")
    assert (metrics.outcome, metrics.rejected, metrics.partial_message) == ("ok", 5, "bad points")
    assert traces.message == "partial success: 2 rejected: spans too old"


def test_http_undecodable_success_body_is_still_ok(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    http_receiver.enqueue(HttpAnswer(200, {}, b"\xff\xfe not protobuf"))
    result = make_transport(http_receiver.env()).send("traces", encoded(trace_request()))
    assert result == SendResult("ok", "200", "accepted")


def test_http_connection_refused_is_retried(make_transport: MakeTransport) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    result = make_transport(env).send("traces", encoded(trace_request()))
    assert_result(result, "retry", "connection error")
    assert result.message


def test_http_timeout_is_retried(make_transport: MakeTransport) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "0.2",
        }
        started = time.monotonic()
        result = make_transport(env).send("traces", encoded(trace_request()))
        elapsed = time.monotonic() - started
    assert_result(result, "retry", "timeout")
    assert elapsed < 2


def test_http_per_signal_endpoint_is_used_verbatim(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{http_receiver.url}/v1/traces",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{http_receiver.url}/custom/metrics",
    }
    transport = make_transport(env)
    assert transport.endpoint("traces") == f"{http_receiver.url}/v1/traces"
    assert_result(transport.send("traces", encoded(trace_request())), "ok", "200")
    # no /v1/metrics appended: the receiver has nothing at this path
    assert_result(transport.send("metrics", encoded(metrics_request())), "reject", "404")
    assert [r.path for r in http_receiver.requests] == ["/v1/traces", "/custom/metrics"]


def test_http_base_endpoint_trailing_slash(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    transport = make_transport({"OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.url + "/"})
    assert transport.endpoint("metrics") == f"{http_receiver.url}/v1/metrics"


def test_http_metrics_go_to_v1_metrics(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    request = metrics_request()
    result = make_transport(http_receiver.env()).send("metrics", encoded(request))
    assert_result(result, "ok", "200")
    assert http_receiver.requests[0].path == "/v1/metrics"
    assert http_receiver.metric_requests == [request]
    assert http_receiver.metric_names() == {"cartesia.calls.active", "cartesia.tts.ttfb"}


def test_http_garbage_bytes_are_rejected_not_raised(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    result = make_transport(http_receiver.env()).send("traces", b"\xff\x00garbage\x12\x99")
    assert_result(result, "reject", "400")
    assert "cannot decode" in result.message


def test_defaults_and_endpoint_display(make_transport: MakeTransport) -> None:
    transport = make_transport({})
    assert transport.endpoint("traces") == "http://localhost:4318/v1/traces"
    assert transport.endpoint("metrics") == "http://localhost:4318/v1/metrics"
    secret = make_transport(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://user:pw@otlp.example/v1/traces?api_key=k"}
    )
    assert secret.endpoint("traces") == "https://otlp.example/v1/traces"
    grpc_default = make_transport({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert grpc_default.endpoint("traces") == "http://localhost:4317"


def test_unusable_tls_file_is_a_retry_not_an_exception(make_transport: MakeTransport) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:1",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem",
    }
    result = make_transport(env).send("traces", encoded(trace_request()))
    assert_result(result, "retry", "config error")
    grpc_env = {**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert_result(make_transport(grpc_env).send("traces", b""), "retry", "config error")


def test_send_after_close_does_not_raise(http_receiver: HttpOtlpReceiver) -> None:
    transport = OtlpTransport(http_receiver.env())
    transport.close()
    assert_result(transport.send("traces", encoded(trace_request())), "retry", "closed")
    transport.close()  # twice is fine


# --- TLS ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, require_client_cert: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC)

    def issue(name: str, issuer: tuple[Any, Any] | None, ca: bool, san: list[Any]) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer[0].subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
        return cert, key

    def write(stem: str, cert: Any, key: Any) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    ca = issue("otelbridge test CA", None, True, [])
    server = issue("127.0.0.1", ca, False, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = issue("otelbridge test client", ca, False, [])
    ca_path, _ = write("ca", *ca)
    server_cert, server_key = write("server", *server)
    client_cert, client_key = write("client", *client)
    return Pki(ca_path, server_cert, server_key, client_cert, client_key)


def test_https_verifies_with_the_configured_ca(pki: Pki, make_transport: MakeTransport) -> None:
    with HttpOtlpReceiver(pki.server_context(require_client_cert=False)) as receiver:
        trusted = {**receiver.env(), "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca)}
        assert_result(make_transport(trusted).send("traces", encoded(trace_request())), "ok", "200")
        untrusted = make_transport(receiver.env()).send("traces", encoded(trace_request()))
        assert_result(untrusted, "retry", "connection error")
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.message
        assert len(receiver.trace_requests) == 1


def test_https_client_certificate(pki: Pki, make_transport: MakeTransport) -> None:
    with HttpOtlpReceiver(pki.server_context(require_client_cert=True)) as receiver:
        base = {**receiver.env(), "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca)}
        with_cert = {
            **base,
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": str(pki.client_cert),
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": str(pki.client_key),
        }
        assert_result(make_transport(with_cert).send("traces", encoded(trace_request())), "ok", "200")
        without = make_transport(base).send("traces", encoded(trace_request()))
        assert without.outcome == "retry"
        assert len(receiver.trace_requests) == 1


def test_grpc_tls_with_client_certificate(pki: Pki, make_transport: MakeTransport) -> None:
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    with GrpcOtlpReceiver(server_credentials=credentials) as receiver:
        env = {
            **receiver.env(),
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca),
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.client_cert),
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.client_key),
        }
        assert make_transport(env).endpoint("traces").startswith("https://")
        assert_result(make_transport(env).send("traces", encoded(trace_request())), "ok", "grpc OK")
        no_client_cert = {k: v for k, v in env.items() if "CLIENT" not in k}
        assert make_transport(no_client_cert).send("traces", b"").outcome == "retry"
        assert len(receiver.trace_requests) == 1


# --- OTLP/gRPC ----------------------------------------------------------------------------
def test_grpc_ok_delivers_the_same_spans_and_metadata(
    grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport
) -> None:
    request = trace_request()
    env = {**grpc_receiver.env(), "OTEL_EXPORTER_OTLP_HEADERS": "X-Team=voice,Authorization=Bearer t0k3n"}
    transport = make_transport(env)
    result = transport.send("traces", encoded(request))
    assert result == SendResult("ok", "grpc OK", "accepted")
    assert grpc_receiver.trace_requests == [request]
    seen = grpc_receiver.requests[0]
    assert seen.path == GRPC_TRACES_METHOD
    assert seen.headers["x-team"] == "voice"
    assert seen.headers["authorization"] == "Bearer t0k3n"
    assert seen.headers["user-agent"].startswith(f"otelbridge/{__version__}")
    assert transport.endpoint("traces") == grpc_receiver.url


def test_grpc_metrics_and_compression(grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport) -> None:
    request = metrics_request()
    env = {**grpc_receiver.env(), "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}
    assert_result(make_transport(env).send("metrics", encoded(request)), "ok", "grpc OK")
    assert grpc_receiver.requests[0].path == GRPC_METRICS_METHOD
    assert grpc_receiver.metric_requests == [request]


@pytest.mark.parametrize("status_details", [False, True], ids=["retryinfo-bin", "status-details-bin"])
def test_grpc_unavailable_is_retried_with_retry_info(
    status_details: bool, grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport
) -> None:
    grpc_receiver.enqueue(
        GrpcAnswer(grpc.StatusCode.UNAVAILABLE, "", retry_delay_s=1.5, status_details=status_details)
    )
    result = make_transport(grpc_receiver.env()).send("traces", encoded(trace_request()))
    assert_result(result, "retry", "grpc UNAVAILABLE")
    assert result.retry_after == pytest.approx(1.5)
    assert result.message == "canned UNAVAILABLE"  # "grpc UNAVAILABLE: grpc UNAVAILABLE: …" in logs


def test_grpc_unavailable_without_retry_info(
    grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport
) -> None:
    grpc_receiver.fail_next(1)
    result = make_transport(grpc_receiver.env()).send("traces", encoded(trace_request()))
    assert_result(result, "retry", "grpc UNAVAILABLE")
    assert result.retry_after is None


def test_grpc_invalid_argument_is_rejected(
    grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport
) -> None:
    grpc_receiver.reject_next()
    result = make_transport(grpc_receiver.env()).send("traces", encoded(trace_request()))
    assert result == SendResult("reject", "grpc INVALID_ARGUMENT", "rejected by the test")


def test_grpc_resource_exhausted_is_retried_only_with_retry_info(
    grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport
) -> None:
    """OTLP specification: RESOURCE_EXHAUSTED without RetryInfo (e.g. a message over the size
    limit) is not retryable; with RetryInfo it is throttling."""
    transport = make_transport(grpc_receiver.env())
    grpc_receiver.fail_next(1, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert_result(transport.send("traces", b""), "reject", "grpc RESOURCE_EXHAUSTED")
    grpc_receiver.enqueue(GrpcAnswer(grpc.StatusCode.RESOURCE_EXHAUSTED, "", 3, status_details=True))
    throttled = transport.send("traces", b"")
    assert_result(throttled, "retry", "grpc RESOURCE_EXHAUSTED")
    assert throttled.retry_after == 3


def test_grpc_partial_success(grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport) -> None:
    grpc_receiver.partial_success_next(4, "duplicate spans")
    grpc_receiver.partial_success_next(1, "nan value", method=GRPC_METRICS_METHOD)
    transport = make_transport(grpc_receiver.env())
    traces = transport.send("traces", encoded(trace_request()))
    metrics = transport.send("metrics", encoded(metrics_request()))
    assert (traces.outcome, traces.rejected, traces.partial_message) == ("ok", 4, "duplicate spans")
    assert (metrics.outcome, metrics.rejected, metrics.partial_message) == ("ok", 1, "nan value")


def test_grpc_connection_refused_is_retried(make_transport: MakeTransport) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
    }
    result = make_transport(env).send("traces", encoded(trace_request()))
    assert_result(result, "retry", "grpc UNAVAILABLE")


def test_grpc_garbage_bytes_are_rejected_not_raised(
    grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport
) -> None:
    result = make_transport(grpc_receiver.env()).send("traces", b"\xff\x00garbage\x12\x99")
    assert result.outcome == "reject"
    assert result.status.startswith("grpc ")
    assert grpc_receiver.trace_requests == []


def test_protocol_is_chosen_per_signal(
    http_receiver: HttpOtlpReceiver, grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{http_receiver.url}/v1/metrics",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": grpc_receiver.url,
    }
    transport = make_transport(env)
    assert_result(transport.send("traces", encoded(trace_request())), "ok", "grpc OK")
    assert_result(transport.send("metrics", encoded(metrics_request())), "ok", "200")
    assert len(grpc_receiver.trace_requests) == 1
    assert len(http_receiver.metric_requests) == 1


# --- probe, discard, routing --------------------------------------------------------------
def test_probe_http_and_grpc(
    http_receiver: HttpOtlpReceiver, grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport
) -> None:
    for receiver, status in ((http_receiver, "200"), (grpc_receiver, "grpc OK")):
        transport = make_transport(receiver.env())
        assert_result(probe(transport, "traces"), "ok", status)
        assert_result(probe(transport, "metrics"), "ok", status)
        assert receiver.spans() == [] and receiver.metrics() == []  # empty: nothing recorded
        assert len(receiver.trace_requests) == 1 and len(receiver.metric_requests) == 1
    http_receiver.fail_next(1, status=503)
    assert probe(make_transport(http_receiver.env()), "traces").outcome == "retry"


# --- helpers and configuration checks -----------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-3", None),
        ("soon", None),
        ("inf", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_dates() -> None:
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("Wed, 99 Foo 2015") is None


def test_discard_and_routing(http_receiver: HttpOtlpReceiver) -> None:
    discard = DiscardTransport()
    assert discard.send("metrics", b"anything").outcome == "ok"
    assert discard.endpoint("traces") == "discard"
    discard.close()
    routed = transport_module.make_transport({"traces": "otlp", "metrics": "none"}, http_receiver.env())
    try:
        assert routed.endpoint("traces") == f"{http_receiver.url}/v1/traces"
        assert routed.endpoint("metrics") == "discard"
        assert_result(routed.send("traces", encoded(trace_request())), "ok", "200")
        assert_result(routed.send("metrics", encoded(metrics_request())), "ok", "discarded")
        assert len(http_receiver.trace_requests) == 1 and http_receiver.metric_requests == []
    finally:
        routed.close()


def test_http_credentials_in_the_endpoint_do_not_replace_the_configured_header(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    """OtelEnvironment.problems refuses such an endpoint; the transport never sends them either."""
    env = {
        **http_receiver.env(),
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.url.replace("://", "://user:pass@"),
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer configured-token",
    }
    transport = make_transport(env)
    assert_result(transport.send("traces", encoded(trace_request())), "ok", "200")
    (request,) = http_receiver.requests
    assert request.headers["authorization"] == "Bearer configured-token"


# --- the protocol of the other port (issue 21) ------------------------------------------------
def test_http_sent_to_a_grpc_listener_suggests_grpc(
    grpc_receiver: GrpcOtlpReceiver, make_transport: MakeTransport
) -> None:
    """OTLP/HTTP (the default protocol) against a real gRPC server: the failure names it."""
    transport = make_transport({"OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.url})
    result = probe(transport, "traces")
    assert_result(result, "retry", "connection error")
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in result.message  # the sender's retry log says it too
    fix = failure_fix(transport, "traces", result)
    assert "gRPC" in fix and "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in fix and "4318" in fix
    assert "start the Collector" not in fix
    assert grpc_receiver.requests == []


def test_grpc_sent_to_an_http_listener_suggests_http_protobuf(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
    }
    transport = make_transport(env)
    result = probe(transport, "metrics")
    assert result.outcome == "retry"
    fix = failure_fix(transport, "metrics", result)
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in fix and "4317" in fix


def test_port_4317_with_http_protobuf_suggests_grpc(make_transport: MakeTransport) -> None:
    """The IANA OTLP/gRPC port with OTLP/HTTP configured: whatever the answer, the fix is the protocol."""
    transport = make_transport({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    refused = SendResult("retry", "connection error", "ConnectError: [Errno 111] Connection refused")
    fix = failure_fix(transport, "traces", refused)
    assert "port 4317" in fix and "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in fix


def test_nobody_listening_suggests_starting_the_collector(make_transport: MakeTransport) -> None:
    transport = make_transport({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}"})
    result = probe(transport, "traces")
    fix = failure_fix(transport, "traces", result)
    assert "start the Collector" in fix and "OTEL_EXPORTER_OTLP_PROTOCOL" not in fix


def test_a_404_on_a_doubled_signal_path_is_named(
    http_receiver: HttpOtlpReceiver, make_transport: MakeTransport
) -> None:
    http_receiver.reject_next(404, "not found", path="/v1/traces/v1/traces")
    transport = make_transport({"OTEL_EXPORTER_OTLP_ENDPOINT": f"{http_receiver.url}/v1/traces"})
    result = probe(transport, "traces")
    assert_result(result, "reject", "404")
    fix = failure_fix(transport, "traces", result)
    assert "/v1/traces twice" in fix and "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in fix


def test_a_plain_http_route_loads_no_ca_bundle_and_would_trust_no_server() -> None:
    """http:// routes never make a TLS connection: their client's context holds no CA (so no
    bundle is loaded at the first export) and verifies, so it could trust no server if used."""
    from otelbridge.delivery import transport

    context = transport._PLAIN_HTTP
    assert context.cert_store_stats()["x509_ca"] == 0
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
