"""The console exporter: replay's tree per call, and serve's, printed as each root arrives."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

from otelbridge.cartesia.models import parse_call
from otelbridge.delivery.console import ConsoleTransport, render, render_spans
from otelbridge.delivery.telemetry import collect_request, otlp_reader
from otelbridge.mapping import MappedCall, map_call
from otelbridge.mapping.records import SpanRecord
from tests.support.samples import sample_calls
from tests.support.sdk_reference import build_resource, encode_trace_request, to_readable_spans

RESOURCE = build_resource("console-test", "instance-1")


def mapped_samples() -> list[MappedCall]:
    return [map_call(parse_call(raw)) for raw in sample_calls()]


def body(spans: list[SpanRecord]) -> bytes:
    return bytes(encode_trace_request(to_readable_spans(spans, RESOURCE)).SerializeToString())


def test_replay_tree_names_the_call_agent_and_turns() -> None:
    mapped = next(m for m in mapped_samples() if len(m.spans) > 5)
    tree = render(mapped).splitlines()
    root = mapped.root
    assert root is not None
    assert tree[0].startswith(f"call {mapped.call_id}  trace {mapped.trace_id:032x}  agent ")
    assert tree[-1] == f"   {len(mapped.points)} metric points"
    turns = [s for s in mapped.spans if s.parent_span_id == root.span_id]
    assert sum(line.startswith(("├─ ", "└─ ")) for line in tree) == len(turns)
    assert any("tts_ttfb=" in line for line in tree)


def test_serve_console_prints_each_call_when_its_root_arrives() -> None:
    calls = [m for m in mapped_samples() if len(m.spans) > 2][:2]
    out = io.StringIO()
    console = ConsoleTransport(out)
    first, second = calls
    children = [s for m in calls for s in m.spans if not s.is_root]
    assert console.send("traces", body(children)).outcome == "ok"
    assert out.getvalue() == ""  # nothing until a root arrives
    assert first.root is not None and second.root is not None
    assert console.send("traces", body([first.root])).outcome == "ok"
    printed = out.getvalue()
    assert printed == render_spans(first.spans) + "\n\n"
    assert f"call {second.call_id}" not in printed
    assert console.send("traces", body([second.root])).outcome == "ok"
    assert out.getvalue() == printed + render_spans(second.spans) + "\n\n"


def test_spans_after_the_root_print_as_their_own_tree() -> None:
    mapped = next(m for m in mapped_samples() if len(m.spans) > 2)
    assert mapped.root is not None
    out = io.StringIO()
    console = ConsoleTransport(out)
    console.send("traces", body([mapped.root]))
    late = [s for s in mapped.spans if not s.is_root][:1]
    console.send("traces", body(late))
    console.close()  # what never got a root is printed at the end
    tail = out.getvalue().split("\n\n")[-2]
    assert (
        tail.splitlines()[0] == f"call {mapped.call_id}  trace {mapped.trace_id:032x}  (spans after the root)"
    )
    assert tail.splitlines()[1].startswith("└─ " + late[0].name)


def test_metrics_print_a_line_per_metric() -> None:
    from opentelemetry.sdk.metrics import MeterProvider

    from otelbridge.delivery.meter import MetricRecorder

    reader = otlp_reader("cumulative")
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    recorder = MetricRecorder(provider)
    for mapped in mapped_samples():
        recorder.record(mapped.points)
    collected = collect_request(reader, recorder, "cumulative", RESOURCE)
    provider.shutdown()
    assert collected is not None
    out = io.StringIO()
    result = ConsoleTransport(out).send("metrics", collected[0])
    lines = out.getvalue().splitlines()
    assert result.outcome == "ok" and result.message == f"{len(lines)} metrics"
    assert any(line.startswith("metric cartesia.tts.ttfb (histogram): ") for line in lines)
    assert any(line.startswith("metric cartesia.calls (sum): ") for line in lines)


def test_garbage_is_rejected_and_nothing_printed() -> None:
    out = io.StringIO()
    result = ConsoleTransport(out).send("traces", b"\xff\x00garbage")
    assert (result.outcome, result.status) == ("reject", "decode error")
    assert out.getvalue() == ""


# --- terminal escapes (issue 19) -----------------------------------------------------------
#: what a hostile call carries: an OSC retitle, a CSI clear, a forged line, C0/C1 and bidi
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\rcall forged\x9b31m\x00\x7f\u202eevil\u2066\n"
RAW = ("\x1b", "\x07", "\r", "\x9b", "\x00", "\x7f", "\u202e", "\u2066")


def hostile_call() -> dict[str, Any]:
    """A sample call with a tool call, whose ids, names, roles and reasons carry HOSTILE."""
    raw = copy.deepcopy(next(c for c in sample_calls() if "tool_calls" in json.dumps(c)))
    raw.update(id="ac_sid_" + HOSTILE, agent_name="bot" + HOSTILE, status="failed")
    raw.update(end_reason="hangup" + HOSTILE, error_message="boom" + HOSTILE)
    transcript = raw["transcript"]
    transcript[0]["tool_calls"][0]["name"] = "get_weather" + HOSTILE
    transcript.append({**transcript[-1], "role": "narrator" + HOSTILE})
    return raw


def assert_escaped(text: str) -> None:
    for raw in RAW:
        assert raw not in text, (raw, text)
    escaped = r"\x1b]0;pwned\x07\x1b[2J\rcall forged\x9b31m\x00\x7f\u202eevil\u2066\n"
    assert "call ac_sid_" + escaped in text
    assert "agent bot" + escaped in text
    assert "(hangup" + escaped + ")" in text
    assert "ERROR: boom" + escaped in text
    assert "get_weather" + escaped in text
    assert "narrator" + escaped in text
    assert not any(line.startswith("call forged") for line in text.splitlines())


def test_values_from_the_call_are_printed_escaped() -> None:
    mapped = map_call(parse_call(hostile_call()))
    assert_escaped(render(mapped))
    # serve's console: the same tree, from the OTLP request
    out = io.StringIO()
    console = ConsoleTransport(out)
    assert console.send("traces", body(mapped.spans)).outcome == "ok"
    assert_escaped(out.getvalue())
