"""Bad input and bad surroundings get a clear answer from the real CLI (a subprocess).

One test per situation: a one-line message naming what is wrong and where, the good part
still exported to a real OTLP receiver, the documented exit status (0 ok, 1 something not
read or not delivered, 2 bad settings) and never a traceback (checked by ``run_cli``).
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

from otelbridge.cartesia.models import parse_call
from otelbridge.mapping import ids, map_call
from tests.support.otlp_receiver import GrpcOtlpReceiver, HttpOtlpReceiver
from tests.support.samples import LIST_CALLS, WEBHOOKS
from tests.test_replay import run_cli

AGENT0 = LIST_CALLS[0]


def agent0_calls() -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = json.loads(AGENT0.read_text())["data"]
    return calls


def trace_ids(call_ids: list[str]) -> set[str]:
    return {ids.trace_id_hex(c) for c in call_ids}


def lines_naming(stderr: str, text: str) -> list[str]:
    return [line for line in stderr.splitlines() if text in line]


# --- input files -----------------------------------------------------------------------------
def test_missing_file(receiver: HttpOtlpReceiver, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    run = run_cli("replay", missing, AGENT0, env=receiver.env())
    assert run.returncode == 1
    (line,) = lines_naming(run.stderr, str(missing))
    assert "no such file" in line
    assert set(receiver.spans_by_trace()) == trace_ids([c["id"] for c in agent0_calls()])


def test_file_that_is_not_json(receiver: HttpOtlpReceiver, tmp_path: Path) -> None:
    bad = tmp_path / "calls.json"
    bad.write_text("this is not JSON {")
    run = run_cli("replay", bad, AGENT0, env=receiver.env())
    assert run.returncode == 1
    (line,) = lines_naming(run.stderr, str(bad))
    assert "not JSON" in line
    assert len(receiver.spans_by_trace()) == len(agent0_calls())


def test_json_object_of_unknown_shape(receiver: HttpOtlpReceiver, tmp_path: Path) -> None:
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"calls": [], "cursor": None}))
    run = run_cli("replay", odd, AGENT0, env=receiver.env())
    assert run.returncode == 1
    (line,) = lines_naming(run.stderr, str(odd))
    assert "unknown shape" in line
    assert "calls, cursor" in line  # the keys it found
    assert len(receiver.spans_by_trace()) == len(agent0_calls())


def test_list_calls_with_one_bad_field(receiver: HttpOtlpReceiver, tmp_path: Path) -> None:
    page = json.loads(AGENT0.read_text())
    bad_index = next(i for i, c in enumerate(page["data"]) if len(c["transcript"]) > 1)
    bad_call = page["data"][bad_index]
    bad_call["transcript"][1]["start_timestamp"] = "abc"
    path = tmp_path / "page.json"
    path.write_text(json.dumps(page))

    run = run_cli("replay", path, env=receiver.env())

    assert run.returncode == 1
    (line,) = lines_naming(run.stderr, f"data[{bad_index}]")
    assert str(path) in line
    assert bad_call["id"] in line
    assert "transcript[1].start_timestamp" in line
    assert "abc" not in line  # input values are named by type only
    good = [c["id"] for c in page["data"] if c["id"] != bad_call["id"]]
    assert set(receiver.spans_by_trace()) == trace_ids(good)


def test_webhook_stream_with_one_broken_line(receiver: HttpOtlpReceiver, tmp_path: Path) -> None:
    lines = WEBHOOKS.read_text().splitlines()
    number = next(n for n, line in enumerate(lines, start=1) if '"call_turn"' in line)
    lines[number - 1] = lines[number - 1][:40]  # cut mid-string
    path = tmp_path / "hooks.jsonl"
    path.write_text("\n".join(lines) + "\n")

    run = run_cli("replay", path, env=receiver.env())

    assert run.returncode == 1
    (line,) = lines_naming(run.stderr, str(path))
    assert f"line {number}:" in line
    assert "not JSON" in line
    assert len(receiver.spans_by_trace()) == 12  # every call, from the other lines


# --- the backend -------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def expected_counts() -> tuple[int, int]:
    """(spans, metric points) of the agent0 sample, by the package's own mapping."""
    mapped = [map_call(parse_call(c)) for c in agent0_calls()]
    return sum(len(m.spans) for m in mapped), sum(len(m.points) for m in mapped)


def test_backend_down() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    run = run_cli(
        "replay",
        AGENT0,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
        timeout=20,
    )
    spans, points = expected_counts()
    assert run.returncode == 1
    (traces,) = lines_naming(run.stderr, "spans were not delivered")
    assert f"{endpoint}/v1/traces" in traces
    assert f"{spans} of {spans} spans" in traces
    (metrics,) = lines_naming(run.stderr, "metric points were not delivered")
    assert f"{endpoint}/v1/metrics" in metrics
    assert f"{points} metric points" in metrics
    assert f"{spans + points} items NOT delivered" in run.stderr


def test_backend_answers_400(receiver: HttpOtlpReceiver) -> None:
    receiver.reject_next(400, "span too old", path="/v1/traces")
    run = run_cli("replay", AGENT0, env=receiver.env())
    spans, _ = expected_counts()
    assert run.returncode == 1
    assert [(r.path, r.answer) for r in receiver.requests] == [("/v1/traces", 400), ("/v1/metrics", 200)]
    (line,) = lines_naming(run.stderr, "spans were not delivered")
    assert f"{receiver.url}/v1/traces" in line
    assert f"{spans} of {spans}" in line


# --- settings ------------------------------------------------------------------------------
def test_invalid_settings_list_every_problem(receiver: HttpOtlpReceiver) -> None:
    env = {
        **receiver.env(),
        "OTELBRIDGE_TRANSCRIPT_TEXT": "bogus",
        "OTELBRIDGE_TYPO": "1",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift",
    }
    run = run_cli("replay", AGENT0, env=env)
    assert run.returncode == 2
    assert "3 problems" in run.stderr
    problems = [line for line in run.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 3
    for variable in ("OTELBRIDGE_TRANSCRIPT_TEXT", "OTELBRIDGE_TYPO", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        (line,) = [p for p in problems if re.match(rf"  - {variable}\b", p)]
        assert "Fix:" in line
    assert receiver.requests == []


def test_backfill_bad_times_and_missing_key_are_listed_together(tmp_path: Path) -> None:
    env = {"OTELBRIDGE_STATE_DIR": str(tmp_path / "state")}
    run = run_cli("backfill", "--since", "yesterday", "--until", "2026-13-45", env=env)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    problems = [line for line in run.stderr.splitlines() if line.startswith("  - ")]
    assert any("--since 'yesterday': not a time" in p and "Fix:" in p for p in problems)
    assert any("--until '2026-13-45': not a time" in p for p in problems)
    assert any("no Cartesia API key" in p and "OTELBRIDGE_CARTESIA_API_KEY" in p for p in problems)
    assert not (tmp_path / "state").exists()  # nothing was started or stored


# --- secrets at the edges (issue 19) ---------------------------------------------------------
def test_check_redacts_otlp_header_values_a_backend_echoes(
    receiver: HttpOtlpReceiver, tmp_path: Path
) -> None:
    key = "otlp-key-Zq8Wm3Lp7Rt2"
    receiver.reject_next(400, f"invalid key {key} (Basic dXNlcjpwYXNzd29yZA==)", path="/v1/traces")
    env = {
        **receiver.env(),
        "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={key},authorization=Basic dXNlcjpwYXNzd29yZA==",
        "OTELBRIDGE_STATE_DIR": str(tmp_path / "state"),
        "OTELBRIDGE_WEBHOOK_SECRET": "check-test-secret-0123456789",
    }
    run = run_cli("check", env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    (line,) = lines_naming(run.stdout, "OTLP traces endpoint")
    assert "FAILED" in line and "invalid key [redacted]" in line, line
    assert key not in run.stdout + run.stderr
    assert "dXNlcjpwYXNzd29yZA==" not in run.stdout + run.stderr


def test_malformed_ipv6_urls_and_url_credentials_are_settings_problems(tmp_path: Path) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://[::1",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://user:pa55w0rd-xyz@127.0.0.1:4318/v1/metrics",
        "OTELBRIDGE_CARTESIA_BASE_URL": "http://[zz]:4318",
        "OTELBRIDGE_STATE_DIR": str(tmp_path / "state"),
        "OTELBRIDGE_WEBHOOK_SECRET": "check-test-secret-0123456789",
    }
    run = run_cli("check", env=env)  # run_cli: never a traceback
    assert run.returncode == 2, run.stdout + run.stderr
    problems = [line for line in run.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 3, problems
    assert all("Fix:" in p for p in problems)
    assert any(
        p.startswith("  - OTEL_EXPORTER_OTLP_TRACES_ENDPOINT='http://[::1': not a valid URL")
        for p in problems
    )
    assert any(
        p.startswith("  - OTELBRIDGE_CARTESIA_BASE_URL='http://[zz]:4318': not a valid URL") for p in problems
    )
    assert any("credentials in the URL" in p and "OTEL_EXPORTER_OTLP_HEADERS" in p for p in problems)
    assert "pa55w0rd" not in run.stderr


def test_a_short_webhook_secret_stops_check(tmp_path: Path) -> None:
    env = {"OTELBRIDGE_STATE_DIR": str(tmp_path / "state"), "OTELBRIDGE_WEBHOOK_SECRET": "short-secret"}
    run = run_cli("check", env=env)
    assert run.returncode == 2
    assert (
        "shorter than 16 characters" in run.stderr and "OTELBRIDGE_ALLOW_SHORT_WEBHOOK_SECRET" in run.stderr
    )
    assert "short-secret" not in run.stderr


# --- check: the hint for the other protocol's port (issue 21) ---------------------------------
def test_check_against_a_grpc_listener_suggests_the_grpc_protocol(tmp_path: Path) -> None:
    """http/protobuf (the default) sent to a real gRPC server: the Fix names the protocol."""
    with GrpcOtlpReceiver() as grpc_receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.url,
            "OTELBRIDGE_STATE_DIR": str(tmp_path / "state"),
            "OTELBRIDGE_WEBHOOK_SECRET": "check-test-secret-0123456789",
        }
        run = run_cli("check", env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    for signal in ("traces", "metrics"):
        (line,) = lines_naming(run.stdout, f"OTLP {signal} endpoint")
        assert "FAILED" in line and "Fix:" in line, line
        assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in line.split("Fix:", 1)[1], line


# --- check: a Fix on every failure, the values in --help (issue 21) ----------------------------
def test_every_check_failure_carries_a_fix(tmp_path: Path) -> None:
    """A state file that is not a database (its error names no fix of its own) and an endpoint
    nobody listens on: each FAILED line ends with what to do."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.db").write_bytes(b"SQLite format 3\x00 but not a database")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "OTELBRIDGE_STATE_DIR": str(state),
        "OTELBRIDGE_WEBHOOK_SECRET": "check-test-secret-0123456789",
    }
    run = run_cli("check", env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    failed = lines_naming(run.stdout, "FAILED")
    assert len(failed) == 3, run.stdout
    for line in failed:
        assert "Fix: " in line, line
    (state_line,) = lines_naming(run.stdout, "state directory")
    assert "not a database" in state_line and "move it out of" in state_line


def test_help_lists_the_values_of_every_choice_setting() -> None:
    for command in ("serve", "check"):
        run = run_cli(command, "--help")
        assert run.returncode == 0
        (line,) = lines_naming(run.stdout, "OTELBRIDGE_EXPORTER ")
        assert "one of: otlp | console | none" in line, line
        (line,) = lines_naming(run.stdout, "OTELBRIDGE_LOG_FORMAT ")
        assert "one of: text | json" in line, line
