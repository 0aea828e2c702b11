"""End to end: the real ``otelbridge replay`` (a subprocess) against real OTLP receivers.

Nothing is mocked: the CLI reads the sample calls (examples/), maps them and exports with the SDK's own
OTLP exporters (HTTP/protobuf and gRPC) to the receivers of tests/support/otlp_receiver.py,
and every assertion is on what those receivers decoded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.mapping import ids
from otelbridge.mapping.conventions import RESPONSE_LATENCY_BUCKETS_S
from tests.delivery.test_console import RAW, assert_escaped, hostile_call
from tests.support.otlp_receiver import GRPC_TRACES_METHOD, GrpcOtlpReceiver, HttpOtlpReceiver, attributes
from tests.support.samples import LIST_CALLS, WEBHOOKS, webhook_events

ALL_SAMPLES = [*LIST_CALLS, WEBHOOKS]


# --- running the CLI ----------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, env: Mapping[str, str] | None = None, timeout: float = 30) -> Run:
    """``python -m otelbridge ARGS`` with a clean environment: no inherited OTEL_* or
    OTELBRIDGE_* variables, only ``env``. Never a traceback, whatever the outcome."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELBRIDGE_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "otelbridge", *map(str, args)],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return Run(proc.returncode, proc.stdout, proc.stderr)


# --- what the samples say -----------------------------------------------------------------
def sample_calls() -> dict[str, dict[str, Any]]:
    """Every call of the List Calls samples, by id (these win over the webhook stream)."""
    calls: dict[str, dict[str, Any]] = {}
    for path in LIST_CALLS:
        for call in json.loads(path.read_text())["data"]:
            calls[call["id"]] = call
    return calls


def webhook_call_ids() -> set[str]:
    found = set()
    for line in WEBHOOKS.read_text().splitlines():
        event = json.loads(line)
        found.add(event.get("call_id") or event.get("request_id"))
    return found


def expected_turns(call: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """span id (hex) -> transcript item, for the spoken turns of a sample call."""
    turns: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for item in call["transcript"]:
        if item["role"] == "system":
            continue
        base = ids.turn_key(item["role"], item["start_timestamp"])
        seen[base] = seen.get(base, 0) + 1
        span_id = ids.turn_span_id(call["id"], item["role"], item["start_timestamp"], seen[base])
        turns[f"{span_id:016x}"] = item
    return turns


def roots(spans: list[Span]) -> list[Span]:
    return [s for s in spans if not s.parent_span_id]


def root_of(receiver: HttpOtlpReceiver | GrpcOtlpReceiver, call_id: str) -> Span:
    (root,) = roots(receiver.spans_by_trace()[ids.trace_id_hex(call_id)])
    return root


def event_attribute_keys(span: Span) -> set[str]:
    return {kv.key for event in span.events for kv in event.attributes}


# --- shared assertions --------------------------------------------------------------------
def assert_one_trace_per_call(receiver: HttpOtlpReceiver | GrpcOtlpReceiver) -> None:
    calls = sample_calls()
    assert set(calls) == webhook_call_ids(), "the samples should describe the same calls"
    assert len(calls) == 12
    by_trace = receiver.spans_by_trace()
    assert set(by_trace) == {ids.trace_id_hex(call_id) for call_id in calls}
    all_ids = [s.span_id.hex() for s in receiver.spans()]
    assert len(all_ids) == len(set(all_ids)), "a call present in two files was exported twice"
    for call_id, call in calls.items():
        spans = by_trace[ids.trace_id_hex(call_id)]
        (root,) = roots(spans)
        attrs = attributes(root.attributes)
        assert attrs["cartesia.call.id"] == call_id
        assert attrs["cartesia.agent.id"] == call["agent_id"]
        assert attrs["cartesia.call.status"] == call["status"]
        in_trace = {s.span_id for s in spans}
        for span in spans:
            assert span.parent_span_id == b"" or span.parent_span_id in in_trace, span.name
        assert root.span_id.hex() == f"{ids.root_span_id(call_id):016x}"


def assert_failed_calls_are_errors(receiver: HttpOtlpReceiver | GrpcOtlpReceiver) -> None:
    failed = {cid: c for cid, c in sample_calls().items() if c["status"] == "failed"}
    assert failed, "the samples have failed calls"
    for call_id, call in failed.items():
        root = root_of(receiver, call_id)
        assert root.status.code == Status.STATUS_CODE_ERROR
        assert root.status.message == call["error_message"]
    for call_id, call in sample_calls().items():
        if call["status"] != "failed":
            assert root_of(receiver, call_id).status.code != Status.STATUS_CODE_ERROR


def assert_turn_ttfbs_exact(receiver: HttpOtlpReceiver | GrpcOtlpReceiver) -> None:
    checked = 0
    for call_id, call in sample_calls().items():
        spans = {s.span_id.hex(): s for s in receiver.spans_by_trace()[ids.trace_id_hex(call_id)]}
        for span_id, item in expected_turns(call).items():
            attrs = attributes(spans[span_id].attributes)
            for key, field in (("cartesia.tts.ttfb", "tts_ttfb"), ("cartesia.stt.ttfb", "stt_ttfb")):
                if item.get(field) is None:
                    assert key not in attrs
                else:
                    assert attrs[key] == item[field]  # exactly the float of the JSON
                    assert type(attrs[key]) is float
                    checked += 1
    assert checked > 100


def assert_resource(receiver: HttpOtlpReceiver | GrpcOtlpReceiver, service_name: str) -> None:
    resources = receiver.trace_resources() + receiver.metric_resources()
    assert resources
    names = {r.get("service.name") for r in resources}
    instances = {r.get("service.instance.id") for r in resources}
    assert names == {service_name}
    assert len(instances) == 1
    assert None not in instances
    assert instances != {""}


def histogram(receiver: HttpOtlpReceiver | GrpcOtlpReceiver, name: str) -> Metric:
    (metric,) = receiver.metrics_by_name()[name]
    assert metric.WhichOneof("data") == "histogram"
    return metric


def assert_metrics(receiver: HttpOtlpReceiver | GrpcOtlpReceiver) -> None:
    ttfb = histogram(receiver, "cartesia.tts.ttfb")
    assert ttfb.unit == "s"
    points = list(ttfb.histogram.data_points)
    assert points
    span_ids = receiver.span_ids()
    trace_ids = set(receiver.spans_by_trace())
    exemplars = [e for p in points for e in p.exemplars]
    assert exemplars, "TTFB observations should carry exemplars"
    for point in points:
        assert 0.05 in point.explicit_bounds
        assert 5.0 in point.explicit_bounds
    for exemplar in exemplars:
        assert exemplar.span_id.hex() in span_ids
        assert exemplar.trace_id.hex() in trace_ids
    expected_count = sum(
        1
        for call in sample_calls().values()
        for item in call["transcript"]
        if item.get("tts_ttfb") is not None and item["tts_ttfb"] >= 0
    )
    assert sum(p.count for p in points) == expected_count

    (calls,) = receiver.metrics_by_name()["cartesia.calls"]
    assert calls.WhichOneof("data") == "sum"
    assert calls.sum.is_monotonic
    by_status: dict[str, float] = {}
    for point in calls.sum.data_points:
        status = attributes(point.attributes)["cartesia.call.status"]
        by_status[status] = by_status.get(status, 0) + point.as_int
    assert by_status == {"completed": 10, "failed": 2}
    assert {"cartesia.stt.ttfb", "cartesia.turn.duration", "cartesia.turns"} <= receiver.metric_names()

    # response latency: one observation per assistant turn span that has one, its exemplar
    latency = histogram(receiver, "cartesia.turn.response_latency")
    answered = {
        s.span_id.hex(): attributes(s.attributes)["cartesia.turn.response_latency"]
        for s in receiver.spans()
        if "cartesia.turn.response_latency" in attributes(s.attributes)
    }
    assert answered and latency.unit == "s"
    assert sum(p.count for p in latency.histogram.data_points) == len(answered)
    assert sum(p.sum for p in latency.histogram.data_points) == pytest.approx(sum(answered.values()))
    names = {s.span_id.hex(): s.name for s in receiver.spans()}
    for point in latency.histogram.data_points:
        assert list(point.explicit_bounds) == list(RESPONSE_LATENCY_BUCKETS_S)
        assert attributes(point.attributes)["cartesia.deployment.id"].startswith("dep_")
        for exemplar in point.exemplars:
            assert names[exemplar.span_id.hex()] == "assistant_turn"
            assert answered[exemplar.span_id.hex()] == exemplar.as_double


# --- OTLP/HTTP: one replay of every sample, many assertions ----------------------------------
@pytest.fixture(scope="module")
def http_replay() -> Iterator[tuple[HttpOtlpReceiver, Run]]:
    with HttpOtlpReceiver() as receiver:
        run = run_cli("replay", *ALL_SAMPLES, env=receiver.env())
        yield receiver, run


def test_http_replay_exits_zero_and_reports(http_replay: tuple[HttpOtlpReceiver, Run]) -> None:
    receiver, run = http_replay
    assert run.returncode == 0, run.stderr
    assert f"12 calls, {len(receiver.spans())} spans" in run.stderr
    assert [r.path for r in receiver.requests] == ["/v1/traces", "/v1/metrics"]
    assert all(r.answer == 200 for r in receiver.requests)
    assert all(r.headers["content-type"] == "application/x-protobuf" for r in receiver.requests)


def test_http_one_trace_per_call(http_replay: tuple[HttpOtlpReceiver, Run]) -> None:
    assert_one_trace_per_call(http_replay[0])


def test_http_failed_calls_are_errors(http_replay: tuple[HttpOtlpReceiver, Run]) -> None:
    assert_failed_calls_are_errors(http_replay[0])


def test_http_turn_ttfb_attributes_are_the_sample_floats(http_replay: tuple[HttpOtlpReceiver, Run]) -> None:
    assert_turn_ttfbs_exact(http_replay[0])


def test_http_resource_defaults(http_replay: tuple[HttpOtlpReceiver, Run]) -> None:
    assert_resource(http_replay[0], "otelbridge")


def test_http_metrics_histogram_exemplars_and_counter(http_replay: tuple[HttpOtlpReceiver, Run]) -> None:
    assert_metrics(http_replay[0])


def test_http_phone_numbers_masked_by_default(http_replay: tuple[HttpOtlpReceiver, Run]) -> None:
    receiver, _ = http_replay
    for call_id, call in sample_calls().items():
        attrs = attributes(root_of(receiver, call_id).attributes)
        raw = call["telephony_params"]["from"]
        assert attrs["cartesia.telephony.from"] != raw
        assert attrs["cartesia.telephony.from"].endswith(raw[-4:])
        assert "*" in attrs["cartesia.telephony.from"]
        assert call["telephony_params"]["to"] not in json.dumps(attrs)


def test_http_transcript_text_kept_by_default(http_replay: tuple[HttpOtlpReceiver, Run]) -> None:
    spans = http_replay[0].spans()
    assert any("cartesia.turn.text" in attributes(s.attributes) for s in spans)
    assert any("cartesia.text_chunk.text" in event_attribute_keys(s) for s in spans)


def test_http_replay_summary_names_both_endpoints(http_replay: tuple[HttpOtlpReceiver, Run]) -> None:
    receiver, run = http_replay
    (summary,) = [line for line in run.stderr.splitlines() if " calls, " in line]
    assert f"spans to {receiver.url}/v1/traces, " in summary
    assert f"metric points to {receiver.url}/v1/metrics; " in summary


def test_http_api_copy_keeps_the_agent_name_only_webhooks_carry(
    http_replay: tuple[HttpOtlpReceiver, Run],
) -> None:
    """The List Calls samples carry no agent_name; the webhook copies of the same calls do.
    The API copy wins field by field, so the name stays on every span of those calls."""
    receiver, _ = http_replay
    names = {
        event["call"]["id"]: event["call"]["agent_name"]
        for event in webhook_events()
        if event.get("call", {}).get("agent_name")
    }
    assert names and not any("agent_name" in call for call in sample_calls().values())
    for call_id, name in names.items():
        spans = receiver.spans_by_trace()[ids.trace_id_hex(call_id)]
        assert {attributes(s.attributes).get("gen_ai.agent.name") for s in spans} == {name}
        assert root_of(receiver, call_id).name == f"invoke_agent {name}"


# --- OTLP/gRPC -------------------------------------------------------------------------------
def test_grpc_replay() -> None:
    with GrpcOtlpReceiver() as receiver:
        run = run_cli("replay", *ALL_SAMPLES, env=receiver.env())
        assert run.returncode == 0, run.stderr
        assert {r.path.rsplit(".", 1)[-1] for r in receiver.requests} == {
            "TraceService/Export",
            "MetricsService/Export",
        }
        assert_one_trace_per_call(receiver)
        assert_failed_calls_are_errors(receiver)
        assert_turn_ttfbs_exact(receiver)
        assert_resource(receiver, "otelbridge")
        assert_metrics(receiver)


# --- settings that change what is exported ------------------------------------------------
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_SERVICE_NAME": "voice-prod"}, "voice-prod"),
        ({"OTEL_SERVICE_NAME": "voice-prod", "OTELBRIDGE_SERVICE_NAME": "bridge-eu"}, "bridge-eu"),
    ],
    ids=["otel-service-name", "otelbridge-service-name-wins"],
)
def test_service_name(env: dict[str, str], expected: str) -> None:
    with HttpOtlpReceiver() as receiver:
        run = run_cli("replay", LIST_CALLS[0], env={**receiver.env(), **env})
        assert run.returncode == 0, run.stderr
        assert_resource(receiver, expected)


def test_transcript_text_drop() -> None:
    with HttpOtlpReceiver() as receiver:
        run = run_cli("replay", *ALL_SAMPLES, env={**receiver.env(), "OTELBRIDGE_TRANSCRIPT_TEXT": "drop"})
        assert run.returncode == 0, run.stderr
        spans = receiver.spans()
        assert len(receiver.spans_by_trace()) == 12
        for span in spans:
            assert "cartesia.turn.text" not in attributes(span.attributes)
            assert "cartesia.text_chunk.text" not in event_attribute_keys(span)
            # nor any copy of the words: no OpenInference input or output on any span
            assert not {"input.value", "output.value"} & set(attributes(span.attributes))
        # the turns are still there, only their words are gone
        assert any(s.name == "assistant_turn" for s in spans)
        assert any(e.name == "cartesia.text_chunk" for s in spans for e in s.events)


def test_config_file_settings_and_otel_table(tmp_path: Path) -> None:
    """replay --config reads the file serve and backfill read: settings and the [otel] table."""
    with HttpOtlpReceiver() as receiver:
        config = tmp_path / "otelbridge.toml"
        config.write_text(
            '[otelbridge]\ntranscript_text = "drop"\n'
            f'[otel]\nexporter_otlp_endpoint = "{receiver.url}"\nmetrics_exporter = "none"\n'
            'service_name = "from-the-file"\n'
        )
        run = run_cli("replay", *LIST_CALLS, "--config", config)
        assert run.returncode == 0, run.stderr
        assert {r.path for r in receiver.requests} == {"/v1/traces"}
        spans = receiver.spans()
        assert spans and all("cartesia.turn.text" not in attributes(s.attributes) for s in spans)
        assert {r["service.name"] for r in receiver.trace_resources()} == {"from-the-file"}


def test_config_file_problems_stop_replay(tmp_path: Path) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text('transcript_txt = "drop"\n')
    run = run_cli("replay", *LIST_CALLS, "--config", config)
    assert run.returncode == 2
    assert "'transcript_txt' is not an otelbridge setting" in run.stderr and "Fix:" in run.stderr


def test_phone_numbers_exported_raw_when_asked() -> None:
    with HttpOtlpReceiver() as receiver:
        run = run_cli(
            "replay", *LIST_CALLS, env={**receiver.env(), "OTELBRIDGE_EXPORT_PHONE_NUMBERS": "true"}
        )
        assert run.returncode == 0, run.stderr
        for call_id, call in sample_calls().items():
            attrs = attributes(root_of(receiver, call_id).attributes)
            assert attrs["cartesia.telephony.from"] == call["telephony_params"]["from"]
            assert attrs["cartesia.telephony.to"] == call["telephony_params"]["to"]
            person = "to" if call["telephony_params"].get("direction") == "outbound" else "from"
            assert attrs["user.id"] == call["telephony_params"][person]


def test_text_chunk_events_off() -> None:
    with HttpOtlpReceiver() as receiver:
        run = run_cli("replay", *ALL_SAMPLES, env={**receiver.env(), "OTELBRIDGE_TEXT_CHUNK_EVENTS": "false"})
        assert run.returncode == 0, run.stderr
        spans = receiver.spans()
        assert len(receiver.spans_by_trace()) == 12
        assert not [e for s in spans for e in s.events if e.name == "cartesia.text_chunk"]
        # the turns keep their words and their other events
        turns = [s for s in spans if s.name in ("user_turn", "assistant_turn")]
        assert turns and all("cartesia.turn.text" in attributes(s.attributes) for s in turns)
        assert any(e.name == "cartesia.tts.first_byte" for s in turns for e in s.events)


def test_metrics_exporter_none_sends_traces_only_and_succeeds() -> None:
    with HttpOtlpReceiver() as receiver:
        run = run_cli("replay", *LIST_CALLS, env={**receiver.env(), "OTEL_METRICS_EXPORTER": "none"})
        assert run.returncode == 0, run.stderr
        assert {r.path for r in receiver.requests} == {"/v1/traces"}
        assert "metric points not sent (exporter none)" in run.stderr
        assert "NOT delivered" not in run.stderr


def test_traces_exporter_none_sends_metrics_only() -> None:
    with HttpOtlpReceiver() as receiver:
        run = run_cli("replay", *LIST_CALLS, env={**receiver.env(), "OTEL_TRACES_EXPORTER": "none"})
        assert run.returncode == 0, run.stderr
        assert {r.path for r in receiver.requests} == {"/v1/metrics"}


def test_delta_temporality_is_honoured() -> None:
    from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_DELTA

    env = {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"}
    with HttpOtlpReceiver() as receiver:
        run = run_cli("replay", *LIST_CALLS, env={**receiver.env(), **env})
        assert run.returncode == 0, run.stderr
        metrics = receiver.metrics_by_name()
        assert metrics["cartesia.calls"][0].sum.aggregation_temporality == AGGREGATION_TEMPORALITY_DELTA
        assert (
            metrics["cartesia.tts.ttfb"][0].histogram.aggregation_temporality == AGGREGATION_TEMPORALITY_DELTA
        )


def test_a_misspelt_otlp_variable_is_warned_about_with_the_nearest_name() -> None:
    with HttpOtlpReceiver() as receiver:
        run = run_cli("replay", LIST_CALLS[0], env={**receiver.env(), "OTEL_EXPORTER_OTLP_ENDPIONT": "x"})
        assert run.returncode == 0, run.stderr
    (line,) = [line for line in run.stderr.splitlines() if "OTEL_EXPORTER_OTLP_ENDPIONT" in line]
    assert "WARNING" in line and "did you mean OTEL_EXPORTER_OTLP_ENDPOINT?" in line
    assert line.startswith("otelbridge: WARNING: OTEL_EXPORTER_OTLP_ENDPIONT:"), line  # the name once


# --- console ---------------------------------------------------------------------------------
def test_console_exporter_prints_trees_and_sends_nothing() -> None:
    with HttpOtlpReceiver() as receiver:
        run = run_cli("replay", *ALL_SAMPLES, "--exporter", "console", env=receiver.env())
        assert run.returncode == 0, run.stderr
        assert receiver.requests == []
    for call_id in sample_calls():
        assert f"call {call_id}" in run.stdout
        assert f"trace {ids.trace_id_hex(call_id)}" in run.stdout
    assert run.stdout.count("\ncall ") + run.stdout.startswith("call ") == 12
    assert "assistant_turn" in run.stdout
    assert "execute_tool" in run.stdout
    assert "ERROR: LLM provider timed out" in run.stdout


def test_console_and_problem_lines_print_values_from_the_records_escaped(tmp_path: Path) -> None:
    bad = {**hostile_call(), "start_time": "not a time"}  # skipped, named on stderr by its id
    page = tmp_path / "hostile.json"
    page.write_text(json.dumps({"data": [hostile_call(), bad]}), encoding="utf-8")
    with HttpOtlpReceiver() as receiver:
        run = run_cli("replay", page, "--exporter", "console", env=receiver.env())
        assert receiver.requests == []
    assert run.returncode == 1, run.stderr  # the bad record
    assert_escaped(run.stdout)
    (problem,) = [line for line in run.stderr.splitlines() if "start_time" in line]
    assert r"(call ac_sid_\x1b]0;pwned\x07\x1b[2J\rcall forged" in problem
    for raw in RAW:
        assert raw not in run.stderr


# --- delivery through retries and compression (the receiver's scripting, end to end) ---------
def test_http_retries_503_with_retry_after_then_delivers() -> None:
    with HttpOtlpReceiver() as receiver:
        receiver.fail_next(2, status=503, retry_after_s=0, path="/v1/traces")
        run = run_cli("replay", LIST_CALLS[0], env=receiver.env())
        assert run.returncode == 0, run.stderr
        answers = [(r.path, r.answer) for r in receiver.requests]
        assert answers == [
            ("/v1/traces", 503),
            ("/v1/traces", 503),
            ("/v1/traces", 200),
            ("/v1/metrics", 200),
        ]
        assert len(receiver.trace_requests) == 1  # only the accepted copy is kept
        assert len(receiver.spans_by_trace()) == 6


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_http_compressed_requests(compression: str) -> None:
    with HttpOtlpReceiver() as receiver:
        env = {**receiver.env(), "OTEL_EXPORTER_OTLP_COMPRESSION": compression}
        run = run_cli("replay", LIST_CALLS[0], env=env)
        assert run.returncode == 0, run.stderr
        assert {r.headers.get("content-encoding") for r in receiver.requests} == {compression}
        assert len(receiver.spans_by_trace()) == 6
        assert "cartesia.tts.ttfb" in receiver.metric_names()


def test_grpc_unavailable_with_retry_info_then_delivers() -> None:
    with GrpcOtlpReceiver() as receiver:
        receiver.fail_next(1, retry_delay_s=0.01, method=GRPC_TRACES_METHOD)
        run = run_cli("replay", LIST_CALLS[0], env=receiver.env(), timeout=20)
        assert run.returncode == 0, run.stderr
        assert [r.answer for r in receiver.requests if r.path == GRPC_TRACES_METHOD] == ["UNAVAILABLE", "OK"]
        assert len(receiver.spans_by_trace()) == 6


def test_grpc_invalid_argument_is_not_delivered() -> None:
    with GrpcOtlpReceiver() as receiver:
        receiver.reject_next(method=GRPC_TRACES_METHOD)
        run = run_cli("replay", LIST_CALLS[0], env=receiver.env())
        assert run.returncode == 1
        assert "spans were not delivered" in run.stderr
        assert receiver.spans() == []
        assert receiver.metric_names()  # metrics still went through


# --- the receiver itself ---------------------------------------------------------------------
def test_receiver_scripted_answers_and_clean_stop() -> None:
    body = ExportTraceServiceRequest().SerializeToString()
    headers = {"Content-Type": "application/x-protobuf"}
    before = set(threading.enumerate())
    with HttpOtlpReceiver() as receiver, httpx.Client(base_url=receiver.url) as client:
        receiver.partial_success_next(3, "too old")
        receiver.reject_next(400, "nope", path="/v1/metrics")
        answer = client.post("/v1/traces", content=body, headers=headers)
        assert answer.status_code == 200
        decoded = ExportTraceServiceResponse.FromString(answer.content)
        assert decoded.partial_success.rejected_spans == 3
        assert decoded.partial_success.error_message == "too old"
        metrics = ExportMetricsServiceRequest().SerializeToString()
        assert client.post("/v1/metrics", content=metrics, headers=headers).status_code == 400
        assert client.post("/v1/metrics", content=metrics, headers=headers).status_code == 200
        assert client.post("/v1/logs", content=body, headers=headers).status_code == 404
        assert client.post("/v1/traces", content=body, headers={}).status_code == 415
        assert receiver.pending_answers == 0
        assert [r.answer for r in receiver.requests] == [200, 400, 200, 404, 415]
        # the client keeps its connection open: stop() must not wait for it
    assert set(threading.enumerate()) <= before


def test_grpc_receiver_scripted_answers_and_clean_stop() -> None:
    before = set(threading.enumerate())
    with GrpcOtlpReceiver() as receiver:
        channel = grpc.insecure_channel(f"127.0.0.1:{receiver.port}")
        try:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            receiver.partial_success_next(2, "too old")
            receiver.fail_next(1, retry_delay_s=0.25)
            answer = stub.Export(ExportTraceServiceRequest(), metadata=(("x-tenant", "t1"),))
            assert answer.partial_success.rejected_spans == 2
            with pytest.raises(grpc.RpcError) as failed:
                stub.Export(ExportTraceServiceRequest())
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            info = RetryInfo.FromString(dict(failed.value.trailing_metadata())["google.rpc.retryinfo-bin"])
            assert info.retry_delay.ToMilliseconds() == 250
            assert [(r.answer, r.headers.get("x-tenant")) for r in receiver.requests] == [
                ("OK", "t1"),
                ("UNAVAILABLE", None),
            ]
            assert len(receiver.trace_requests) == 1
        finally:
            channel.close()
    assert set(threading.enumerate()) <= before
