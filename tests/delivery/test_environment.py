"""The standard OTEL_* variables, read in one place (otelbridge/delivery/environment.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from otelbridge.delivery.environment import KNOWN_OTLP_VARS, OtelEnvironment


def env(**variables: str) -> OtelEnvironment:
    return OtelEnvironment(variables)


def test_http_protobuf_and_localhost_are_the_defaults() -> None:
    e = env()
    assert e.protocol("traces") == "http/protobuf"
    assert e.endpoint("traces") == "http://localhost:4318/v1/traces"
    assert e.endpoint("metrics") == "http://localhost:4318/v1/metrics"
    assert (e.timeout("traces"), e.compression("metrics"), e.headers("traces")) == (10.0, "none", {})


def test_grpc_by_protocol_variable() -> None:
    e = env(OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317")
    assert e.protocol("traces") == "grpc" and e.endpoint("traces") == "http://127.0.0.1:4317"
    assert env(OTEL_EXPORTER_OTLP_PROTOCOL="grpc").endpoint("metrics") == "http://localhost:4317"


def test_per_signal_variables_win() -> None:
    e = env(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://mimir/otlp/v1/metrics",
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_HEADERS="x-team=a,x-key=general",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS="x-key=traces",
    )
    assert e.endpoint("metrics") == "http://mimir/otlp/v1/metrics"
    assert e.protocol("traces") == "grpc" and e.protocol("metrics") == "http/protobuf"
    assert e.headers("traces") == {"x-team": "a", "x-key": "traces"}
    assert e.headers("metrics") == {"x-team": "a", "x-key": "general"}
    assert sorted(e.header_values()) == ["a", "a", "general", "traces"]


def test_exporter_per_signal_falls_back_to_otelbridge_exporter() -> None:
    assert env().exporters("otlp") == {"traces": "otlp", "metrics": "otlp"}
    assert env().exporters("console") == {"traces": "console", "metrics": "console"}
    e = env(OTEL_METRICS_EXPORTER="none")
    assert e.exporters("otlp") == {"traces": "otlp", "metrics": "none"}
    assert env(OTEL_TRACES_EXPORTER="Console", OTEL_METRICS_EXPORTER="otlp").exporters("none") == {
        "traces": "console",
        "metrics": "otlp",
    }
    assert env(OTEL_TRACES_EXPORTER="zipkin").exporter("traces", "otlp") == "otlp"  # reported, below


def test_exporter_problems_name_the_variable_and_the_fix() -> None:
    problems = env(OTEL_TRACES_EXPORTER="zipkin", OTEL_METRICS_EXPORTER="prometheus").problems()
    assert [p.split("=")[0] for p in problems] == ["OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER"]
    assert all("Fix: use otlp, console or none" in p for p in problems)
    assert "/metrics on the admin port is always served" in problems[1]


def test_temporality_and_interval() -> None:
    assert env().temporality() == "cumulative" and env().metric_interval_s() == 60.0
    e = env(OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="DELTA", OTEL_METRIC_EXPORT_INTERVAL="500")
    assert (e.temporality(), e.metric_interval_s()) == ("delta", 0.5)
    problems = env(
        OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="sometimes", OTEL_METRIC_EXPORT_INTERVAL="-1"
    ).problems()
    assert [p.split("=")[0] for p in problems] == [
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        "OTEL_METRIC_EXPORT_INTERVAL",
    ]


def test_problems_name_each_variable() -> None:
    problems = env(
        OTEL_EXPORTER_OTLP_PROTOCOL="thrift",
        OTEL_EXPORTER_OTLP_TIMEOUT="soon",
        OTEL_EXPORTER_OTLP_COMPRESSION="zstd",
        OTEL_EXPORTER_OTLP_ENDPOINT="collector:4318",
    ).problems()
    assert [p.split("=")[0] for p in problems] == [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    assert all("Fix:" in p for p in problems)


def test_otlp_problems_only_when_otlp_is_used() -> None:
    e = env(OTEL_EXPORTER_OTLP_PROTOCOL="thrift", OTEL_METRICS_EXPORTER="bogus")
    assert [p.split("=")[0] for p in e.problems(otlp=False)] == ["OTEL_METRICS_EXPORTER"]


def test_problems_cover_tls_insecure_headers_and_paths() -> None:
    problems = env(
        OTEL_EXPORTER_OTLP_INSECURE="yes",
        OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE="/nonexistent/ca.pem",
        OTEL_EXPORTER_OTLP_CLIENT_KEY=__file__,
        OTEL_EXPORTER_OTLP_HEADERS="x-api-key=s3cr3t,Authorization: Bearer s3cr3t",
        OTEL_EXPORTER_OTLP_TIMEOUT="10000",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://mimir:4318/",
    ).problems()
    assert [p.split("=")[0] for p in problems] == [
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_INSECURE",
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    assert all("Fix:" in p for p in problems)
    assert not any("s3cr3t" in p for p in problems)
    assert "entry 2" in problems[4]
    assert "looks like milliseconds" in problems[0]


def test_a_good_configuration_has_no_problems() -> None:
    assert (
        env(
            OTEL_EXPORTER_OTLP_INSECURE="TRUE",
            OTEL_EXPORTER_OTLP_CERTIFICATE=__file__,
            OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=__file__,
            OTEL_EXPORTER_OTLP_CLIENT_KEY=__file__,
            OTEL_EXPORTER_OTLP_HEADERS="Authorization=Basic dXNlcjpwdw==, x-scope-orgid = 1",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="https://otlp.example/v1/traces",
            OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="https://otlp.example:4317",
            OTEL_EXPORTER_OTLP_TIMEOUT="30",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="none",
        ).problems()
        == []
    )


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPIONT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("OTEL_EXPORTER_OTLP_TRACE_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ("OTEL_EXPORTER_OTLP_HEADER", "OTEL_EXPORTER_OTLP_HEADERS"),
    ],
)
def test_unknown_otlp_variables_get_the_nearest_name(name: str, suggestion: str) -> None:
    assert env(**{name: "x", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318"}).unknown_variables() == [
        f"{name}: not an OTLP exporter variable otelbridge reads. Fix: did you mean {suggestion}?"
    ]


def test_known_and_unrelated_variables_are_not_warned_about() -> None:
    every_known = dict.fromkeys(KNOWN_OTLP_VARS, "x")
    assert env(**every_known, OTEL_SERVICE_NAME="svc", OTEL_TRACES_EXPORTER="otlp").unknown_variables() == []
    assert "sends no logs" in env(OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="x").unknown_variables()[0]
    assert "does not read it" in env(OTEL_EXPORTER_OTLP_SOMETHING_ELSE="x").unknown_variables()[0]


# --- secrets at the edges (issue 19) ---------------------------------------------------------
@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_credentials_in_an_endpoint_url_are_refused_unshown(variable: str) -> None:
    (problem,) = env(**{variable: "https://alice:pa55w0rd-xyz@otlp.example.com:4318/v1/traces"}).problems()
    assert problem.startswith(f"{variable}='https://<credentials>@otlp.example.com:4318/v1/traces'")
    assert "Fix:" in problem and "OTEL_EXPORTER_OTLP_HEADERS" in problem and "authorization=Basic" in problem
    assert "pa55w0rd" not in problem and "alice" not in problem


@pytest.mark.parametrize("url", ["http://[::1", "http://[zz]:4318", "http://[::1]:99999", "http://:4318"])
@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"])
def test_a_malformed_endpoint_url_is_a_problem_not_a_traceback(variable: str, url: str) -> None:
    (problem,) = env(**{variable: url}).problems()
    assert problem.startswith(f"{variable}={url!r}: not a valid URL") and "Fix:" in problem


def test_headers_file_is_read_like_the_variable(tmp_path: Path) -> None:
    general = tmp_path / "headers"
    general.write_text("authorization=Bearer from-a-file-123\nx-team=voice\n")
    traces = tmp_path / "traces-headers"
    traces.write_text("x-team=traces-team")
    environment = env(
        OTEL_EXPORTER_OTLP_HEADERS_FILE=str(general), OTEL_EXPORTER_OTLP_TRACES_HEADERS_FILE=str(traces)
    )
    assert environment.problems() == []
    assert environment.headers("traces") == {
        "authorization": "Bearer from-a-file-123",
        "x-team": "traces-team",
    }
    assert environment.headers("metrics") == {"authorization": "Bearer from-a-file-123", "x-team": "voice"}
    assert "Bearer from-a-file-123" in environment.header_values()  # so the logs redact it
    assert {"OTEL_EXPORTER_OTLP_HEADERS_FILE", "OTEL_EXPORTER_OTLP_METRICS_HEADERS_FILE"} <= KNOWN_OTLP_VARS


def test_headers_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    bad = tmp_path / "bad"
    bad.write_text("x-api-key=secret-in-file,not-a-pair")
    given = tmp_path / "given"
    given.write_text("a=b")
    problems = env(
        OTEL_EXPORTER_OTLP_HEADERS_FILE=str(missing),
        OTEL_EXPORTER_OTLP_TRACES_HEADERS_FILE=str(bad),
        OTEL_EXPORTER_OTLP_METRICS_HEADERS="a=b",
        OTEL_EXPORTER_OTLP_METRICS_HEADERS_FILE=str(given),
    ).problems()
    assert len(problems) == 3, problems
    unreadable, malformed, both = problems
    assert unreadable.startswith(f"OTEL_EXPORTER_OTLP_HEADERS_FILE={str(missing)!r}: cannot read the file")
    assert "Fix:" in unreadable
    assert both.startswith("OTEL_EXPORTER_OTLP_METRICS_HEADERS and OTEL_EXPORTER_OTLP_METRICS_HEADERS_FILE")
    assert "Fix: set only one" in both
    assert malformed.startswith(f"OTEL_EXPORTER_OTLP_TRACES_HEADERS_FILE={str(bad)!r}: entry 2")
    assert "secret-in-file" not in " ".join(problems)


# --- a signal path twice (issue 21) ---------------------------------------------------------
@pytest.mark.parametrize("base", ["http://collector:4318/v1/traces", "http://collector:4318/v1/metrics/"])
def test_a_base_endpoint_ending_in_a_signal_path_is_named_with_the_fix(base: str) -> None:
    (problem,) = OtelEnvironment({"OTEL_EXPORTER_OTLP_ENDPOINT": base}).problems()
    suffix = base.rstrip("/").rsplit("/v1", 1)[1]
    assert problem.startswith(f"OTEL_EXPORTER_OTLP_ENDPOINT={base!r}: the base endpoint gets")
    assert f"/v1{suffix}/v1/traces" in problem and "signal path on top of a signal path" in problem
    assert f"Fix: drop /v1{suffix} from it (http://collector:4318)" in problem
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in problem


def test_a_signal_path_base_is_fine_where_it_is_not_appended() -> None:
    grpc = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317/v1/traces",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    assert OtelEnvironment(grpc).problems() == []
    both_specific = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4318/v1/metrics",
    }
    assert OtelEnvironment(both_specific).problems() == []


def test_a_per_signal_endpoint_with_its_path_twice_is_named() -> None:
    env = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4318/v1/metrics/v1/metrics"}
    (problem,) = OtelEnvironment(env).problems()
    assert "the signal path /v1/metrics is there twice. Fix: keep one" in problem
