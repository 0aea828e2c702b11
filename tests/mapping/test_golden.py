"""Golden files: each fixture in tests/testdata through the ``otelbridge replay`` path to the
exact OTLP request (and metric points) it produces, compared with ``<fixture>.otlp.json``.

``pytest --update-golden`` rewrites the expected files instead of comparing. A regenerated
golden is only as good as its review, so the fact tests below pin, per category, what the
contract (docs/conventions.md) promises; they run against a fresh rendering in both modes and
so also fail when a wrong golden is regenerated. Ids and times here are computed from the
fixture text with hashlib and calendar, never with otelbridge's own helpers.
"""

from __future__ import annotations

import calendar
import difflib
import hashlib
import json
import re
from collections.abc import Iterator
from functools import cache
from typing import Any, Final

import pytest

from otelbridge.mapping import ids
from otelbridge.mapping.conventions import CONTRACT_VERSION
from tests.mapping.golden import (
    INSTANCE_ID,
    SERVICE_NAME,
    TESTDATA,
    Span,
    golden_path,
    render_fixture,
    resource_attributes,
    spans,
)

FIXTURES: Final = (
    "interrupted_turns.json",
    "tools_with_results.json",
    "string_metric.json",
    "empty_transcript.json",
    "failed_call.json",
    "long_utterance.json",
    "unknown_fields.json",
    "legacy_shape.jsonl",
    "bad_timing.json",
    "response_latency.json",
)
DIFF_LINES: Final = 60
TURN_NAMES: Final = frozenset({"user_turn", "assistant_turn"})


# --- helpers ------------------------------------------------------------------------------


@cache
def rendered_text(fixture: str) -> str:
    return render_fixture(TESTDATA / fixture)


def document(fixture: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(rendered_text(fixture))
    return result


def raw(fixture: str) -> Any:
    return json.loads((TESTDATA / fixture).read_text(encoding="utf-8"))


def trace_hex(call_id: str) -> str:
    return hashlib.sha256(f"cartesia.call.v1:{call_id}".encode()).digest()[:16].hex()


def span_hex(call_id: str, key: str) -> str:
    return hashlib.sha256(f"cartesia.span.v1:{call_id}:{key}".encode()).digest()[:8].hex()


def utc_ns(text: str) -> int:
    """RFC 3339 -> Unix ns, independently of otelbridge (no float on the way)."""
    match = re.fullmatch(r"(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(?:\.(\d+))?(Z|([+-])(\d\d):(\d\d))", text)
    assert match is not None, text
    y, mo, d, h, mi, s = (int(match[i]) for i in range(1, 7))
    seconds = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    if match[8] != "Z":
        sign = 1 if match[9] == "+" else -1
        seconds -= sign * (int(match[10]) * 3600 + int(match[11]) * 60)
    return seconds * 1_000_000_000 + int((match[7] or "").ljust(9, "0"))


def call_spans(fixture: str, call_id: str) -> list[Span]:
    found = [s for s in spans(document(fixture)) if s.trace_id == trace_hex(call_id)]
    assert found, f"no spans for call {call_id} in {fixture}"
    return found


def root_of(group: list[Span]) -> Span:
    (root,) = [s for s in group if s.parent_span_id is None]
    return root


def turns_of(group: list[Span]) -> list[Span]:
    return [s for s in group if s.name in TURN_NAMES]


def points(fixture: str, **match: Any) -> list[dict[str, Any]]:
    return [p for p in document(fixture)["metric_points"] if all(p[k] == v for k, v in match.items())]


def adjustments(span: Span) -> list[str]:
    value = span.attributes.get("otelbridge.time_adjustments", [])
    assert isinstance(value, list)
    return value


def mismatch_message(name: str, expected: str, actual: str) -> str:
    """A unified diff of a golden mismatch, cut to its first lines."""
    diff = list(
        difflib.unified_diff(
            expected.splitlines(), actual.splitlines(), f"expected/{name}", f"actual/{name}", lineterm=""
        )
    )
    shown = "\n".join(diff[:DIFF_LINES])
    more = f"\n... ({len(diff) - DIFF_LINES} more diff lines)" if len(diff) > DIFF_LINES else ""
    return (
        f"{name} differs from what the code now produces. If the change is intended, run "
        f"`pytest tests/mapping/test_golden.py --update-golden` and review the new file.\n{shown}{more}"
    )


# --- the golden comparison ---------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURES)
def test_golden(fixture: str, update_golden: bool) -> None:
    actual = rendered_text(fixture)
    expected_file = golden_path(TESTDATA / fixture)
    if update_golden:
        if not expected_file.exists() or expected_file.read_text(encoding="utf-8") != actual:
            expected_file.write_text(actual, encoding="utf-8")
        return
    if not expected_file.exists():
        pytest.fail(
            f"{expected_file.name} is missing: run pytest --update-golden and review it", pytrace=False
        )
    expected = expected_file.read_text(encoding="utf-8")
    if actual != expected:
        pytest.fail(mismatch_message(expected_file.name, expected, actual), pytrace=False)


def test_rendering_is_deterministic() -> None:
    fixture = "interrupted_turns.json"
    assert render_fixture(TESTDATA / fixture) == rendered_text(fixture)


def test_testdata_holds_exactly_the_fixtures_and_their_goldens() -> None:
    expected = set(FIXTURES) | {golden_path(TESTDATA / f).name for f in FIXTURES}
    assert {p.name for p in TESTDATA.iterdir() if p.is_file()} == expected


def test_mismatch_message_is_a_short_unified_diff() -> None:
    expected = "".join(f"line {i}\n" for i in range(200))
    actual = "".join(f"line {i}\n" if i % 2 else f"line {i}!\n" for i in range(200) if i != 150)
    message = mismatch_message("x.otlp.json", expected, actual)
    assert "--update-golden" in message
    assert "--- expected/x.otlp.json" in message and "+++ actual/x.otlp.json" in message
    assert "-line 2\n+line 2!\n" in message
    assert "-line 150" not in message  # past the first 60 lines, only counted
    assert "more diff lines" in message
    assert len(message.splitlines()) == DIFF_LINES + 2
    assert mismatch_message("x", "a\n", "a\n").endswith("review the new file.\n")


# --- facts every golden must show --------------------------------------------------------


def all_spans() -> Iterator[tuple[str, Span]]:
    for fixture in FIXTURES:
        for span in spans(document(fixture)):
            yield fixture, span


@pytest.mark.parametrize("fixture", FIXTURES)
def test_structure_of_every_trace(fixture: str) -> None:
    doc = document(fixture)
    assert resource_attributes(doc) == [
        {"service.name": SERVICE_NAME, "service.instance.id": INSTANCE_ID, "telemetry.sdk.language": "python"}
    ]
    by_trace: dict[str, list[Span]] = {}
    for span in spans(doc):
        by_trace.setdefault(span.trace_id, []).append(span)
    for trace_id, group in by_trace.items():
        root = root_of(group)
        call_id = root.attributes["cartesia.call.id"]
        assert trace_id == trace_hex(call_id)
        assert root.span_id == span_hex(call_id, "root")
        assert root.name.startswith("invoke_agent")
        assert root.attributes["otelbridge.contract.version"] == CONTRACT_VERSION
        ids = [s.span_id for s in group]
        assert len(set(ids)) == len(ids)
        by_id = {s.span_id: s for s in group}
        for span in group:
            assert span.attributes["gen_ai.conversation.id"] == call_id
            assert root.start_ns <= span.start_ns <= span.end_ns <= root.end_ns
            for event in span.events:
                assert span.start_ns <= event.time_ns <= span.end_ns, (span.name, event.name)
            if span.name in TURN_NAMES:
                assert span.parent_span_id == root.span_id
                start_ms = span.attributes["cartesia.turn.start_offset"]
                assert isinstance(start_ms, float)
            elif span.name.startswith("execute_tool"):
                assert span.parent_span_id is not None
                turn = by_id[span.parent_span_id]
                assert turn.name in TURN_NAMES
                assert span.start_ns == span.end_ns == turn.start_ns
            else:
                assert span is root
        assert sum(1 for s in group if s.status_code == "STATUS_CODE_ERROR") == (
            1 if root.attributes["cartesia.call.status"] == "failed" else 0
        )
    for point in doc["metric_points"]:
        span_hex_id = f"{point['span_id']:016x}"
        trace_hex_id = f"{point['trace_id']:032x}"
        owner = [s for s in by_trace[trace_hex_id] if s.span_id == span_hex_id]
        assert owner, point
        call_id = root_of(by_trace[trace_hex_id]).attributes["cartesia.call.id"]
        assert call_id not in json.dumps(point["attributes"], ensure_ascii=False)


def test_phone_numbers_are_masked_to_their_last_four_digits() -> None:
    seen = 0
    for _, span in all_spans():
        for key in ("cartesia.telephony.from", "cartesia.telephony.to"):
            value = span.attributes.get(key)
            if value is None:
                continue
            seen += 1
            digits = re.sub(r"\D", "", value)
            assert len(digits) == 4, value
            assert value.count("*") >= 7, value
    assert seen >= 14


def test_turn_span_ids_follow_role_and_start_microsecond() -> None:
    # 8.9000004 s -> 8900 ms (to the microsecond); 0.731204 -> 731.204; 14.001556 -> 14001.556
    cases = [
        ("interrupted_turns.json", "ac_sid_4kQ9bRzT1nVwXe7YpLm2Hd", "assistant", "turn:assistant:8900"),
        ("tools_with_results.json", "ac_sid_Tq8vWn3KcZ5yLp0RbXe2Ju", "user", "turn:user:731.204"),
        ("tools_with_results.json", "ac_sid_Tq8vWn3KcZ5yLp0RbXe2Ju", "assistant", "turn:assistant:14001.556"),
        ("bad_timing.json", "ac_sid_Bt1mQx7RzWn3YkLp5VcE9d", "user", "turn:user:-250"),
    ]
    for fixture, call_id, role, key in cases:
        turn_ids = {
            s.span_id
            for s in turns_of(call_spans(fixture, call_id))
            if s.attributes["cartesia.turn.role"] == role
        }
        assert span_hex(call_id, key) in turn_ids, key


def test_openinference_attributes_show_the_conversation() -> None:
    """docs/conventions.md section 10, on every golden: the span kinds, each turn's words as its
    input (the caller) or output (the agent), the root's first words, summary, session, user and
    metadata, and the deployment on turn and tool spans."""
    kinds = {"invoke_agent": "AGENT", "user_turn": "CHAIN", "assistant_turn": "CHAIN", "execute_tool": "TOOL"}
    roots = 0
    for fixture in FIXTURES:
        by_trace: dict[str, list[Span]] = {}
        for span in spans(document(fixture)):
            by_trace.setdefault(span.trace_id, []).append(span)
        for group in by_trace.values():
            root = root_of(group)
            roots += 1
            a = root.attributes
            for span in group:
                assert span.attributes["openinference.span.kind"] == kinds[span.name.split(" ")[0]]
                for io in ("input", "output"):
                    has_value = f"{io}.value" in span.attributes
                    assert has_value == (f"{io}.mime_type" in span.attributes), (fixture, span.name)
                if span is not root:
                    assert span.attributes.get("cartesia.deployment.id") == a.get("cartesia.deployment.id")
            turns = turns_of(group)
            for turn in turns:
                words, other = ("input", "output") if turn.name == "user_turn" else ("output", "input")
                assert f"{other}.value" not in turn.attributes
                text = turn.attributes.get("cartesia.turn.text")
                if text not in (None, "-"):
                    assert turn.attributes[f"{words}.value"] == text
                    assert turn.attributes[f"{words}.mime_type"] == "text/plain"
            first = next((t for t in turns if t.name == "user_turn" and "input.value" in t.attributes), None)
            assert a.get("input.value") == (first.attributes["input.value"] if first else None)
            assert a.get("output.value") == a.get("cartesia.call.summary")
            call_id = a["cartesia.call.id"]
            assert a["session.id"] == call_id
            direction = a.get("cartesia.telephony.direction")
            caller = "cartesia.telephony.to" if direction == "outbound" else "cartesia.telephony.from"
            assert a.get("user.id") == a.get(caller)
            if "metadata" in a:
                metadata = json.loads(a["metadata"])
                assert metadata.get("cartesia.deployment.id") == a.get("cartesia.deployment.id")
                assert metadata.get("cartesia.call.end_reason") == a.get("cartesia.call.end_reason")
                for key, value in a.items():
                    if key.startswith("cartesia.call.metadata."):
                        found: Any = metadata
                        for part in key.removeprefix("cartesia.call.metadata.").split("."):
                            found = found[part]
                        assert found == (json.loads(value) if isinstance(found, list) else value)
            for tool in (s for s in group if s.name.startswith("execute_tool")):
                assert tool.attributes["input.value"] == tool.attributes["gen_ai.tool.call.arguments"]
                assert tool.attributes["input.mime_type"] == "application/json"
                assert tool.attributes.get("output.value") == tool.attributes.get("gen_ai.tool.call.result")
    assert roots == 13


# --- facts per category -------------------------------------------------------------------


def test_interrupted_turns_overlap_and_are_marked() -> None:
    fixture, call_id = "interrupted_turns.json", "ac_sid_4kQ9bRzT1nVwXe7YpLm2Hd"
    group = call_spans(fixture, call_id)
    root = root_of(group)
    assert root.start_ns == utc_ns("2026-11-20T10:15:02.118204377Z")
    assert root.end_ns == utc_ns("2026-11-20T10:15:20.904512003Z")
    turns = turns_of(group)
    assert [t.name for t in turns] == ["assistant_turn", "user_turn"] * 2 + ["assistant_turn"]
    greeting, barge_in, answer, reply, goodbye = turns
    assert barge_in.start_ns < greeting.end_ns and reply.start_ns < answer.end_ns  # overlap kept
    assert greeting.start_ns == root.start_ns + 412_055_000
    assert greeting.attributes["cartesia.turn.interrupted"] is True  # was_interrupted
    assert answer.attributes["cartesia.turn.interrupted"] is True  # end_reason only
    assert answer.attributes["cartesia.turn.end_reason"] == "interrupted"
    assert goodbye.attributes["cartesia.turn.interrupted"] is False
    for span in group:
        assert "otelbridge.time_adjusted" not in span.attributes  # sub-ms chunk noise is silent
    # the LogMetric at 6.104 s falls in both turns: it goes to the latest started (the caller's)
    (metric_event,) = [e for t in group for e in t.events if e.name == "cartesia.log_metric"]
    assert metric_event in barge_in.events
    interrupted_counts = points(fixture, instrument="cartesia.turns")
    assert sum(p["attributes"]["cartesia.turn.interrupted"] for p in interrupted_counts) == 2
    # barge-in: one point per assistant turn on its span, 1 for the two the caller cut off
    barge_ins = points(fixture, instrument="cartesia.turns.interrupted")
    assert [(p["span_id"], p["value"]) for p in barge_ins] == [
        (int(span.span_id, 16), 1 if span.attributes["cartesia.turn.interrupted"] else 0)
        for span in (greeting, answer, goodbye)
    ]
    assert {p["attributes"]["cartesia.deployment.id"] for p in barge_ins} == {"dep_tjfIZ4SOcMz9"}


def test_response_latency_follows_its_definition() -> None:
    """docs/conventions.md "Response latency", worked out by hand on the fixture's turns."""
    fixture, call_id = "response_latency.json", "ac_sid_Rl5pWq8ZcTn2XvKe7MbLd3"
    group = call_spans(fixture, call_id)
    by_start = {round(t.attributes["cartesia.turn.start_offset"], 6): t for t in turns_of(group)}
    expected = {
        0.3: None,  # the greeting: no turn before it
        4.35: 0.35,  # after the caller's 2.5 .. 4.000000000000001 (float noise: exact to 1 us)
        6.2: None,  # follows another assistant turn
        8.5: None,  # starts before the caller (6.8 .. 9.0) has finished: an overlap
        11.3: 0.0,  # at the very microsecond the caller stopped (11.300000000000001)
        13.0: None,  # the caller's turn before it has no end
        15.1: 0.2,  # 14.9 -> 15.1, a latency of exactly 0.2 s, not 0.20000000000000107
    }
    for start, latency in expected.items():
        span = by_start[start]
        assert span.name == "assistant_turn"
        assert span.attributes.get("cartesia.turn.response_latency") == latency, start
    for span in turns_of(group):
        if span.name == "user_turn":
            assert "cartesia.turn.response_latency" not in span.attributes
    # one histogram point per latency, on the assistant turn's span (its exemplar), per deployment
    latency_points = points(fixture, instrument="cartesia.turn.response_latency")
    assert sorted(p["value"] for p in latency_points) == [0.0, 0.2, 0.35]
    for point in latency_points:
        assert point["unit"] == "s" and point["kind"] == "histogram"
        assert point["attributes"] == {
            "cartesia.agent.id": "agent_C3J27XDCG2LmlZGEONYlgC",
            "cartesia.deployment.id": "dep_NewRelease01",
        }
        turn = next(t for t in group if span_hex(call_id, point["span_key"]) == t.span_id)
        assert turn.name == "assistant_turn"
        assert turn.attributes["cartesia.turn.response_latency"] == point["value"]
    # the deployment on every metric the contract lists, and on no other
    deployed = {"cartesia.tts.ttfb", "cartesia.stt.ttfb", "cartesia.turn.response_latency",
                "cartesia.turn.duration", "cartesia.calls", "cartesia.call.duration",
                "cartesia.turns.interrupted"}  # fmt: skip
    for point in document(fixture)["metric_points"]:
        carries = point["attributes"].get("cartesia.deployment.id")
        assert carries == ("dep_NewRelease01" if point["instrument"] in deployed else None), point


def test_tools_are_children_of_their_turn_with_arguments_and_results() -> None:
    fixture = "tools_with_results.json"
    call = raw(fixture)
    call_id = call["id"]
    group = call_spans(fixture, call_id)
    by_id = {s.span_id: s for s in group}
    tools = [s for s in group if s.name.startswith("execute_tool")]
    expected = []
    for item in call["transcript"]:
        seen: dict[str, int] = {}
        turn_key = f"turn:{item['role']}:{ids.start_key(item['start_timestamp'])}"
        for tool in item.get("tool_calls") or []:
            seen[tool["id"]] = seen.get(tool["id"], 0) + 1
            key = f"{turn_key}:tool:{tool['id']}" + (f":{seen[tool['id']]}" if seen[tool["id"]] > 1 else "")
            expected.append((span_hex(call_id, turn_key), span_hex(call_id, key), tool))
    assert len(tools) == len(expected) == 5
    for span, (turn_id, tool_id, tool) in zip(tools, expected, strict=True):
        assert span.parent_span_id == turn_id and by_id[turn_id].name == "assistant_turn"
        assert span.span_id == tool_id
        assert span.name == f"execute_tool {tool['name']}"
        assert span.attributes["gen_ai.tool.call.id"] == tool["id"]
        assert json.loads(span.attributes["gen_ai.tool.call.arguments"]) == (tool["arguments"] or {})
        result = tool.get("result")
        if result is None:
            assert "gen_ai.tool.call.result" not in span.attributes
        elif isinstance(result, str):
            assert span.attributes["gen_ai.tool.call.result"] == result
        else:
            assert json.loads(span.attributes["gen_ai.tool.call.result"]) == result
    assert tools[1].span_id != tools[2].span_id  # one id twice in one turn: two spans
    assert [p["span_id"] for p in points(fixture, instrument="cartesia.tool_calls")] == [
        int(t.span_id, 16) for t in tools
    ]


def test_string_metrics_and_log_messages() -> None:
    fixture, call_id = "string_metric.json", "ac_sid_Fm2pXr9QdTnY6wKc1LzBe4"
    group = call_spans(fixture, call_id)
    events = {
        (e.attributes.get("cartesia.log_metric.name") or e.attributes.get("cartesia.log.event")): e
        for s in group
        for e in s.events
        if e.name != "cartesia.text_chunk"
    }
    assert events["preferred_day"].attributes["cartesia.log_metric.value"] == "thursday"
    assert events["marketing_consent"].attributes["cartesia.log_metric.value"] == "true"
    assert events["llm_first_chunk_ms"].attributes["cartesia.log_metric.value"] == 780.301
    assert events["agent_turn_ms"].attributes["cartesia.log_metric.value"] == 1432
    lookup = events["order_lookup"].attributes  # LogMessage, nested metadata as a JSON string
    assert lookup["cartesia.log.level"] == "info"
    assert lookup["cartesia.log.message"] == "Found order #12345"
    assert lookup["cartesia.log.metadata.order_id"] == "12345"
    assert lookup["cartesia.log.metadata.items"] == 3
    failed = events["payment_failed"].attributes  # LogMessage, nested metadata as an object
    assert failed["cartesia.log.level"] == "error"
    assert failed["cartesia.log.metadata.card.brand"] == "visa"
    assert json.loads(failed["cartesia.log.metadata.codes"]) == ["card_declined", "do_not_honor"]
    assert not any(k.startswith("cartesia.log.metadata.metadata") for k in failed)
    assert events["form.step"].attributes["cartesia.log.metadata.step"] == "3"
    (day,) = points(fixture, instrument="cartesia.log_metric.preferred_day")
    assert (day["kind"], day["value"], day["unit"]) == ("counter", 1, "1")
    assert day["attributes"]["cartesia.log_metric.value"] == "thursday"
    (chunk_ms,) = points(fixture, instrument="cartesia.log_metric.llm_first_chunk")
    assert (chunk_ms["kind"], chunk_ms["value"], chunk_ms["unit"]) == ("histogram", 0.780301, "s")
    assert "cartesia.log_metric.value" not in chunk_ms["attributes"]
    root = root_of(group)
    assert int(day["span_id"]) == int(root.span_id, 16)  # between two turns: on the root


def test_empty_transcript_is_a_root_alone() -> None:
    fixture = "empty_transcript.json"
    call = raw(fixture)
    (root,) = spans(document(fixture))
    assert root.span_id == span_hex(call["id"], "root") and root.events == []
    assert root.attributes["cartesia.call.turn_count"] == 0
    assert (root.start_ns, root.end_ns) == (utc_ns(call["start_time"]), utc_ns(call["end_time"]))
    (calls,) = points(fixture, instrument="cartesia.calls")
    assert calls["attributes"]["cartesia.call.end_reason"] == "dial_no_answer"
    (duration,) = points(fixture, instrument="cartesia.call.duration")
    assert duration["value"] == (utc_ns(call["end_time"]) - utc_ns(call["start_time"])) / 1e9


def test_failed_call_is_an_error_with_its_message() -> None:
    fixture = "failed_call.json"
    call = raw(fixture)["call"]
    root = root_of(call_spans(fixture, call["id"]))
    assert (root.status_code, root.status_message) == ("STATUS_CODE_ERROR", "LLM provider timed out")
    assert root.attributes["error.type"] == "error"
    assert root.attributes["cartesia.call.error_message"] == "LLM provider timed out"
    (calls,) = points(fixture, instrument="cartesia.calls")
    assert calls["attributes"]["cartesia.call.status"] == "failed"


def test_long_utterance_is_capped_at_a_character_boundary() -> None:
    fixture = "long_utterance.json"
    full_text = raw(fixture)["transcript"][1]["text"]
    assert len(full_text.encode()) >= 100_000
    assert len(rendered_text(fixture).encode()) < 64_000
    all_of_them = spans(document(fixture))
    (long_turn,) = [s for s in all_of_them if s.name == "user_turn"]
    text = long_turn.attributes["cartesia.turn.text"]
    assert full_text.startswith(text)
    # the 2048-byte cut falls inside an em dash: it is dropped whole
    assert len(text.encode()) == 2046 and full_text[len(text)] == "—"
    # every copy of the text is cut alike and listed: the turn's input.value, the root's first words
    assert long_turn.attributes["input.value"] == text
    assert long_turn.attributes["otelbridge.truncated_attributes"] == ["cartesia.turn.text", "input.value"]
    (root,) = [s for s in all_of_them if s.parent_span_id is None]
    assert root.attributes["input.value"] == text
    assert root.attributes["otelbridge.truncated_attributes"] == ["input.value"]
    for span in all_of_them:
        if span is not long_turn and span is not root:
            assert "otelbridge.truncated_attributes" not in span.attributes


def test_a_cut_text_chunk_lists_its_cut_on_its_event() -> None:
    fixture = "long_utterance.json"
    chunks = raw(fixture)["transcript"][1]["text_chunks"]
    (long_turn,) = [s for s in spans(document(fixture)) if s.name == "user_turn"]
    events = [e for e in long_turn.events if e.name == "cartesia.text_chunk"]
    assert len(events) == len(chunks)
    for chunk, event in zip(chunks, events, strict=True):
        text = event.attributes["cartesia.text_chunk.text"]
        if len(chunk["text"].encode()) > 2048:
            assert len(text.encode()) <= 2048 and chunk["text"].startswith(text)
            assert event.attributes["otelbridge.truncated_attributes"] == ["cartesia.text_chunk.text"]
        else:
            assert text == chunk["text"] and "otelbridge.truncated_attributes" not in event.attributes
    assert any(len(c["text"].encode()) == 3211 for c in chunks)  # the reported case: 3,211 bytes


def test_unknown_fields_are_ignored_and_2026_statuses_read() -> None:
    fixture = "unknown_fields.json"
    text = rendered_text(fixture)
    for leaked in ("recording_url", "sentiment", "emotion", "sip_headers", "caller_name", "JANE DOE",
                   "duration_ms", "live_listen_url", "has_more", "voice_id", "speaker"):  # fmt: skip
        assert leaked not in text
    finished, running = raw(fixture)["data"]
    root = root_of(call_spans(fixture, finished["id"]))
    assert root.start_ns == utc_ns("2026-11-20T13:05:09.123Z")  # "+01:00" in the fixture
    assert root.end_ns == utc_ns("2026-11-20T13:05:19.987654321Z")
    assert root.attributes["cartesia.call.metadata.crm.segment"] == "smb"
    assert "otelbridge.time_adjusted" not in root.attributes
    live = root_of(call_spans(fixture, running["id"]))
    assert live.attributes["cartesia.call.status"] == "started"
    assert adjustments(live) == ["end_missing"]
    assert live.end_ns == live.start_ns + 4_500_000_000  # to the end of the transcript so far
    assert [p["span_key"] for p in points(fixture, instrument="cartesia.calls")] == ["root"]  # final only
    assert points(fixture, span_id=int(live.span_id, 16), instrument="cartesia.calls") == []


def test_legacy_stream_builds_calls_from_request_id_and_event_times() -> None:
    fixture = "legacy_shape.jsonl"
    started, completed, lone = (json.loads(line) for line in (TESTDATA / fixture).read_text().splitlines())
    whole = call_spans(fixture, started["request_id"])
    assert trace_hex(started["request_id"]) == "5d74c682cccadde97cde17707bf38f2c"  # published vector
    root = root_of(whole)
    assert root.attributes["cartesia.call.id"] == completed["request_id"]
    assert root.start_ns == utc_ns(started["timestamp"])  # start derived from call_started
    assert root.end_ns == utc_ns(completed["timestamp"])
    assert "otelbridge.time_adjusted" not in root.attributes
    assert [t.attributes["cartesia.turn.text"] for t in turns_of(whole)] == [
        b["text"] for b in completed["body"]
    ]
    derived = root_of(call_spans(fixture, lone["request_id"]))  # its call_started never came
    assert adjustments(derived) == ["start_derived"]
    assert derived.end_ns == utc_ns(lone["timestamp"])
    assert derived.start_ns == derived.end_ns - 5_250_000_000  # minus the last transcript offset
    assert len(points(fixture, instrument="cartesia.calls")) == 2
    assert len(points(fixture, instrument="cartesia.call.duration")) == 1  # only with both times


def test_bad_timing_is_clamped_and_listed() -> None:
    fixture = "bad_timing.json"
    early, running = raw(fixture)
    group = call_spans(fixture, early["id"])
    root = root_of(group)
    assert root.start_ns == utc_ns(early["start_time"])
    assert adjustments(root) == ["end_before_start"]
    assert root.end_ns == root.start_ns + 8_000_000_000  # covers the transcript instead
    negative, chunks, reversed_, open_ended = turns_of(group)
    assert adjustments(negative) == ["start_negative"] and negative.start_ns == root.start_ns
    assert "end_before_start" in adjustments(reversed_) and reversed_.end_ns == reversed_.start_ns
    assert "end_missing" in adjustments(open_ended) and open_ended.end_ns == open_ended.start_ns
    assert adjustments(chunks) == ["text_chunk_outside_turn", "first_byte_after_turn_end"]
    text_events = [e for e in chunks.events if e.name == "cartesia.text_chunk"]
    flagged = [
        e.attributes["cartesia.text_chunk.index"]
        for e in text_events
        if "otelbridge.time_adjusted" in e.attributes
    ]
    assert flagged == [0, 3]  # 0.1 s and 4.9 s; 0.4996 s is float noise, clamped silently
    assert [e.time_ns for e in text_events] == [
        chunks.start_ns,
        chunks.start_ns,
        chunks.start_ns + 700_000_000,
        chunks.end_ns,
    ]
    log_events = [e for s in group for e in s.events if e.name in ("bill_lookup", "cartesia.log_metric")]
    assert len(log_events) == 2
    assert all(e.attributes["otelbridge.time_adjusted"] is True for e in log_events)
    assert {e.time_ns for e in log_events} == {root.start_ns, root.end_ns}
    live = root_of(call_spans(fixture, running["id"]))
    assert adjustments(live) == ["end_missing"]
    assert live.end_ns == utc_ns(running["start_time"]) + 5_500_000_000
    assert points(fixture, instrument="cartesia.call.duration") == []
