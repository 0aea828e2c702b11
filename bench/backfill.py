"""Benchmark: ``otelbridge backfill`` of N calls x 20 turns from the Cartesia stand-in API.

    python bench/backfill.py [--sizes 1000,10000] [--turns 20] [--repeat 1] [--baseline REV]
                             [--json] [--profile] [--two-at-once]

Per size N, three processes besides this one, all on this machine (on 2 cores they share the
CPUs; the CPU seconds of each are reported):

* the Cartesia stand-in (``tests/support/cartesia_api.py``'s ``CartesiaStandIn``) in its own
  process, one agent with N synthetic calls of ``--turns`` turns (``add_synthetic_calls``,
  generated before the clock starts); it notes when each List Calls page is served;
* an OTLP/HTTP receiver (``tests/support/otlp_receiver.py``'s ``HttpOtlpReceiver``) in its own
  process, answering 200; it counts spans (all, distinct ids, turn spans) and notes when the
  first and last span arrive;
* ``python -m otelbridge backfill --agent-id A`` with a fresh state directory, exporting to the
  receiver. Backfill runs the pipeline (processor, senders) in its own process, so its peak
  RSS covers paging, storing, mapping, encoding and exporting.

Measured: wall time from spawn to exit and calls/s over it; the phases (start-up until the
first List Calls request is served, paging from the first to the last page, the tail from the
last page to exit); time to first export (spawn to the first span at the receiver); the
stand-in's requests by path (goal: ceil(N/100) List Calls requests, none to Get Call); peak
RSS of the backfill process (``ru_maxrss`` from ``os.wait4`` on that pid, cross-checked with
``VmHWM`` sampled every 20 ms from ``/proc/<pid>/status``; goal <= 150 MB, issue 20's (250
before it), and flat as N grows, taken as peak(largest N) / peak(smallest N) <= 1.2); the state
directory's files at the end;
and that every span arrived exactly once (spans at the receiver = distinct span ids = N x the
spans of one call, which ``map_call`` gives for the stand-in's own calls: every synthetic call
of the same ``--turns`` has the same shape).

Encoder rate, same run (issue: backfill >= 1.0x the rate at which the SDK encoder alone
encodes the same calls' spans): after each repeat's backfill(s), this process times the
OpenTelemetry SDK's encoder alone on the stand-in's calls: the first calls of the same shape
(``add_synthetic_calls``, ``parse_call``, ``map_call``) are turned into ``ReadableSpan``s
beforehand (``tests/support/sdk_reference.py``'s ``to_readable_spans``, with a resource like the
daemon's: ``build_resource`` as ``service_resource`` gives it in the backfill's environment);
timed is ``encode_trace_request(request).SerializeToString()`` of requests of
``MAX_SPANS_PER_REQUEST`` spans, as the processor spools them, in a loop of at least 1 s, best
of 3. Reported: encoder calls/s and backfill calls/s / encoder calls/s (goal >= 1.0, the median
of a size's repeats).

``--baseline REV`` runs the same backfill measurement with the otelbridge of git revision REV
(checked out into a temporary ``git worktree``, removed at the end; the stand-in and the
receiver stay this checkout's), alternating with the current code in each ``--repeat`` (the
order swapped every other repeat), and prints current / baseline of the median calls/s and
the median CPU seconds of the backfill process, per size.

``--two-at-once`` also runs, per size and repeat, two backfills of N/2 calls by this checkout at
the same time, each with its own stand-in, receiver and state directory (started together once
both stand-ins are ready), and reports N over the slower one's wall time against the same
repeat's encoder rate: what the whole path does on both cores with no cost of sharing work or
state, the upper bound for a backfill that used both.

``--profile`` samples the backfill process with ``py-spy record --gil`` for its whole life and
prints where the GIL-holding time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from common import (
    ROOT,
    InternalProcess,
    answer_commands,
    clean_env,
    code_roots,
    cpu_seconds,
    describe_code,
    git,
    log,
    start_profiler,
    status_kb,
    summarize_profile,
)

AGENT = "agent_bench_backfill"
PAGE_LIMIT = 100
GOAL_RSS_MB = 150.0  # issue 20 (the first backfill issue allowed 250)
GOAL_FLAT_RATIO = 1.2
TURN_SPAN_NAMES = ("user_turn", "assistant_turn")
SAMPLE_S = 0.02
PROFILE_RATE = 100  # py-spy samples per second
RUN_TIMEOUT_S = 1800.0
GOAL_ENCODER_RATIO = 1.0  # backfill calls/s >= this x the SDK encoder alone's calls/s
ENCODER_MIN_S = 1.0  # each timed repeat of the encoder loops at least this long
ENCODER_REPEATS = 3


# --- helper processes (``--internal``) -------------------------------------------------------
def run_standin(calls: int, turns: int, stdin: TextIO, stdout: TextIO) -> None:
    """The stand-in API with ``calls`` synthetic calls. Line commands on stdin: ``stats`` ->
    request counts and page times, ``quit``."""
    sys.path.insert(0, str(ROOT))
    from otelbridge.cartesia.models import parse_call
    from otelbridge.mapping import map_call
    from tests.support.cartesia_api import CartesiaStandIn, PageServed

    api = CartesiaStandIn()
    started = time.perf_counter()
    ids = api.add_synthetic_calls(AGENT, calls, turns=turns)
    generate_s = time.perf_counter() - started
    # the spans of one call: the same for every synthetic call of the same shape (checked on a few)
    shapes = set()
    for call_id in {ids[0], ids[len(ids) // 2], ids[-1]}:
        spans = map_call(parse_call(api.get(call_id))).spans
        shapes.add((len(spans), sum(1 for s in spans if s.name in TURN_SPAN_NAMES)))
    if len(shapes) != 1:
        raise SystemExit(f"synthetic calls of different shapes: {shapes}")
    [(spans_per_call, turn_spans_per_call)] = shapes
    call_bytes = len(json.dumps(api.get(ids[0]), separators=(",", ":")).encode())
    pages: list[float] = []
    lock = threading.Lock()

    def on_page(_: PageServed) -> None:
        with lock:
            pages.append(time.monotonic())

    api.on_page(on_page)
    api.start()
    hello = {
        "url": api.url,
        "api_key": api.api_key,
        "pid": os.getpid(),
        "generate_s": round(generate_s, 2),
        "spans_per_call": spans_per_call,
        "turn_spans_per_call": turn_spans_per_call,
        "call_json_bytes": call_bytes,
    }
    stdout.write(json.dumps(hello) + "\n")
    stdout.flush()
    try:
        for line in stdin:
            if line.strip() != "stats":
                break
            with lock:
                answer = {"counts": dict(api.counts), "pages": list(pages)}
            stdout.write(json.dumps(answer) + "\n")
            stdout.flush()
    finally:
        api.stop()


def run_receiver(stdin: TextIO, stdout: TextIO) -> None:
    """The OTLP/HTTP receiver, counting. Line commands on stdin: ``stats``, ``quit``."""
    sys.path.insert(0, str(ROOT))
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.support.otlp_receiver import HttpOtlpReceiver, ReceivedRequest

    class CountingReceiver(HttpOtlpReceiver):
        """Keeps counts and span ids, not every decoded request."""

        def __init__(self) -> None:
            super().__init__()
            self.guard = threading.Lock()
            self.ids: set[bytes] = set()
            self.n_spans = 0
            self.n_turns = 0
            self.n_traces = 0
            self.n_metrics = 0
            self.trace_bytes = 0
            self.trace_max_bytes = 0
            self.first_at: float | None = None
            self.last_at: float | None = None

        def _record(self, request: ReceivedRequest, accepted: bool) -> None:
            message = request.message
            with self.guard:
                if request.signal == "metrics":
                    self.n_metrics += 1
                if not (accepted and isinstance(message, ExportTraceServiceRequest)):
                    return
                self.n_traces += 1
                self.trace_bytes += len(request.body)
                self.trace_max_bytes = max(self.trace_max_bytes, len(request.body))
                for rs in message.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            self.n_spans += 1
                            self.ids.add(span.span_id)
                            if span.name in TURN_SPAN_NAMES:
                                self.n_turns += 1
                if self.first_at is None:
                    self.first_at = request.received_at
                self.last_at = request.received_at

    receiver = CountingReceiver().start()

    def stats() -> dict[str, object]:
        return {
            "spans": receiver.n_spans,
            "distinct_span_ids": len(receiver.ids),
            "turn_spans": receiver.n_turns,
            "trace_requests": receiver.n_traces,
            "metric_requests": receiver.n_metrics,
            "trace_bytes": receiver.trace_bytes,
            "trace_request_max_bytes": receiver.trace_max_bytes,
            "first_at": receiver.first_at,
            "last_at": receiver.last_at,
        }

    answer_commands(receiver, receiver.guard, {"stats": stats}, stdin, stdout)


# --- measuring a process ---------------------------------------------------------------------
@dataclass(slots=True)
class Watched:
    """What :func:`watch` saw of one process until it exited."""

    returncode: int
    exited_at: float
    maxrss_kb: int
    cpu_s: float
    vmhwm_kb: int
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, kB)


def watch(proc: subprocess.Popen[bytes], timeout: float) -> Watched:
    """Sample VmRSS/VmHWM every ``SAMPLE_S`` until the process exits; reap it with ``os.wait4``
    (its own rusage: peak RSS and CPU of that process alone). Interrupted (SIGTERM, Ctrl-C), it
    kills the process first."""
    samples: list[tuple[float, int]] = []
    hwm = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            now = time.monotonic()
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return Watched(
                    proc.returncode, now, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, hwm, samples
                )
            kb = status_kb(proc.pid, ("VmRSS", "VmHWM"))
            if kb:
                samples.append((now, kb.get("VmRSS", 0)))
                hwm = max(hwm, kb.get("VmHWM", 0))
            if now > deadline:
                proc.kill()
            time.sleep(SAMPLE_S)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        raise


def dir_files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}


def sqlite_counts(state_dir: Path) -> dict[str, int]:
    import sqlite3

    counts: dict[str, int] = {}
    for db, tables in (("inbox.db", ("inbox",)), ("state.db", ("calls", "ledger", "spool", "points"))):
        conn = sqlite3.connect(f"file:{state_dir / db}?mode=ro", uri=True)
        try:
            for table in tables:
                counts[table] = int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        finally:
            conn.close()
    return counts


# --- the SDK encoder alone ---------------------------------------------------------------------
def measure_encoder(
    turns: int, min_s: float = ENCODER_MIN_S, repeats: int = ENCODER_REPEATS
) -> dict[str, Any]:
    """Calls/s of the SDK's OTLP encoder alone, in this process, on the spans of the stand-in's
    own synthetic calls of ``turns`` turns: one request of ``MAX_SPANS_PER_REQUEST`` spans (from
    as many calls as it takes) is built as ``ReadableSpan``s beforehand; timed is
    ``encode_trace_request(request).SerializeToString()`` in a loop of at least ``min_s``, best
    of ``repeats``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import uuid

    from mapping import calibrate, timed  # bench/mapping.py's timing loop

    from otelbridge.cartesia.models import parse_call
    from otelbridge.delivery.otlp import MAX_SPANS_PER_REQUEST
    from otelbridge.delivery.resource import build_resource
    from otelbridge.mapping import map_call
    from otelbridge.mapping.policy import DEFAULT_SERVICE_NAME
    from tests.support.cartesia_api import CartesiaStandIn
    from tests.support.sdk_reference import encode_trace_request, to_readable_spans

    # what service_resource() gives the backfill: its environment has no OTEL_* variables
    resource = build_resource(DEFAULT_SERVICE_NAME, str(uuid.uuid4()))
    api = CartesiaStandIn()  # not started: only its calls, the same as the run's first ones
    records: list[Any] = []
    shapes: set[int] = set()
    index = 0
    while len(records) < MAX_SPANS_PER_REQUEST:
        [call_id] = api.add_synthetic_calls(AGENT, 1, first_index=index, turns=turns)
        spans = map_call(parse_call(api.get(call_id))).spans
        shapes.add(len(spans))
        records += spans
        index += 1
    if len(shapes) != 1:
        raise SystemExit(f"synthetic calls of different shapes: {shapes} spans")
    [spans_per_call] = shapes
    request = to_readable_spans(records[:MAX_SPANS_PER_REQUEST], resource)
    calls_per_request = len(request) / spans_per_call
    request_bytes = len(encode_trace_request(request).SerializeToString())  # also the warm-up

    def encode() -> bytes:
        data: bytes = encode_trace_request(request).SerializeToString()
        return data

    loops = calibrate(encode, min_s)
    rates = [loops * calls_per_request / timed(encode, loops) for _ in range(repeats)]
    return {
        "calls_per_s": round(max(rates), 1),
        "spans_per_s": round(max(rates) * spans_per_call),
        "repeats_calls_per_s": [round(r, 1) for r in rates],
        "loops": loops,
        "spans_per_request": len(request),
        "spans_per_call": spans_per_call,
        "request_bytes": request_bytes,
        "resource": dict(resource.attributes),
    }


# --- profiling --------------------------------------------------------------------------------
#: where a sampled stack belongs: the first area one of whose markers is in the stack
PROFILE_AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("start-up: imports", ("_find_and_load",)),
    ("paging: List Calls HTTP + JSON decoding (client)", ("CartesiaClient.",)),
    ("validating the listed calls (validate_calls)", ("validate_calls",)),
    ("mapping: spans and points (call_increment)", ("call_increment", "turn_increment")),
    ("OTLP encoding of spans (encode_traces)", ("encode_traces",)),
    ("metric points to JSON (the points row)", ("points_to_json",)),
    ("recording the points (Telemetry.record)", ("Telemetry.record",)),
    ("processor: other (assembly, ledger, call rows, spool, SQL)", ("Processor.",)),
    ("sender: spool read, HTTP export, delete", ("Sender.",)),
    ("meter: self-telemetry, metrics collections", ("elemetry",)),
    ("paging: the loop, cursor (backfill_agent)", ("backfill_agent", "_save_backfill")),
    ("hand-off to worker threads (anyio to_thread)", ("run_sync_in_worker_thread", "WorkerThread")),
)


# --- one size ---------------------------------------------------------------------------------
def rss_at(samples: list[tuple[float, int]], when: float) -> float | None:
    """VmRSS (MB) of the last sample at or before ``when``."""
    before = [kb for t, kb in samples if t <= when]
    return round(before[-1] / 1024, 1) if before else None


def timeline(samples: list[tuple[float, int]], started: float, step_s: float = 1.0) -> list[list[float]]:
    """VmRSS (MB) about every ``step_s`` seconds: [[seconds since spawn, MB], ...]."""
    out: list[list[float]] = []
    for t, kb in samples:
        if not out or t - started >= out[-1][0] + step_s:
            out.append([round(t - started, 1), round(kb / 1024, 1)])
    return out


def peak_where(samples: list[tuple[float, int]], started: float, pages: list[float]) -> dict[str, Any]:
    """Where the sampled VmRSS peaked, and its highest value while paging and after the last page."""
    if not samples:
        return {}
    at, kb = max(samples, key=lambda s: s[1])
    paging = [k for t, k in samples if pages and pages[0] <= t <= pages[-1]]
    tail = [k for t, k in samples if pages and t > pages[-1]]
    return {
        "mb": round(kb / 1024, 1),
        "at_s": round(at - started, 1),
        "while_paging_max_mb": round(max(paging) / 1024, 1) if paging else None,
        "after_last_page_max_mb": round(max(tail) / 1024, 1) if tail else None,
    }


def run_size(
    n: int,
    turns: int,
    profile: bool,
    state_parent: Path | None,
    extra_env: dict[str, str],
    code_root: Path = ROOT,
    code: str = "current",
    start_together: threading.Barrier | None = None,
) -> dict[str, Any]:
    """One backfill of ``n`` calls by the otelbridge of ``code_root`` (named ``code``), with a
    stand-in and a receiver of its own; with ``start_together``, its process starts when the
    other parties' do (their stand-ins ready too)."""
    tag = f"N={n:,} [{code}]"
    log(f"{tag}: generating {n:,} calls x {turns} turns in the stand-in process")
    with (
        InternalProcess(__file__, "standin", "--calls", str(n), "--turns", str(turns)) as api,
        InternalProcess(__file__, "receiver") as receiver,
        tempfile.TemporaryDirectory(prefix="otelbridge-bench-backfill-", dir=state_parent) as tmp,
    ):
        work = Path(tmp)
        state = work / "state"
        env = clean_env(
            code_root=code_root,
            OTELBRIDGE_CARTESIA_API_KEY=api.hello["api_key"],
            OTELBRIDGE_CARTESIA_BASE_URL=api.url,
            OTELBRIDGE_STATE_DIR=str(state),
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            **extra_env,
        )
        log(f"{tag}: stand-in ready in {api.hello['generate_s']} s; backfill starts")
        cpu0 = {"stand-in": cpu_seconds(api.pid), "receiver": cpu_seconds(receiver.pid)}
        if start_together is not None:
            start_together.wait()
        with (work / "stdout").open("wb") as out, (work / "stderr").open("wb") as err:
            started = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "otelbridge", "backfill", "--agent-id", AGENT],
                env=env,
                cwd=work,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
            profiler = None
            spy_out = Path(tempfile.gettempdir()) / f"otelbridge-bench-backfill-{n}-{code}.pyspy.txt"
            if profile:
                spy_out.unlink(missing_ok=True)
                profiler = start_profiler(proc.pid, spy_out, PROFILE_RATE)
            watched = watch(proc, RUN_TIMEOUT_S)
        if profiler is not None:
            profiler.wait(60)
        cpu = {
            "backfill": round(watched.cpu_s, 2),
            **{k: round(cpu_seconds(p) - cpu0[k], 2) for k, p in (("stand-in", api.pid),
                                                                    ("receiver", receiver.pid))},
        }  # fmt: skip
        stand = api.ask("stats")
        got = receiver.ask("stats")
        stdout_text = (work / "stdout").read_text(errors="replace")
        stderr_text = (work / "stderr").read_text(errors="replace")
        files = dir_files(state)
        rows = sqlite_counts(state)
    wall = watched.exited_at - started
    pages = stand["pages"]
    counts: dict[str, int] = stand["counts"]
    list_requests = counts.get("/agents/calls", 0)
    per_call = sum(v for k, v in counts.items() if k.startswith("/agents/calls/"))
    other = sum(v for k, v in counts.items() if k != "/agents/calls" and not k.startswith("/agents/calls/"))
    expected_spans = n * api.hello["spans_per_call"]
    expected_turns = n * api.hello["turn_spans_per_call"]
    problems = []
    if watched.returncode != 0:
        problems.append(f"exit {watched.returncode}: {stderr_text.strip()[-500:]}")
    if not (got["spans"] == got["distinct_span_ids"] == expected_spans):
        problems.append(
            f"spans at the receiver {got['spans']:,} (distinct {got['distinct_span_ids']:,}), "
            f"expected {expected_spans:,}"
        )
    if got["turn_spans"] != expected_turns:
        problems.append(f"turn spans {got['turn_spans']:,}, expected {expected_turns:,}")
    mb = 1024 * 1024
    result: dict[str, Any] = {
        "code": code,
        "calls": n,
        "turns": turns,
        "exit": watched.returncode,
        "wall_s": round(wall, 2),
        "calls_per_s": round(n / wall, 1),
        "phases_s": {
            "startup_to_first_page": round(pages[0] - started, 2) if pages else None,
            "paging_first_to_last_page": round(pages[-1] - pages[0], 2) if pages else None,
            "last_page_to_exit": round(watched.exited_at - pages[-1], 2) if pages else None,
        },
        "paging_calls_per_s": round(n / max(pages[-1] - pages[0], 1e-9), 1) if len(pages) > 1 else None,
        "first_export_s": round(got["first_at"] - started, 2) if got["first_at"] else None,
        "last_export_s": round(got["last_at"] - started, 2) if got["last_at"] else None,
        "requests": counts,
        "list_requests": list_requests,
        "list_requests_goal": math.ceil(n / PAGE_LIMIT),
        "get_call_requests": per_call,
        "other_requests": other,
        "meets_request_goal": list_requests == math.ceil(n / PAGE_LIMIT) and per_call == 0,
        "peak_rss_mb": round(watched.maxrss_kb / 1024, 1),
        "vmhwm_sampled_mb": round(watched.vmhwm_kb / 1024, 1),
        "rss_mb_at": {
            "first_page": rss_at(watched.rss_samples, pages[0]) if pages else None,
            "half_the_pages": rss_at(watched.rss_samples, pages[len(pages) // 2]) if pages else None,
            "last_page": rss_at(watched.rss_samples, pages[-1]) if pages else None,
        },
        "rss_peak": peak_where(watched.rss_samples, started, pages),
        "rss_mb_timeline": timeline(watched.rss_samples, started),
        "cpu_s": cpu,
        "receiver": got,
        "expected_spans": expected_spans,
        "expected_turn_spans": expected_turns,
        "stand_in_generate_s": api.hello["generate_s"],
        "api_json_mb": round(n * api.hello["call_json_bytes"] / mb, 1),
        "state_dir_mb": round(sum(files.values()) / mb, 1),
        "state_files_mb": {k: round(v / mb, 2) for k, v in files.items()},
        "state_rows": rows,
        "summary_line": stdout_text.strip().splitlines()[-1] if stdout_text.strip() else "",
        "problems": problems,
    }
    if profile and spy_out.exists():
        result["profile"] = summarize_profile(spy_out, wall, PROFILE_RATE, PROFILE_AREAS)
    verdict = "OK" if not problems else "PROBLEMS: " + "; ".join(problems)
    log(
        f"{tag}: {result['wall_s']} s, {result['calls_per_s']:,} calls/s, "
        f"peak RSS {result['peak_rss_mb']} MB, {verdict}"
    )
    return result


# --- report -----------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    where = Path(tempfile.gettempdir())
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(where)], capture_output=True, text=True, check=False)
    versions = {}
    for package in ("httpx", "pydantic", "opentelemetry-sdk", "protobuf", "uvloop", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "state_fs": fs.stdout.strip(),
        "packages": versions,
    }


def goals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Goals over the current code's runs; with ``--repeat``, the worst peak RSS of each size
    counts, and the median of its ratios to the encoder."""
    worst: dict[int, float] = {}
    for r in runs:
        worst[r["calls"]] = max(worst.get(r["calls"], 0.0), r["peak_rss_mb"])
    sizes = sorted(worst)
    flat = worst[sizes[-1]] / worst[sizes[0]] if len(sizes) > 1 and worst[sizes[0]] else None

    def median(key: str) -> dict[int, float]:
        return {n: round(statistics.median(r[key] for r in runs if r["calls"] == n), 3) for n in sizes}

    vs_encoder = median("vs_encoder")
    return {
        "requests": all(r["meets_request_goal"] for r in runs),
        "rss_max_mb": GOAL_RSS_MB,
        "worst_peak_rss_mb": {str(n): worst[n] for n in sizes},
        "rss": all(p <= GOAL_RSS_MB for p in worst.values()),
        "rss_growth_ratio": round(flat, 2) if flat is not None else None,
        "rss_flat_ratio_max": GOAL_FLAT_RATIO,
        "rss_flat": flat is None or flat <= GOAL_FLAT_RATIO,
        "encoder_ratio_min": GOAL_ENCODER_RATIO,
        "encoder_ratio_median": {str(n): round(x, 2) for n, x in vs_encoder.items()},
        "calls_per_s_median": {str(n): x for n, x in median("calls_per_s").items()},
        "encoder_calls_per_s_median": {str(n): x for n, x in median("encoder_calls_per_s").items()},
        "encoder": all(x >= GOAL_ENCODER_RATIO for x in vs_encoder.values()),
        "every_span_once": all(not r["problems"] for r in runs),
    }


def compare(runs: list[dict[str, Any]], baseline_runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: current / baseline of the median calls/s and the median CPU s of the backfill
    process, and the calls/s ratio of each repeat's pair."""
    out = []
    for n in sorted({r["calls"] for r in runs}):
        cur = sorted((r for r in runs if r["calls"] == n), key=lambda r: r["repeat"])
        base = sorted((r for r in baseline_runs if r["calls"] == n), key=lambda r: r["repeat"])
        rate = [round(statistics.median(r["calls_per_s"] for r in rs), 2) for rs in (cur, base)]
        cpu = [round(statistics.median(r["cpu_s"]["backfill"] for r in rs), 3) for rs in (cur, base)]
        out.append({
            "calls": n,
            "calls_per_s": {"current": rate[0], "baseline": rate[1]},
            "calls_per_s_ratio": round(rate[0] / rate[1], 3),
            "backfill_cpu_s": {"current": cpu[0], "baseline": cpu[1]},
            "backfill_cpu_s_ratio": round(cpu[0] / cpu[1], 3),
            "calls_per_s_ratio_per_repeat": [
                round(c["calls_per_s"] / b["calls_per_s"], 3) for c, b in zip(cur, base, strict=True)
            ],
        })  # fmt: skip
    return out


def render(data: dict[str, Any]) -> str:
    env, g, baseline = data["environment"], data["goals"], data.get("baseline")
    runs = data["runs"] + (baseline["runs"] if baseline else [])
    runs.sort(key=lambda r: (r["calls"], r["repeat"], r["code"] != "current"))

    def label(r: dict[str, Any]) -> str:
        return f"{r['code']:<9}" if baseline else ""

    def tag(r: dict[str, Any]) -> str:
        return f" [{r['code']}]" if baseline else ""

    lines = [
        f"machine: {env['cpu_model']}, {env['cores']} cores, {env['memory_gib']} GiB, Python "
        f"{env['python']}, state on {env['state_fs']}",
        "code: " + "; ".join(f"{name} {what}" for name, what in data["code"].items()),
        "",
        ("code     " if baseline else "")
        + f"{'calls':>7} {'wall s':>7} {'calls/s':>8} {'enc calls/s':>11} {'x enc':>6} "
        f"{'1st export s':>12} {'list req':>9} {'Get Call':>8} {'peak RSS MB':>11} {'state MB':>8} "
        f"{'spans':>9}  CPU s (backfill/stand-in/receiver)",
    ]
    for r in runs:
        cpu = r["cpu_s"]
        lines.append(
            f"{label(r)}{r['calls']:>7,} {r['wall_s']:>7.1f} {r['calls_per_s']:>8,.0f} "
            f"{r['encoder_calls_per_s']:>11,.0f} {r['vs_encoder']:>6.2f} {r['first_export_s']:>12} "
            f"{r['list_requests']:>4}/{r['list_requests_goal']:<4} {r['get_call_requests']:>8} "
            f"{r['peak_rss_mb']:>11.1f} {r['state_dir_mb']:>8.1f} {r['receiver']['spans']:>9,}  "
            f"{cpu['backfill']}/{cpu['stand-in']}/{cpu['receiver']}"
        )
    lines.append("")
    for r in runs:
        p = r["phases_s"]
        lines.append(
            f"N={r['calls']:,}{tag(r)}: start-up {p['startup_to_first_page']} s, "
            f"paging {p['paging_first_to_last_page']} s "
            f"({r['paging_calls_per_s']} calls/s), last page -> exit {p['last_page_to_exit']} s; RSS MB at "
            f"first/middle/last page {r['rss_mb_at']['first_page']}/{r['rss_mb_at']['half_the_pages']}/"
            f"{r['rss_mb_at']['last_page']}; state files {r['state_files_mb']}; rows {r['state_rows']}"
        )
        peak = r["rss_peak"]
        if peak:
            lines.append(
                f"  sampled RSS peak {peak['mb']} MB at {peak['at_s']} s; highest while paging "
                f"{peak['while_paging_max_mb']} MB, after the last page {peak['after_last_page_max_mb']} MB"
            )
        if r["problems"]:
            lines.append(f"  PROBLEMS: {'; '.join(r['problems'])}")
    encoders = {id(r["encoder"]): (r["calls"], r["encoder"]) for r in runs}
    for n, e in encoders.values():
        lines.append(
            f"N={n:,}: SDK encoder alone {e['calls_per_s']:,.0f} calls/s ({e['spans_per_s']:,} spans/s; best "
            f"of {e['repeats_calls_per_s']} calls/s, {e['loops']} x {e['spans_per_request']}-span requests "
            f"of {e['request_bytes']:,} B per repeat)"
        )
    ratios = ", ".join(
        f"N={n} {x}x ({g['calls_per_s_median'][n]:,.0f} / {g['encoder_calls_per_s_median'][n]:,.0f} calls/s)"
        for n, x in g["encoder_ratio_median"].items()
    )
    lines += [
        "",
        f"goal ceil(N/100) List Calls requests, no Get Call: {'met' if g['requests'] else 'NOT met'}",
        f"goal peak RSS <= {g['rss_max_mb']:g} MB (worst per size {g['worst_peak_rss_mb']}): "
        f"{'met' if g['rss'] else 'NOT met'}; growth "
        f"largest/smallest N {g['rss_growth_ratio']} (flat <= {g['rss_flat_ratio_max']}: "
        f"{'met' if g['rss_flat'] else 'NOT met'})",
        f"goal backfill calls/s >= {g['encoder_ratio_min']:g}x the SDK encoder alone on the same calls' "
        f"spans, same run (median per size): {ratios}: {'met' if g['encoder'] else 'NOT met'}",
        f"every span exactly once: {'yes' if g['every_span_once'] else 'NO'}",
    ]
    for h in data.get("two_at_once", []):
        lines.append(
            f"two backfills of N/2 at once (an upper bound on both cores), N={h['calls']:,} repeat "
            f"{h['repeat']}: {h['wall_s']} s, {h['calls_per_s']:,.0f} calls/s = {h['vs_encoder']:.2f}x the "
            f"encoder; backfill CPU s {h['backfill_cpu_s']}, peak RSS sum {h['peak_rss_mb_sum']} MB"
            + (f"; PROBLEMS: {'; '.join(h['problems'])}" if h["problems"] else "")
        )
    if baseline:
        lines.append(
            f"current / baseline ({baseline['rev']} = {baseline['commit'][:12]}), medians of "
            f"{data['repeat']} repeat(s) per size:"
        )
        for c in baseline["comparison"]:
            rate, cpu = c["calls_per_s"], c["backfill_cpu_s"]
            lines.append(
                f"  N={c['calls']:,}: calls/s {rate['current']:,.1f} / {rate['baseline']:,.1f} = "
                f"{c['calls_per_s_ratio']:.2f}x (per repeat {c['calls_per_s_ratio_per_repeat']}); "
                f"backfill CPU s {cpu['current']} / {cpu['baseline']} = {c['backfill_cpu_s_ratio']:.2f}x"
            )
    for r in runs:
        profile = r.get("profile")
        if not profile:
            continue
        lines += [
            "",
            f"py-spy --gil profile of N={r['calls']:,} [{r['code']}]: {profile['samples']} samples, GIL held "
            f"{profile['gil_busy']:.0%} of the wall time ({profile['raw']}); shares of GIL-holding samples:",
        ]
        for title in ("areas", "inclusive", "self"):
            lines.append(f"  {title}:")
            lines += [f"    {share:5.1f}%  {name}" for name, share in profile[title]]
    return "\n".join(lines)


def two_at_once(n: int, args: argparse.Namespace, extra_env: dict[str, str]) -> dict[str, Any]:
    """Two backfills of ``n // 2`` calls by this checkout, each with its own stand-in, receiver
    and state directory, started together: what the whole path could do on both cores with no
    cost of sharing work or state between them, an upper bound for a backfill that used both."""
    gate = threading.Barrier(2, timeout=RUN_TIMEOUT_S)  # a half that fails first breaks it
    halves: list[dict[str, Any]] = []

    def one(k: int) -> None:
        half = run_size(
            n // 2, args.turns, False, args.state_parent, extra_env, code=f"half {k}", start_together=gate
        )
        halves.append(half)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(halves) != 2:
        raise RuntimeError("a half of the two-at-once backfill failed (see above)")
    calls = sum(h["calls"] for h in halves)
    wall = max(h["wall_s"] for h in halves)
    return {
        "calls": calls,
        "wall_s": wall,
        "calls_per_s": round(calls / wall, 1),
        "backfill_cpu_s": round(sum(h["cpu_s"]["backfill"] for h in halves), 2),
        "peak_rss_mb_sum": round(sum(h["peak_rss_mb"] for h in halves), 1),
        "problems": [p for h in halves for p in h["problems"]],
    }


def measure(args: argparse.Namespace, codes: dict[str, Path], extra_env: dict[str, str]) -> dict[str, Any]:
    """Every size x ``--repeat``: a backfill by each code (current first in even repeats,
    baseline first in odd ones), then the SDK encoder alone in this process."""
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in codes}
    two: list[dict[str, Any]] = []
    for n in sizes:
        for repeat in range(args.repeat):
            order = list(codes.items())[:: -1 if repeat % 2 else 1]
            pair = [
                run_size(n, args.turns, args.profile, args.state_parent, extra_env, root, name)
                for name, root in order
            ]
            halves = two_at_once(n, args, extra_env) if args.two_at_once else None
            log(f"N={n:,}: the SDK encoder alone on the same calls' spans, in this process")
            encoder = measure_encoder(args.turns)
            log(f"N={n:,}: SDK encoder alone {encoder['calls_per_s']:,} calls/s")
            if halves is not None:
                halves["repeat"] = repeat
                halves["vs_encoder"] = round(halves["calls_per_s"] / encoder["calls_per_s"], 3)
                two.append(halves)
            for r in pair:
                r["repeat"] = repeat
                r["encoder"] = encoder
                r["encoder_calls_per_s"] = encoder["calls_per_s"]
                r["vs_encoder"] = round(r["calls_per_s"] / encoder["calls_per_s"], 3)
                runs[r["code"]].append(r)
    data: dict[str, Any] = {
        "environment": environment(),
        "code": {name: describe_code(root) for name, root in codes.items()},
        "extra_env": extra_env,
        "repeat": args.repeat,
        "runs": runs["current"],
        "goals": goals(runs["current"]),
    }
    if two:
        data["two_at_once"] = two
    if "baseline" in codes:
        data["baseline"] = {
            "rev": args.baseline,
            "commit": git("rev-parse", "HEAD", cwd=codes["baseline"]).strip(),
            "runs": runs["baseline"],
            "comparison": compare(runs["current"], runs["baseline"]),
        }
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000", help="calls per run, comma-separated")
    parser.add_argument("--turns", type=int, default=20, help="turns per call (default 20)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (default 1)")
    parser.add_argument("--baseline", metavar="REV", help="also run the otelbridge of git revision REV")
    parser.add_argument("--profile", action="store_true", help="sample the backfill with py-spy --gil")
    parser.add_argument(
        "--two-at-once",
        action="store_true",
        help="also run two backfills of N/2 at once, each with its own stand-in, receiver and state: "
        "the bound of a backfill using both cores",
    )
    parser.add_argument("--state-parent", type=Path, help="where the temp state dirs go (default TMPDIR)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the backfill process, for experiments (e.g. MALLOC_ARENA_MAX=2)",
    )
    parser.add_argument("--internal", choices=("standin", "receiver"), help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.internal == "standin":
        run_standin(args.calls, args.turns, sys.stdin, sys.stdout)
        return 0
    if args.internal == "receiver":
        run_receiver(sys.stdin, sys.stdout)
        return 0
    extra_env = dict(item.split("=", 1) for item in args.env)
    with code_roots(args.baseline, "otelbridge-bench-backfill-code-") as codes:
        data = measure(args, codes, extra_env)
    print(json.dumps(data, indent=2) if args.json else render(data))
    halves_ok = all(not h["problems"] for h in data.get("two_at_once", []))
    return 0 if data["goals"]["every_span_once"] and halves_ok else 1


if __name__ == "__main__":
    sys.exit(main())
