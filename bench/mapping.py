"""Benchmark: mapping + OTLP encoding of one realistic call, against the SDK encoder alone.

    python bench/mapping.py [--repeats 7] [--min-time 0.3] [--json] [--profile [{ours,direct}]]

One 40-turn call is built from the sample calls in examples/ (alternating user/assistant turns, 8 text
chunks each, 4 tool calls, 8 system log items), validated once, and then two things are
timed in the same process, both as spans per second:

* ``ceiling``: the SDK's encoder alone on ReadableSpans built beforehand:
  ``encode_trace_request(prebuilt).SerializeToString()``;
* ``ours``: the whole path from the validated call to the bytes the exporter sends:
  ``map_call(call)`` + ``to_readable_spans`` + ``encode_trace_request`` + ``SerializeToString()``;
* ``direct``: the same path with the OTLP request built directly from the mapping records
  with opentelemetry-proto's classes, no ReadableSpan and no SDK encoder: ``map_call(call)``
  + ``otlp.encode_traces`` (the same bytes).

Each measurement is warmed up, then repeated; a repeat runs the operation in a loop for at
least ``--min-time`` seconds (``time.perf_counter``). Best and median are reported, and
ratio = ours / ceiling (the goal is >= 0.5) and direct / ceiling (issue 20's goal is >= 2.0).
``--profile`` prints a cProfile of ``ours``, ``--profile direct`` one of ``direct``.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import itertools
import json
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from common import ROOT

sys.path.insert(0, str(ROOT))  # the checkout's otelbridge and tests.support, from any directory

from otelbridge.cartesia.models import AgentCall, parse_call
from otelbridge.delivery.otlp import encode_traces
from otelbridge.mapping import MappingOptions, map_call
from tests.support.sdk_reference import build_resource, encode_trace_request, to_readable_spans

SAMPLES = ROOT / "examples"
TURNS = 40
CHUNKS_PER_TURN = 8
TOOL_CALLS = 4
SYSTEM_ITEMS = 8
GOAL_RATIO = 0.5
DIRECT_GOAL_RATIO = 2.0  # issue 20: mapping + direct encoding >= 2x the SDK encoder alone


# --- the call -------------------------------------------------------------------------------
def _sample_calls(samples: Path) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for name in ("list-calls-agent0.json", "list-calls-agent1.json"):
        calls += json.loads((samples / name).read_text())["data"]
    return calls


def build_call(samples: Path = SAMPLES) -> dict[str, Any]:
    """A 40-turn call in the List Calls shape, made of the samples' own turns, tools, logs."""
    calls = _sample_calls(samples)
    items = [item for call in calls for item in call["transcript"]]
    spoken = {role: [i for i in items if i["role"] == role] for role in ("user", "assistant")}
    tools = [tool for i in items for tool in i.get("tool_calls") or []]
    system = [i for i in items if i["role"] == "system"]
    words = itertools.cycle(w for i in items if i["role"] != "system" for w in (i.get("text") or "").split())
    template = max(calls, key=lambda c: len(c["transcript"]))

    transcript: list[dict[str, Any]] = []
    t = 0.4
    tool_turns = {5, 13, 23, 33}  # assistant turns (odd index) that call a tool
    for n in range(TURNS):
        role = "user" if n % 2 == 0 else "assistant"
        source = spoken[role][n // 2 % len(spoken[role])]
        duration = max(2.0, min(6.0, (source.get("end_timestamp") or t) - source["start_timestamp"]))
        step = duration * 0.8 / CHUNKS_PER_TURN
        chunk_words = [next(words) for _ in range(CHUNKS_PER_TURN)]
        turn: dict[str, Any] = {
            "role": role,
            "text": " ".join(chunk_words),
            "start_timestamp": round(t, 6),
            "end_timestamp": t + duration,
            "text_chunks": [
                {"text": word + " ", "start_timestamp": round(t + k * step, 6)}
                for k, word in enumerate(chunk_words)
            ],
        }
        if role == "assistant":
            turn["tts_ttfb"] = source.get("tts_ttfb") or 0.2
            turn["end_reason"] = source.get("end_reason") or "completed"
        else:
            turn["stt_ttfb"] = source.get("stt_ttfb") or 0.12
            turn["vad_buffer_ms"] = source.get("vad_buffer_ms") or 200
        if n in tool_turns:
            tool = copy.deepcopy(tools[len(transcript) % len(tools)])
            tool["id"] = f"call_bench_{n}"
            turn["tool_calls"] = [tool]
        transcript.append(turn)
        t += duration + 0.3
    for k in range(SYSTEM_ITEMS):
        item = copy.deepcopy(system[k % len(system)])
        at = round(1.0 + k * (t - 2.0) / SYSTEM_ITEMS, 6)
        item["start_timestamp"] = item["end_timestamp"] = at
        for key in ("log_metric", "log_event"):
            if item.get(key):
                item[key]["timestamp"] = at
        transcript.append(item)
    transcript.sort(key=lambda i: i["start_timestamp"])

    call = {k: v for k, v in template.items() if k != "transcript"}
    call["id"] = "ac_sid_bench40turns"
    call["transcript"] = transcript
    call["end_time"] = _plus_seconds(template["start_time"], t + 1.0)
    return call


def _plus_seconds(rfc3339: str, seconds: float) -> str:
    from otelbridge.cartesia.timestamps import format_rfc3339_ns, parse_rfc3339_ns

    return format_rfc3339_ns(parse_rfc3339_ns(rfc3339) + round(seconds * 1e9))


# --- timing ---------------------------------------------------------------------------------
def calibrate(operation: Callable[[], object], min_time: float) -> int:
    """Warm ``operation`` up and return how many loops take at least ``min_time`` seconds."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            operation()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return loops
        loops = max(loops * 2, int(loops * min_time / max(elapsed, 1e-9) * 1.1))


def timed(operation: Callable[[], object], loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        operation()
    return time.perf_counter() - start


def measure(
    operations: dict[str, Callable[[], object]], spans_per_op: int, repeats: int, min_time: float
) -> dict[str, list[float]]:
    """Spans per second of each repeat, per operation. The operations take turns within each
    repeat, so that a change in machine load hits both alike."""
    loops = {name: calibrate(op, min_time) for name, op in operations.items()}
    rates: dict[str, list[float]] = {name: [] for name in operations}
    for _ in range(repeats):
        for name, op in operations.items():
            rates[name].append(loops[name] * spans_per_op / timed(op, loops[name]))
    return rates


def run(repeats: int, min_time: float) -> dict[str, Any]:
    call: AgentCall = parse_call(build_call())
    options = MappingOptions()
    resource = build_resource("otelbridge-bench", "bench-1")
    mapped = map_call(call, options)
    prebuilt = to_readable_spans(mapped.spans, resource)
    spans = len(prebuilt)
    payload = encode_trace_request(prebuilt).SerializeToString()

    def ceiling() -> bytes:
        data: bytes = encode_trace_request(prebuilt).SerializeToString()
        return data

    def ours() -> bytes:
        readable = to_readable_spans(map_call(call, options).spans, resource)
        data: bytes = encode_trace_request(readable).SerializeToString()
        return data

    def direct() -> bytes:
        return encode_traces(map_call(call, options).spans, resource)

    assert ours() == payload, "the two paths must produce the same bytes"
    assert direct() == payload, "the direct encoder must produce the SDK path's bytes"
    rates = measure({"ceiling": ceiling, "ours": ours, "direct": direct}, spans, repeats, min_time)
    results: dict[str, dict[str, Any]] = {
        name: {"best": max(values), "median": statistics.median(values), "repeats": values}
        for name, values in rates.items()
    }
    ratio_best = results["ours"]["best"] / results["ceiling"]["best"]
    ratio_median = results["ours"]["median"] / results["ceiling"]["median"]
    direct_best = results["direct"]["best"] / results["ceiling"]["best"]
    direct_median = results["direct"]["median"] / results["ceiling"]["median"]
    return {
        "call": {
            "turns": sum(1 for i in call.transcript if not i.is_system),
            "text_chunks": sum(len(i.text_chunks) for i in call.transcript),
            "tool_calls": sum(len(i.tool_calls) for i in call.transcript),
            "system_items": sum(1 for i in call.transcript if i.is_system),
            "spans": spans,
            "span_events": sum(len(s.events) for s in prebuilt),
            "metric_points": len(mapped.points),
            "otlp_bytes": len(payload),
        },
        "results": results,
        "ratio": {"best": ratio_best, "median": ratio_median},
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio_median >= GOAL_RATIO,
        "direct_ratio": {"best": direct_best, "median": direct_median},
        "direct_goal_ratio": DIRECT_GOAL_RATIO,
        "direct_meets_goal": direct_median >= DIRECT_GOAL_RATIO,
        "environment": {
            "python": platform.python_version(),
            "opentelemetry-sdk": metadata.version("opentelemetry-sdk"),
            "protobuf": metadata.version("protobuf"),
            "repeats": repeats,
            "min_time_s": min_time,
        },
    }


def render(report: dict[str, Any]) -> str:
    c, r = report["call"], report["results"]
    lines = [
        f"call: {c['turns']} turns, {c['text_chunks']} text chunks, {c['tool_calls']} tool calls, "
        f"{c['system_items']} system items -> {c['spans']} spans, {c['span_events']} span events, "
        f"{c['otlp_bytes']} OTLP bytes",
        "",
        f"{'path':<10} {'best spans/s':>14} {'median spans/s':>16}",
        f"{'ceiling':<10} {r['ceiling']['best']:>14,.0f} {r['ceiling']['median']:>16,.0f}",
        f"{'ours':<10} {r['ours']['best']:>14,.0f} {r['ours']['median']:>16,.0f}",
        f"{'direct':<10} {r['direct']['best']:>14,.0f} {r['direct']['median']:>16,.0f}",
        "",
        f"ratio ours/ceiling: best {report['ratio']['best']:.2f}, median {report['ratio']['median']:.2f} "
        f"(goal >= {report['goal_ratio']}: {'met' if report['meets_goal'] else 'NOT met'})",
        f"ratio direct/ceiling: best {report['direct_ratio']['best']:.2f}, "
        f"median {report['direct_ratio']['median']:.2f} "
        f"(goal >= {report['direct_goal_ratio']}: {'met' if report['direct_meets_goal'] else 'NOT met'})",
    ]
    return "\n".join(lines)


def profile(path: str = "ours", seconds: float = 2.0) -> str:
    call = parse_call(build_call())
    options = MappingOptions()
    resource = build_resource("otelbridge-bench", "bench-1")

    def ours() -> None:
        encode_trace_request(to_readable_spans(map_call(call, options).spans, resource)).SerializeToString()

    def direct() -> None:
        encode_traces(map_call(call, options).spans, resource)

    operation = direct if path == "direct" else ours
    profiler = cProfile.Profile()
    deadline = time.perf_counter() + seconds
    profiler.enable()
    while time.perf_counter() < deadline:
        operation()
    profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per path (default 7)")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per repeat (default 0.3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="ours",
        choices=("ours", "direct"),
        help="print a cProfile of 'ours' (the default) or 'direct' instead",
    )
    args = parser.parse_args(argv)
    if args.profile:
        print(profile(args.profile))
        return 0
    report = run(args.repeats, args.min_time)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
