"""Benchmark: acked ``call_turn`` webhooks per second, ack latency and freshness of ``otelbridge serve``.

    python bench/webhooks.py [-t 2] [-c 32] [-d 10] [--rounds 3] [--baseline REV] [--json] [--profile]
                             [--only ack-only]

Three processes besides this one, all on this machine (on 2 cores they share the CPUs):

* a local OTLP/HTTP receiver (``tests/support/otlp_receiver.py``'s ``HttpOtlpReceiver``, in
  its own process, answering 200; it notes when each span arrives);
* the baseline: a raw ASGI JSON echo (reads the body, parses it, answers it back; ``--echo-mode
  echo`` puts Starlette in front, as the figures before issue 20 did), served by uvicorn with
  the daemon's options (uvloop, httptools, one worker, no access log, lifespan off);
* the daemon: ``python -m otelbridge serve`` with a fresh state directory, a webhook secret,
  ``OTELBRIDGE_LOG_LEVEL=warning``, exporting to the receiver over OTLP/HTTP;
* a diagnostic (``--skip-ack-only`` skips it): the daemon's own webhook app and durable inbox
  (group commit, same SQLite settings) on the daemon's own server (uvicorn with the
  abusive-client limits at their defaults; ``--ack-only-server plain``: without them) and
  garbage-collector tuning, with no processor, sender or telemetry: what the request path costs
  when nothing else wants the GIL.

Throughput: ``wrk`` (Debian's) runs the same generated Lua script with the same
threads/connections/duration against the echo, the ack-only diagnostic, then the daemon. Every request is a
realistic ``call_turn`` body built from the sample calls (examples/), with its own (call_id,
start_timestamp), so the daemon really stores, maps and exports each one as a new turn span;
the calls are announced beforehand with ``call_started`` (untimed) so that turns map at once.
On this shared 2-vCPU machine one run's ratio moves by +-0.1 from run to run, so the three
servers are measured in ``--rounds`` interleaved rounds (echo, ack-only, daemon; a fresh daemon,
state directory and receiver each round) and the round with the median daemon/echo ratio is
reported, with every round's numbers. Any non-2xx answer fails the run. Ack latency p50/p99
come from wrk's latency histogram (``--latency``; wrk is closed-loop, so at saturation these
include queueing); the issue's goals: acks/s >= 0.7x the echo's, p99 <= 2x the echo's. After the
wrk run, *drain* is the time from wrk's end until the last turn span reaches the receiver.

CPU: during each wrk run, the CPU seconds of every process (``/proc/<pid>/stat``; wrk's from
``RUSAGE_CHILDREN``; for the daemon its webhook process as ``server`` and its pipeline process).
The daemon's CPU per turn is separate, and is exactly this: the CPU seconds of each of its two
processes (webhook, pipeline) from the start of the wrk run until the drain is complete (read at
the 50 ms poll that first sees the last turn span at the receiver; the pipeline lags behind the
acks, so the wrk run alone would undercount it), per 10,000 turns exported (the acked ones plus
the few wrk sent but did not count at its end). Before wrk the pipeline is left to finish the
announcements (its CPU idle). Earlier versions reported only the webhook process during wrk.
In ``--json``: ``cpu_s_per_10k_turns`` (the median round's; also in each round's ``daemon``).

``--baseline REV``: each round also runs the daemon of git revision REV (``python -m otelbridge
serve`` from a temporary ``git worktree``, its PYTHONPATH and cwd; removed at the end, on failure
too) with the same wrk script and a fresh state directory and receiver, the current daemon first
in odd rounds and second in even ones. Both daemons' processes are checked to run their own
checkout's otelbridge (the files of their running frames by ``py-spy dump``; without it, their cwd
and PYTHONPATH). Printed: acks/s, ratio to the echo, p99 and CPU s per 10,000 turns of each
process, current and baseline (medians over the rounds), and current/baseline (the median of the
rounds' ratios; the issue: halve the pipeline's); in ``--json``, ``baseline`` and each round's
``baseline`` and ``current_vs_baseline``.

Freshness (the current daemon, last round): a separate paced run (``--fresh-rate`` requests/s
for ``--fresh-duration`` s, sent with httpx from this process on a fixed schedule by 32 workers
with a connection each; how late the sender fell behind the schedule is reported), each turn's
send time against the arrival of its span (matched by span id, ``turn_span_id(call_id, role,
start_timestamp)``) at the receiver; both clocks are ``CLOCK_MONOTONIC``, which is system-wide on
Linux.

``--profile`` samples each server with ``py-spy --gil`` during its wrk run and prints where
the GIL-holding time goes (by area of the daemon, by function).

``--only ack-only`` is the quick mode for work on the request path: the echo and the ack-only
diagnostic only (no receiver, daemon, drain or freshness run), their ratio from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
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
    log,
    pipeline_pid,
    start_profiler,
    summarize_profile,
    wait_or_kill,
)

SAMPLES = ROOT / "examples" / "webhooks.jsonl"
WEBHOOK_PATH = "/webhooks/cartesia"
SECRET_HEADER = "X-Webhook-Secret"
TURN_SPAN_NAMES = ("user_turn", "assistant_turn")
TURN_SPACING_S = 3.0  # a call's n-th turn starts at FIRST_TURN_S + n * TURN_SPACING_S
FIRST_TURN_S = 0.5
GOAL_RATIO = 0.7
GOAL_P99_VS_ECHO = 2.0
GOAL_PIPELINE_CPU_VS_BASELINE = 0.5  # the issue: halve the processor's CPU per turn
TURNS_PER = 10_000  # CPU seconds are reported per this many turns
#: the daemon's processes, by their name in the CPU per turn -> their key in a wrk run's pids
DAEMON_PROCESSES = {"webhook": "server", "pipeline": "pipeline"}
GOAL_FRESH_P50_S = 1.0
GOAL_FRESH_P99_S = 3.0
WRK_MARK = "WRKJSON "
PROFILE_RATE = 200  # py-spy samples per second


# --- bodies ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TurnTemplate:
    """A ``call_turn`` body as a printf format: ``%s`` is the call id, every ``%.6f`` a time
    (the turn's start plus ``specs[i]``); the same string works in Lua and in Python."""

    role: str
    fmt: str
    #: per placeholder, in order: None for the call id, else the offset from the turn's start
    specs: tuple[float | None, ...]

    def render(self, call_id: str, start: float) -> str:
        values: list[object] = [call_id if s is None else start + s for s in self.specs]
        return self.fmt % tuple(values)


_PLACEHOLDER = re.compile(r'"@@(C|T\d+)@@"')


def _template(envelope: dict[str, Any], turn: dict[str, Any]) -> TurnTemplate:
    s0 = float(turn["start_timestamp"])
    offsets: list[float] = []

    def mark(value: float) -> str:
        offsets.append(round(float(value) - s0, 6))
        return f"@@T{len(offsets) - 1}@@"

    turn = json.loads(json.dumps(turn))
    turn["start_timestamp"] = mark(s0)
    if turn.get("end_timestamp") is not None:
        turn["end_timestamp"] = mark(min(float(turn["end_timestamp"]), s0 + TURN_SPACING_S - 0.1))
    for chunk in turn.get("text_chunks") or []:
        chunk["start_timestamp"] = mark(chunk["start_timestamp"])
    body = {
        "type": "call_turn",
        "call_id": "@@C@@",
        "agent_id": envelope["agent_id"],
        "webhook_id": envelope["webhook_id"],
        "timestamp": "@@ANCHOR@@",
        "turn": turn,
    }
    text = json.dumps(body, separators=(",", ":")).replace("%", "%%")
    specs: list[float | None] = []

    def placeholder(match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "C":
            specs.append(None)
            return '"%s"'
        specs.append(offsets[int(token[1:])])
        return "%.6f"

    return TurnTemplate(turn["role"], _PLACEHOLDER.sub(placeholder, text), tuple(specs))


@dataclass(frozen=True, slots=True)
class Corpus:
    """Turn templates by role and a ``call_started`` body, all from the sample calls."""

    user: tuple[TurnTemplate, ...]
    assistant: tuple[TurnTemplate, ...]
    started: dict[str, Any]
    anchor: str  # every bench call's start_time (RFC 3339)

    @classmethod
    def load(cls, path: Path = SAMPLES) -> Corpus:
        from otelbridge.cartesia.timestamps import format_rfc3339_ns

        anchor = format_rfc3339_ns(time.time_ns() - 120 * 1_000_000_000)
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        started = next(e for e in events if e["type"] == "call_started" and e.get("call"))
        # every turn belongs to a call announced with ``started``'s agent
        templates = [
            _template(started, e["turn"]) for e in events if e["type"] == "call_turn" and e.get("turn")
        ]
        fix = [
            TurnTemplate(t.role, t.fmt.replace("@@ANCHOR@@", anchor), t.specs)
            for t in templates
            if t.role in ("user", "assistant")
        ]
        return cls(
            tuple(t for t in fix if t.role == "user"),
            tuple(t for t in fix if t.role == "assistant"),
            started,
            anchor,
        )

    def call_started(self, call_id: str) -> bytes:
        body = json.loads(json.dumps(self.started))
        body["call_id"] = body["call"]["id"] = call_id
        body["timestamp"] = body["call"]["start_time"] = self.anchor
        return json.dumps(body, separators=(",", ":")).encode()

    def turn(self, prefix: str, calls: int, seq: int) -> tuple[bytes, str, str, float]:
        """The ``seq``-th turn of a run over ``calls`` calls: (body, call id, role, start).

        The Lua script computes exactly this (see :func:`lua_script`)."""
        call_id = f"{prefix}{seq % calls:06d}"
        n = seq // calls
        pool = self.user if n % 2 == 0 else self.assistant
        template = pool[(n // 2) % len(pool)]
        start = FIRST_TURN_S + n * TURN_SPACING_S
        return template.render(call_id, start).encode(), call_id, template.role, float(f"{start:.6f}")


def call_ids(prefix: str, calls: int) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(calls)]


def lua_script(corpus: Corpus, *, prefix: str, calls: int, threads: int, secret: str) -> str:
    """wrk script: request k of thread t is turn ``seq = k * threads + t`` (see Corpus.turn)."""

    def pool(templates: Sequence[TurnTemplate]) -> str:
        rows = []
        for t in templates:
            assert "]==]" not in t.fmt
            specs = ", ".join('"c"' if s is None else repr(s) for s in t.specs)
            rows.append(f"  {{fmt = [==[{t.fmt}]==], specs = {{{specs}}}}},")
        return "\n".join(rows)

    return f"""-- generated by bench/webhooks.py: realistic call_turn webhooks, each a new turn
local PREFIX = "{prefix}"
local NCALLS = {calls}
local NTHREADS = {threads}
local FIRST, SPACING = {FIRST_TURN_S!r}, {TURN_SPACING_S!r}
local user = {{
{pool(corpus.user)}
}}
local assistant = {{
{pool(corpus.assistant)}
}}
local counter = 0
local created = 0

function setup(thread)
  thread:set("tid", created)
  created = created + 1
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["{SECRET_HEADER}"] = "{secret}"
end

function request()
  local seq = counter * NTHREADS + tid
  counter = counter + 1
  local n = math.floor(seq / NCALLS)
  local call_id = string.format("%s%06d", PREFIX, seq % NCALLS)
  local templates = (n % 2 == 0) and user or assistant
  local t = templates[(math.floor(n / 2) % #templates) + 1]
  local start = FIRST + n * SPACING
  local values = {{}}
  for i, s in ipairs(t.specs) do
    if s == "c" then values[i] = call_id else values[i] = start + s end
  end
  return wrk.format(nil, "{WEBHOOK_PATH}", nil, string.format(t.fmt, unpack(values)))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{WRK_MARK}{{"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"mean_us":%.1f,"p50_us":%.0f,"p90_us":%.0f,' ..
    '"p99_us":%.0f,"p999_us":%.0f,"max_us":%.0f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


# --- helper processes (this file, run with --internal) ------------------------------------------
def run_echo(port: int, mode: str = "echo") -> None:
    """The baseline, on uvicorn with the daemon's server options. ``raw`` (issue 20's baseline):
    a raw ASGI app that reads the body, parses it and answers with the JSON it received;
    ``echo`` (the earlier issues' baseline): the same through bare Starlette; ``parse``:
    Starlette, only parsing and answering a fixed ``{"status": "ok"}``."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(body if mode == "echo" else {"status": "ok"})

    async def raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        status = 200
        try:
            answer = json.dumps(json.loads(b"".join(chunks)), separators=(",", ":")).encode()
        except ValueError:  # the readiness probe's empty body, say: a 400, not a traceback
            status, answer = 400, b'{"error":"not JSON"}'
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    app: Any = raw if mode == "raw" else Starlette(routes=[Route(WEBHOOK_PATH, echo, methods=["POST"])])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        server_header=False,
        log_level="warning",
        workers=None,
    )


def run_ack_only(port: int, state_dir: Path, secret: str, server: str) -> None:
    """Diagnostic: the daemon's webhook app and durable inbox (group commit, same SQLite
    settings) with the daemon's garbage-collector tuning, but no processor, sender or telemetry:
    what the ack path costs when nothing else competes for the GIL. ``server``: ``daemon``, the
    daemon's own uvicorn server with the abusive-client limits at their defaults
    (``otelbridge.web.quiet_server``); ``plain``, uvicorn+httptools without them (what this
    diagnostic ran before 2026-12-06)."""
    import anyio
    import uvicorn

    from otelbridge.allocator import tune_garbage_collection
    from otelbridge.httplimits import HttpLimits
    from otelbridge.ingest.inbox import GroupCommitInbox
    from otelbridge.ingest.receiver import build_webhook_app
    from otelbridge.store import open_inbox
    from otelbridge.web import bind, quiet_server

    inbox = GroupCommitInbox(open_inbox(state_dir))
    tune_garbage_collection()  # as `otelbridge serve` does once started

    async def serve() -> None:
        app = build_webhook_app(inbox=inbox, secrets=[secret.encode()], max_body_bytes=8 * 1024 * 1024)
        async with anyio.create_task_group() as tg:
            tg.start_soon(inbox.run)
            tg.start_soon(report)
            if server == "daemon":
                await quiet_server(app, HttpLimits()).serve(sockets=[bind("127.0.0.1", port, "--port")])
            else:
                config = uvicorn.Config(
                    app,
                    host="127.0.0.1",
                    port=port,
                    lifespan="off",
                    access_log=False,
                    server_header=False,
                    log_config=None,
                    http="httptools",
                )
                await uvicorn.Server(config).serve()  # re-raises SIGTERM when it stops: no "after"
            inbox.close()
            tg.cancel_scope.cancel()

    async def report() -> None:
        seen = 0
        while True:
            await anyio.sleep(1.0)
            if inbox.appended != seen and inbox.commits:
                seen = inbox.appended
                log(f"ack-only: {inbox.appended:,} webhooks in {inbox.commits:,} group commits "
                    f"({inbox.appended / inbox.commits:.1f} a commit)")  # fmt: skip

    anyio.run(serve, backend_options={"use_uvloop": True})


def run_receiver(stdin: TextIO, stdout: TextIO) -> None:
    """The OTLP/HTTP receiver; notes each span's arrival. Line commands on stdin:
    ``stats`` -> counts, ``dump`` -> {turn span id: arrival}, ``quit``."""
    sys.path.insert(0, str(ROOT))
    from tests.support.otlp_receiver import HttpOtlpReceiver, ReceivedRequest

    class TimingReceiver(HttpOtlpReceiver):
        """Keeps only what the bench needs (span id -> arrival), not every decoded request."""

        def __init__(self) -> None:
            super().__init__()
            self.guard = threading.Lock()
            self.turns: dict[str, float] = {}
            self.n_spans = 0
            self.n_traces = 0
            self.n_metrics = 0
            self.last_turn_at = 0.0

        def _record(self, request: ReceivedRequest, accepted: bool) -> None:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

            message = request.message
            with self.guard:
                if request.signal == "metrics":
                    self.n_metrics += 1
                if not (accepted and isinstance(message, ExportTraceServiceRequest)):
                    return
                self.n_traces += 1
                for rs in message.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            self.n_spans += 1
                            if span.name in TURN_SPAN_NAMES:
                                self.turns.setdefault(span.span_id.hex(), request.received_at)
                                self.last_turn_at = max(self.last_turn_at, request.received_at)

    receiver = TimingReceiver().start()

    def stats() -> dict[str, object]:
        return {
            "turn_spans": len(receiver.turns),
            "spans": receiver.n_spans,
            "trace_requests": receiver.n_traces,
            "metric_requests": receiver.n_metrics,
            "last_turn_at": receiver.last_turn_at,
        }

    commands = {"stats": stats, "dump": lambda: dict(receiver.turns)}
    answer_commands(receiver, receiver.guard, commands, stdin, stdout)


# --- process management ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[Any], what: str) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1.0)
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {timeout}s ({url})")


def stop(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    wait_or_kill(proc, timeout)


class Receiver(InternalProcess):
    """The OTLP receiver process (``--internal receiver``)."""

    def __init__(self) -> None:
        super().__init__(__file__, "receiver", close_timeout=10)

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.ask("stats")
        return answer

    def arrivals(self) -> dict[str, float]:
        answer: dict[str, float] = self.ask("dump")
        return answer


@contextlib.contextmanager
def echo_server(mode: str = "echo") -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--internal", "echo", "--port", str(port), "--echo-mode", mode]
    )
    try:
        url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        wait_http(url, 30, proc, "the echo server")
        yield url, proc
    finally:
        stop(proc)


@contextlib.contextmanager
def ack_only_server(
    secret: str, state_parent: Path | None, server: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="otelbridge-bench-ack-", dir=state_parent) as state:
        command = [sys.executable, __file__, "--internal", "ack-only", "--port", str(port), "--state", state,
                   "--ack-only-server", server]  # fmt: skip
        proc = subprocess.Popen(command, env=clean_env(BENCH_WEBHOOK_SECRET=secret))
        try:
            url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
            wait_http(url, 30, proc, "the ack-only server")
            yield url, proc
        finally:
            stop(proc)


@contextlib.contextmanager
def daemon(
    receiver: Receiver, secret: str, state_parent: Path | None, code_root: Path = ROOT
) -> Iterator[tuple[str, subprocess.Popen[bytes], int]]:
    """``python -m otelbridge serve`` of the checkout ``code_root`` (its PYTHONPATH and cwd):
    the webhook URL, the webhook process and the pid of its pipeline process."""
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="otelbridge-bench-", dir=state_parent) as state:
        env = clean_env(
            code_root=code_root,
            OTELBRIDGE_STATE_DIR=state,
            OTELBRIDGE_WEBHOOK_SECRET=secret,
            OTELBRIDGE_LOG_LEVEL="warning",
            OTELBRIDGE_LISTEN_PORT=str(port),
            OTELBRIDGE_ADMIN_PORT=str(admin),
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        )
        proc = subprocess.Popen([sys.executable, "-m", "otelbridge", "serve"], env=env, cwd=code_root)
        try:
            wait_http(f"http://127.0.0.1:{admin}/healthz", 60, proc, "otelbridge serve")
            yield f"http://127.0.0.1:{port}{WEBHOOK_PATH}", proc, pipeline_pid(proc.pid)
        finally:
            stop(proc)
            if proc.returncode not in (0, None):
                print(f"warning: otelbridge serve exited with {proc.returncode}", file=sys.stderr)


def settle(pid: int, timeout: float = 10.0, period: float = 0.25) -> None:
    """Wait until ``pid`` used at most one clock tick of CPU in ``period`` s (idle, as the
    pipeline is between its once-a-second reports), for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(period)
        now = cpu_seconds(pid)
        if now - before <= 1.5 / os.sysconf("SC_CLK_TCK"):
            return
        before = now
    log(f"warning: pid {pid} still busy after {timeout:g} s; measuring anyway")


def frame_files(pid: int) -> set[Path] | None:
    """The files of the Python frames running in ``pid`` (``py-spy dump``), None if py-spy is
    missing or may not look (the daemon's processes are not dumpable: root only)."""
    spy = shutil.which("py-spy")
    if spy is None:
        return None
    out = subprocess.run(
        [spy, "dump", "--pid", str(pid), "--full-filenames"], capture_output=True, text=True, check=False
    )
    files = {Path(f) for f in re.findall(r"\((/[^()]*?\.py):\d+\)", out.stdout)}
    return files if out.returncode == 0 and files else None


def verify_code(processes: Mapping[str, int], root: Path, roots: Sequence[Path]) -> str:
    """Checks that each of the daemon's ``processes`` runs the otelbridge of ``root``: the
    files of its running frames (py-spy) are in ``root``/otelbridge and in no other checkout's
    (``roots``) nor an installed one; without py-spy, that its cwd and first PYTHONPATH entry
    are ``root`` (what ``python -m`` imports from). Returns how it was checked."""
    package = root.resolve() / "otelbridge"
    others = [r.resolve() / "otelbridge" for r in roots if r.resolve() != root.resolve()]
    evidence = []
    for name, pid in processes.items():
        files = frame_files(pid)
        if files is not None:
            ours = sorted(f for f in files if f.is_relative_to(package))
            foreign = sorted(
                f
                for f in files
                if any(f.is_relative_to(o) for o in others)
                or re.search(r"/(site|dist)-packages/otelbridge/", str(f))
            )
            if foreign or not ours:
                raise SystemExit(
                    f"FAILED: the {name} process (pid {pid}) should run {package}; its frames are in "
                    f"{[str(f) for f in foreign or files]}"
                )
            evidence.append(f"{name}: py-spy, {len(ours)} frame files in {package}, none elsewhere")
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError as error:
            evidence.append(f"{name}: unverified ({error.strerror}; no py-spy dump either)")
            continue
        pythonpath = next((e[11:].decode() for e in environ if e.startswith(b"PYTHONPATH=")), "")
        if cwd != root.resolve() or Path(pythonpath.split(":")[0]).resolve() != root.resolve():
            raise SystemExit(f"FAILED: the {name} process (pid {pid}) runs in {cwd}, PYTHONPATH {pythonpath}")
        evidence.append(f"{name}: cwd and first PYTHONPATH entry are {root}")
    return "; ".join(evidence)


# --- load ------------------------------------------------------------------------------------
@dataclass(slots=True)
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    non_2xx: int
    socket_errors: dict[str, int]
    latency_ms: dict[str, float]
    cpu_s: dict[str, float]
    ended_at: float  # time.monotonic() when wrk returned
    output: str
    started_at: float = 0.0  # time.monotonic() when wrk was started
    pids: dict[str, int] = field(default_factory=dict)
    #: each of ``pids``' CPU seconds so far when wrk was started
    cpu_at_start: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "latency_ms": self.latency_ms,
            "cpu_s": self.cpu_s,
            "cpu_ms_per_request": {
                k: round(v * 1000 / max(self.requests, 1), 3) for k, v in self.cpu_s.items()
            },
            "wrk_output": self.output,
        }


@dataclass(frozen=True, slots=True)
class Load:
    threads: int
    connections: int
    duration_s: int
    timeout_s: int

    def args(self) -> list[str]:
        return [
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{self.duration_s}s",
            f"--timeout={self.timeout_s}s",
            "--latency",
        ]


def run_wrk(url: str, script: Path, load: Load, pids: dict[str, int]) -> WrkResult:
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    completed = subprocess.run(
        ["wrk", *load.args(), "-s", str(script), url], capture_output=True, text=True, check=False
    )
    ended = time.monotonic()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {name: round(cpu_seconds(pid) - cpu0[name], 2) for name, pid in pids.items()}
    cpu["wrk"] = round(children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime, 2)
    out = completed.stdout
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr or out}")
    mark = next((line for line in out.splitlines() if line.startswith(WRK_MARK)), None)
    if mark is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}\n{completed.stderr}")
    data = json.loads(mark[len(WRK_MARK) :])
    text_non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    non_2xx = max(int(data["status"]), int(text_non2xx.group(1)) if text_non2xx else 0)
    duration = data["duration_us"] / 1e6
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=duration,
        rps=data["requests"] / duration,
        non_2xx=non_2xx,
        socket_errors={k: int(data[k]) for k in ("connect", "read", "write", "timeout")},
        latency_ms={
            "mean": round(data["mean_us"] / 1000, 3),
            **{p: round(data[f"{p}_us"] / 1000, 3) for p in ("p50", "p90", "p99", "p999", "max")},
        },
        cpu_s=cpu,
        ended_at=ended,
        output="\n".join(line for line in out.splitlines() if not line.startswith(WRK_MARK)),
        started_at=started,
        pids=dict(pids),
        cpu_at_start=cpu0,
    )


def check_wrk(name: str, result: WrkResult) -> None:
    if result.non_2xx:
        raise SystemExit(
            f"FAILED: {name}: {result.non_2xx} non-2xx responses out of {result.requests}\n{result.output}"
        )
    if any(result.socket_errors.values()):
        print(f"warning: {name}: wrk socket errors {result.socket_errors}", file=sys.stderr)


async def post_all(url: str, bodies: Sequence[bytes], secret: str, concurrency: int = 16) -> None:
    """POST every body (setup, untimed); any non-2xx fails the run."""
    import httpx

    headers = {"content-type": "application/json", SECRET_HEADER: secret}
    queue = list(reversed(bodies))
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker() -> None:
            while queue:
                response = await client.post(url, content=queue.pop(), headers=headers)
                if not response.is_success:
                    raise SystemExit(f"FAILED: setup POST answered {response.status_code}: {response.text}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


@dataclass(slots=True)
class Sent:
    span_id: str
    due_at: float  # when the schedule wanted it sent
    sent_at: float = 0.0
    acked_at: float = 0.0
    status: int = 0


async def paced(
    url: str, corpus: Corpus, secret: str, prefix: str, calls: int, rate: float, seconds: float, senders: int
) -> list[Sent]:
    """Turn ``i`` is due at ``start + i / rate``; ``senders`` workers, one connection each,
    take the turns in order and send each when due (at once when running late), so the
    rate holds while the server keeps up and nothing queues inside the client when it
    does not (``due_at`` vs ``sent_at`` shows how late the sender fell)."""
    import httpx

    from otelbridge.mapping.ids import turn_span_id

    headers = {"content-type": "application/json", SECRET_HEADER: secret}
    total = int(rate * seconds)
    sent: list[Sent] = []
    turns = iter(range(total))
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        begin = time.monotonic() + 0.1

        async def worker() -> None:
            for i in turns:
                body, call_id, role, start = corpus.turn(prefix, calls, i)
                record = Sent(f"{turn_span_id(call_id, role, start):016x}", begin + i / rate)
                sent.append(record)
                delay = record.due_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                record.sent_at = time.monotonic()
                response = await client.post(url, content=body, headers=headers)
                record.acked_at = time.monotonic()
                record.status = response.status_code

        await asyncio.gather(*(worker() for _ in range(senders)))
    bad = [s.status for s in sent if not 200 <= s.status < 300]
    if bad:
        raise SystemExit(f"FAILED: freshness run: {len(bad)} non-2xx answers (e.g. {bad[0]})")
    return sent


# --- measurements ---------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def wait_drain(receiver: Receiver, wrk: WrkResult, timeout: float, quiet: float = 1.0) -> dict[str, Any]:
    """Wait until the receiver holds >= ``wrk.requests`` turn spans and nothing new came for
    ``quiet`` s. Also the CPU seconds of each of the daemon's processes (``DAEMON_PROCESSES``)
    from the start of the wrk run until the drain was complete: read at the poll (every 50 ms)
    that first saw the final count of turn spans, i.e. just after the last turn span reached
    the receiver; and per 10,000 of those turns (each acked webhook is one, plus the few that
    wrk sent but did not count at its end)."""
    acked = wrk.requests
    processes = {name: wrk.pids[key] for name, key in DAEMON_PROCESSES.items()}
    start = {name: wrk.cpu_at_start[key] for name, key in DAEMON_PROCESSES.items()}
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    cpu = dict(start)
    stats = receiver.stats()
    while time.monotonic() < deadline:
        stats = receiver.stats()
        if stats["turn_spans"] != last_count:
            try:
                cpu = {name: cpu_seconds(pid) for name, pid in processes.items()}
            except FileNotFoundError:
                raise SystemExit(f"FAILED: a daemon process exited during the run ({processes})") from None
            last_count, last_change = stats["turn_spans"], time.monotonic()
        elif stats["turn_spans"] >= acked and time.monotonic() - last_change >= quiet:
            break
        time.sleep(0.05)
    complete = stats["turn_spans"] >= acked
    turns = stats["turn_spans"]
    used = {name: cpu[name] - start[name] for name in processes}
    used["both"] = sum(used.values())
    return {
        "complete": complete,
        "acked_turns": acked,
        "exported_turns": turns,
        "drain_s": round(max(0.0, stats["last_turn_at"] - wrk.ended_at), 3) if complete else None,
        "trace_requests": stats["trace_requests"],
        "spans": stats["spans"],
        "cpu_window_s": round(last_change - wrk.started_at, 3),
        "cpu_s": {name: round(v, 2) for name, v in used.items()},
        "cpu_s_per_10k_turns": {name: round(v * TURNS_PER / turns, 3) for name, v in used.items()}
        if complete and turns
        else None,
    }


def freshness(
    url: str, receiver: Receiver, corpus: Corpus, secret: str, args: argparse.Namespace
) -> dict[str, Any]:
    prefix = "ac_sid_benchfresh"
    asyncio.run(post_all(url, [corpus.call_started(c) for c in call_ids(prefix, args.fresh_calls)], secret))
    time.sleep(0.5)
    sent = asyncio.run(
        paced(url, corpus, secret, prefix, args.fresh_calls, args.fresh_rate, args.fresh_duration, 32)
    )
    wanted = {s.span_id for s in sent}
    deadline = time.monotonic() + args.drain_timeout
    arrivals: dict[str, float] = {}
    while time.monotonic() < deadline:
        arrivals = receiver.arrivals()
        if wanted <= arrivals.keys():
            break
        time.sleep(0.2)
    lags = [arrivals[s.span_id] - s.sent_at for s in sent if s.span_id in arrivals]
    acks = [s.acked_at - s.sent_at for s in sent]
    late = [s.sent_at - s.due_at for s in sent]
    missing = len(wanted - arrivals.keys())
    return {
        "rate": args.fresh_rate,
        "seconds": args.fresh_duration,
        "sent": len(sent),
        "missing": missing,
        "freshness_s": {
            "p50": round(percentile(lags, 50), 3),
            "p99": round(percentile(lags, 99), 3),
            "max": round(max(lags, default=float("nan")), 3),
            "mean": round(statistics.fmean(lags), 3) if lags else None,
        },
        "ack_ms": {
            "p50": round(percentile(acks, 50) * 1000, 2),
            "p99": round(percentile(acks, 99) * 1000, 2),
            "max": round(max(acks, default=float("nan")) * 1000, 2),
        },
        "sender_late_s": {"p99": round(percentile(late, 99), 3), "max": round(max(late, default=0.0), 3)},
        "meets_goal": bool(lags)
        and not missing
        and percentile(lags, 50) <= GOAL_FRESH_P50_S
        and percentile(lags, 99) <= GOAL_FRESH_P99_S,
    }


# --- profiling --------------------------------------------------------------------------------
#: where a sampled stack belongs: the first area one of whose markers is in the stack
PROFILE_AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("webhook handler: secret, JSON, schema validation, append", ("_WebhookReceiver",)),
    ("inbox committer thread (one multi-row INSERT a commit)", ("GroupCommitInbox._",)),
    ("processor: OTLP encoding of the batch's spans", ("Daemon.__init__.<locals>.encode",)),
    ("processor: parse, map, ledger, calls (per event)", ("Processor._event",)),
    ("processor: spool write, points, watermark, inbox delete", ("Processor.",)),
    ("sender: spool read, HTTP export, delete", ("Sender.",)),
    ("self-telemetry (meter, points)", ("elemetry",)),
    ("housekeeping gauges", ("_refresh_gauges",)),
    ("HTTP server: uvicorn + Starlette (parse, route, respond)", ("httptools_impl", "starlette/")),
    ("hand-off to worker threads (anyio to_thread)", ("run_sync_in_worker_thread", "WorkerThread")),
)


# --- the run ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Report:
    load: Load
    environment: dict[str, Any]
    echo: WrkResult | None = None
    daemon: WrkResult | None = None
    ack_only: WrkResult | None = None
    drain: dict[str, Any] = field(default_factory=dict)
    fresh: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: every round's (echo, ack-only, daemon) req/s; echo/daemon/ack_only above hold the round
    #: whose daemon/echo ratio is the median
    rounds: list[dict[str, Any]] = field(default_factory=list)
    #: the checkouts whose daemon runs: "current" and, with --baseline, "baseline"
    codes: dict[str, Path] = field(default_factory=lambda: {"current": ROOT})
    baseline_rev: str | None = None
    #: per code: its commit (after checking that its checkout's otelbridge is imported), and how
    #: the daemon's two processes were seen to run it
    code: dict[str, str] = field(default_factory=dict)
    code_checks: dict[str, str] = field(default_factory=dict)

    def comparison(self) -> dict[str, Any] | None:
        """--baseline: per measure, the median over the rounds of the current and the baseline
        daemon, and the median of the rounds' current/baseline ratios."""
        rounds = [r for r in self.rounds if r.get("baseline") and r.get("daemon")]
        if "baseline" not in self.codes or not rounds:
            return None
        medians = {
            code: {
                key: statistics.median(flat(r[code])[key] for r in rounds) for key in flat(rounds[0][code])
            }
            for code in ("daemon", "baseline")
        }
        ratios = {
            key: statistics.median(flat(r["current_vs_baseline"])[key] for r in rounds)
            for key in flat(rounds[0]["current_vs_baseline"])
        }
        pipeline = ratios.get("cpu_s_per_10k_turns.pipeline")
        halved = pipeline <= GOAL_PIPELINE_CPU_VS_BASELINE if pipeline is not None else None
        return {
            "rev": self.baseline_rev,
            "commit": self.code.get("baseline"),
            "rounds": len(rounds),
            "order": "current daemon first in odd rounds, baseline first in even ones",
            "current": unflat(medians["daemon"]),
            "baseline": unflat(medians["baseline"]),
            "current_vs_baseline": unflat(ratios),
            "goal_pipeline_cpu_vs_baseline": GOAL_PIPELINE_CPU_VS_BASELINE,
            "meets_pipeline_cpu_goal": halved,
        }

    def as_dict(self) -> dict[str, Any]:
        assert self.echo is not None
        ratio = self.daemon.rps / self.echo.rps if self.daemon else None
        ratios = [r["ratio"] for r in self.rounds if r["ratio"] is not None]
        p99 = self.daemon.latency_ms["p99"] / self.echo.latency_ms["p99"] if self.daemon else None
        return {
            "load": {
                "tool": "wrk",
                "threads": self.load.threads,
                "connections": self.load.connections,
                "duration_s": self.load.duration_s,
                "command": f"wrk {' '.join(self.load.args())} -s SCRIPT URL",
            },
            "echo": self.echo.summary(),
            "daemon": self.daemon.summary() if self.daemon else None,
            "ack_only": self.ack_only.summary() if self.ack_only else None,
            "ratio": round(ratio, 3) if ratio is not None else None,
            "ratio_ack_only": round(self.ack_only.rps / self.echo.rps, 3) if self.ack_only else None,
            "rounds": self.rounds,
            "ratio_range": [min(ratios), max(ratios)] if ratios else None,
            "goal_ratio": GOAL_RATIO,
            "meets_ratio_goal": ratio >= GOAL_RATIO if ratio is not None else None,
            "p99_vs_echo": round(p99, 3) if p99 is not None else None,
            "goal_p99_vs_echo": GOAL_P99_VS_ECHO,
            "meets_p99_goal": p99 <= GOAL_P99_VS_ECHO if p99 is not None else None,
            # each daemon process's CPU from the start of wrk until the last turn span arrived
            "cpu_s_per_10k_turns": self.drain.get("cpu_s_per_10k_turns"),
            "drain": self.drain,
            "freshness": self.fresh,
            "goal_freshness_s": {"p50": GOAL_FRESH_P50_S, "p99": GOAL_FRESH_P99_S},
            "profiles": self.profiles,
            "code": self.code,
            "code_checks": self.code_checks,
            "baseline": self.comparison(),
            "environment": self.environment,
        }


def flat(measures: dict[str, Any]) -> dict[str, float]:
    """``{"a": 1, "b": {"c": 2}}`` -> ``{"a": 1, "b.c": 2}`` (None values left out)."""
    out: dict[str, float] = {}
    for key, value in measures.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if v is not None})
        elif value is not None:
            out[key] = value
    return out


def unflat(measures: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in measures.items():
        head, _, tail = key.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = round(value, 3)
        else:
            out[head] = round(value, 3)
    return out


def ratios(current: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """current / baseline of every measure both have."""
    a, b = flat(current), flat(baseline)
    return unflat({k: a[k] / b[k] for k in a if b.get(k)})


def environment(state_parent: Path | None) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    where = state_parent or Path(tempfile.gettempdir())
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(where)], capture_output=True, text=True, check=False)
    versions = {}
    for package in ("uvicorn", "starlette", "uvloop", "httptools", "httpx", "opentelemetry-sdk"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0].strip() if (wrk.stdout or wrk.stderr) else "?",
        "state_dir_parent": str(where),
        "state_fs": fs.stdout.strip(),
        "packages": versions,
    }


def wrk_round(
    name: str, url: str, script: Path, pids: dict[str, int], args: argparse.Namespace, report: Report
) -> WrkResult:
    """One wrk run; with ``--profile``, py-spy samples ``pids["server"]`` meanwhile, and the
    daemon's pipeline process too (it shares the two cores)."""
    load = report.load
    log(f"{name}: wrk {' '.join(load.args())} against {url}")
    sampled = {name: pids["server"]} | ({f"{name} pipeline": pids["pipeline"]} if "pipeline" in pids else {})
    profilers = {}
    if args.profile:
        for label, pid in sampled.items():
            out = Path(tempfile.gettempdir()) / f"otelbridge-bench-{label.replace(' ', '-')}.pyspy.txt"
            out.unlink(missing_ok=True)
            profilers[label] = (start_profiler(pid, out, PROFILE_RATE, load.duration_s), out)
    result = run_wrk(url, script, load, pids)
    for label, (profiler, out) in profilers.items():
        if profiler is not None:
            profiler.wait()
        if out.exists():
            report.profiles[label] = summarize_profile(
                out, load.duration_s, PROFILE_RATE, PROFILE_AREAS, "event loop, other"
            )
    check_wrk(name, result)
    log(f"{name}: {result.rps:,.0f} req/s acked")
    return result


@dataclass(slots=True)
class DaemonRun:
    """One daemon's wrk run and drain (with its CPU per turn)."""

    code: str  # "current" or "baseline"
    wrk: WrkResult
    drain: dict[str, Any]

    def against(self, echo: WrkResult) -> dict[str, Any]:
        """Acks/s, p99 and CPU per 10,000 turns, with the ratios to the same round's echo."""
        return {
            "rps": round(self.wrk.rps, 1),
            "ratio": round(self.wrk.rps / echo.rps, 3),
            "p99_ms": self.wrk.latency_ms["p99"],
            "p99_vs_echo": round(self.wrk.latency_ms["p99"] / echo.latency_ms["p99"], 3),
            "drain_s": self.drain.get("drain_s"),
            "cpu_s_per_10k_turns": self.drain.get("cpu_s_per_10k_turns"),
        }


def daemon_round(
    corpus: Corpus,
    secret: str,
    prefix: str,
    script: Path,
    args: argparse.Namespace,
    report: Report,
    tag: str,
    with_freshness: bool,
    code: str = "current",
) -> DaemonRun:
    """A fresh receiver and daemon of ``report.codes[code]``: the wrk run, the drain, and (last
    round, current code) freshness."""
    root = report.codes[code]
    name = "daemon" if code == "current" else f"{code} daemon"
    receiver = Receiver()
    try:
        log(f"OTLP receiver at {receiver.url} (pid {receiver.pid})")
        with daemon(receiver, secret, args.state_parent, root) as (url, proc, pipeline):
            processes = {"webhook": proc.pid, "pipeline": pipeline}
            check = verify_code(processes, root, list(report.codes.values()))
            report.code_checks.setdefault(code, check)
            log(f"{name}: webhook process {proc.pid}, pipeline {pipeline}, code of {root} ({check})")
            log(f"{name}: announcing {args.calls} calls (call_started, untimed)")
            asyncio.run(post_all(url, [corpus.call_started(c) for c in call_ids(prefix, args.calls)], secret))
            time.sleep(1.0)  # let the processor take the announcements before the load
            settle(pipeline)  # and finish them: its CPU per turn counts from wrk's start
            pids = {"server": proc.pid, "pipeline": pipeline, "receiver": receiver.pid}
            result = wrk_round(name + tag, url, script, pids, args, report)
            drain = wait_drain(receiver, result, args.drain_timeout)
            log(f"{name}: drain {drain}")
            if with_freshness and code == "current" and args.fresh_duration > 0 and drain.get("complete"):
                log(f"freshness: {args.fresh_rate:g} req/s for {args.fresh_duration:g}s")
                report.fresh = freshness(url, receiver, corpus, secret, args)
    finally:
        receiver.close()
    return DaemonRun(code, result, drain)


def run(args: argparse.Namespace, codes: dict[str, Path]) -> Report:
    """``codes``: the checkouts whose daemon runs each round, by name ("current", "baseline")."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    report = Report(
        Load(args.threads, args.connections, args.duration, args.timeout), environment(args.state_parent)
    )
    if args.only != "ack-only":
        report.codes, report.baseline_rev = dict(codes), args.baseline
        # the daemon runs in its checkout with clean_env(code_root=root): the same here
        report.code = {name: describe_code(root, cwd=root) for name, root in codes.items()}
    corpus = Corpus.load()
    secret = secrets.token_urlsafe(24)
    prefix = "ac_sid_benchload"
    with tempfile.TemporaryDirectory(prefix="otelbridge-bench-wrk-") as tmp:
        script = Path(tmp) / "call_turn.lua"
        script.write_text(
            lua_script(corpus, prefix=prefix, calls=args.calls, threads=args.threads, secret=secret)
        )
        rounds: list[Round] = []
        for number in range(1, args.rounds + 1):
            tag = f" (round {number}/{args.rounds})" if args.rounds > 1 else ""
            last = number == args.rounds
            with echo_server(args.echo_mode) as (url, proc):
                echo = wrk_round("echo" + tag, url, script, {"server": proc.pid}, args, report)
            ack_only = None
            if not args.skip_ack_only:
                with ack_only_server(secret, args.state_parent, args.ack_only_server) as (url, proc):
                    ack_only = wrk_round("ack-only" + tag, url, script, {"server": proc.pid}, args, report)
            rounds.append(Round(echo, ack_only))
            if args.only == "ack-only":
                continue
            # current then baseline in odd rounds, the other way round in even ones
            for code in list(report.codes)[:: -1 if number % 2 == 0 else 1]:
                result = daemon_round(corpus, secret, prefix, script, args, report, tag, last, code)
                rounds[-1].daemons[code] = result
                if not result.drain.get("complete"):
                    name = "daemon" if code == "current" else f"{code} daemon"
                    raise SystemExit(f"FAILED: {name}: not every acked turn was exported: {result.drain}")
        report.rounds = [r.summary() for r in rounds]
        median = sorted(rounds, key=Round.ratio)[(len(rounds) - 1) // 2]
        report.echo, report.ack_only = median.echo, median.ack_only
        if "current" in median.daemons:
            report.daemon, report.drain = median.daemons["current"].wrk, median.daemons["current"].drain
    return report


@dataclass(slots=True)
class Round:
    """One round: the echo, the ack-only diagnostic, each code's daemon."""

    echo: WrkResult
    ack_only: WrkResult | None
    daemons: dict[str, DaemonRun] = field(default_factory=dict)

    def ratio(self) -> float:
        """The current daemon's acks/s over the echo's (the ack-only's with --only ack-only)."""
        main = self.daemons["current"].wrk if "current" in self.daemons else self.ack_only
        return main.rps / self.echo.rps if main else 0.0

    def summary(self) -> dict[str, Any]:
        e, a = self.echo, self.ack_only
        d, b = self.daemons.get("current"), self.daemons.get("baseline")
        out = {
            "echo_rps": e.rps,
            "ack_only_rps": a.rps if a else None,
            "daemon_rps": d.wrk.rps if d else None,
            "ratio": round(d.wrk.rps / e.rps, 3) if d else None,
            "ratio_ack_only": round(a.rps / e.rps, 3) if a else None,
            # the server process (the daemon's webhook process) during the wrk run only
            "server_cpu_us_per_request": {
                name: round(r.cpu_s["server"] / r.requests * 1e6, 1)
                for name, r in (("echo", e), ("ack_only", a), ("daemon", d.wrk if d else None))
                if r and r.requests
            },
            "echo_p99_ms": e.latency_ms["p99"],
            "daemon": d.against(e) if d else None,
        }
        if b:
            out["baseline"] = b.against(e)
            if d:
                out["current_vs_baseline"] = ratios(d.against(e), b.against(e))
        return out


def render(data: dict[str, Any]) -> str:
    e, d, a, env = data["echo"], data["daemon"], data["ack_only"], data["environment"]
    lines = [
        f"machine: {env['cpu_model']}, {env['cores']} cores, Python {env['python']}, {env['wrk']}",
        f"load: {data['load']['command']} (same script for both)",
        "",
        f"{'server':<8} {'acked/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'requests':>9}"
        + ("" if d else f" {'ms CPU/req':>10}")
        + "   CPU s during wrk",
    ]
    rows = [("echo", e)] + ([("daemon", d)] if d else []) + ([("ack-only", a)] if a else [])
    for name, r in rows:
        lat = r["latency_ms"]
        cpu = ", ".join(f"{k} {v:g}" for k, v in r["cpu_s"].items())
        lines.append(
            f"{name:<8} {r['rps']:>9,.0f} {lat['p50']:>8.2f} {lat['p99']:>8.2f} {lat['max']:>8.1f} "
            f"{r['requests']:>9,}"
            + ("" if d else f" {r['cpu_ms_per_request']['server']:>10.3f}")
            + f"   {cpu}"
        )
    lines.append("")
    if len(data["rounds"]) > 1:
        lines.append(f"{len(data['rounds'])} interleaved rounds (the table shows the median round):")
        for n, r in enumerate(data["rounds"], 1):
            parts = [f"echo {r['echo_rps']:,.0f}/s"]
            if r["ack_only_rps"] is not None:
                parts.append(f"ack-only {r['ack_only_rps']:,.0f}/s ({r['ratio_ack_only']:.2f}x)")
            for code in ("daemon", "baseline"):
                if r.get(code):
                    m = r[code]
                    parts.append(
                        f"{code} {m['rps']:,.0f}/s ({m['ratio']:.2f}x, p99 {m['p99_ms']:.1f} ms, "
                        f"CPU s/10k turns {cpu_per_turns(m['cpu_s_per_10k_turns'])})"
                    )
            cpu = ", ".join(f"{k} {v:g}" for k, v in r["server_cpu_us_per_request"].items())
            lines.append(f"  round {n}: " + ", ".join(parts) + f"; server CPU us/request during wrk: {cpu}")
        lines.append("")
    if d:
        fresh, drain = data["freshness"], data["drain"]
        lines += [
            f"ratio daemon/echo: {data['ratio']:.2f}"
            + (
                f" (median of {len(data['rounds'])} rounds; range {data['ratio_range'][0]:.2f}"
                f"-{data['ratio_range'][1]:.2f})"
                if len(data["rounds"]) > 1
                else ""
            )
            + f" (goal >= {data['goal_ratio']}: "
            f"{'met' if data['meets_ratio_goal'] else 'NOT met'})",
            *(
                [
                    "diagnostic, ack path alone (webhook app + inbox, no processor) / echo: "
                    f"{data['ratio_ack_only']:.2f}"
                ]
                if a
                else []
            ),
            f"p99 daemon/echo: {data['p99_vs_echo']:.2f} (goal <= {data['goal_p99_vs_echo']:g}: "
            f"{'met' if data['meets_p99_goal'] else 'NOT met'})",
            f"drain after wrk: {drain.get('drain_s')} s ({drain.get('exported_turns')} turn spans exported "
            f"for {drain.get('acked_turns')} acked; {drain.get('trace_requests')} OTLP trace requests)",
            f"daemon CPU s per {TURNS_PER:,} turns, from the start of wrk until the last turn span "
            f"arrived ({drain.get('cpu_window_s')} s, {drain.get('exported_turns')} turns): "
            f"{cpu_per_turns(data['cpu_s_per_10k_turns'])}",
        ]
        if fresh:
            f = fresh["freshness_s"]
            lines.append(
                f"freshness at {fresh['rate']:g} req/s x {fresh['seconds']:g}s: p50 {f['p50']:.3f} s, "
                f"p99 {f['p99']:.3f} s, max {f['max']:.3f} s (goal <= {GOAL_FRESH_P50_S:g} s / "
                f"{GOAL_FRESH_P99_S:g} s: {'met' if fresh['meets_goal'] else 'NOT met'}); "
                f"ack p50 {fresh['ack_ms']['p50']} ms, p99 {fresh['ack_ms']['p99']} ms; "
                f"missing {fresh['missing']}"
            )
        if data["baseline"]:
            lines += ["", *render_comparison(data)]
    else:  # --only ack-only
        lines.append(
            f"ratio ack-only/echo (the request path alone): {data['ratio_ack_only']:.2f} "
            f"(goal for the daemon >= {data['goal_ratio']})"
        )
    for name, profile in data["profiles"].items():
        lines += [
            "",
            f"py-spy --gil profile of {name} during wrk: {profile['samples']} samples, GIL held "
            f"{profile['gil_busy']:.0%} of the time ({profile['raw']}); shares of GIL-holding samples:",
        ]
        for title in ("areas", "inclusive", "self"):
            lines.append(f"  {title}:")
            lines += [f"    {share:5.1f}%  {name}" for name, share in profile[title]]
    return "\n".join(lines)


def cpu_per_turns(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return "n/a"
    return f"webhook {cpu['webhook']:.2f}, pipeline {cpu['pipeline']:.2f}, both {cpu['both']:.2f}"


def render_comparison(data: dict[str, Any]) -> list[str]:
    b = data["baseline"]
    cur, base, ratio = (flat(b[k]) for k in ("current", "baseline", "current_vs_baseline"))
    rows = [
        ("acks/s", "rps", ",.0f"),
        ("acks/s / echo's", "ratio", ".2f"),
        ("p99 ms", "p99_ms", ".2f"),
        ("p99 / echo's", "p99_vs_echo", ".2f"),
        *(
            (f"CPU s/{TURNS_PER:,} turns, {name}", f"cpu_s_per_10k_turns.{name}", ".2f")
            for name in ("webhook", "pipeline", "both")
        ),
    ]
    lines = [
        f"current ({data['code'].get('current')}) vs baseline {b['rev']} ({b['commit']}): each daemon "
        "in every round, same wrk script, fresh state and receiver;",
        f"medians of {b['rounds']} round(s); current/baseline is the median of the rounds' ratios "
        f"({b['order']})",
        f"  {'':<30} {'current':>10} {'baseline':>10} {'current/baseline':>17}",
    ]
    for title, key, spec in rows:
        c, bl = (format(m[key], spec) if key in m else "n/a" for m in (cur, base))
        r = f"{ratio[key]:.2f}x" if key in ratio else "n/a"
        line = f"  {title:<30} {c:>10} {bl:>10} {r:>17}"
        if key == "cpu_s_per_10k_turns.pipeline" and b["meets_pipeline_cpu_goal"] is not None:
            met = "met" if b["meets_pipeline_cpu_goal"] else "NOT met"
            line += f"  (issue: halve it, <= {b['goal_pipeline_cpu_vs_baseline']:.2f}x: {met})"
        lines.append(line)
    lines.append("code checks: " + "; ".join(f"{k}: {v}" for k, v in data["code_checks"].items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-t", "--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("-c", "--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("-d", "--duration", type=int, default=10, help="seconds of each wrk run (default 10)")
    parser.add_argument("--timeout", type=int, default=10, help="wrk request timeout, s (default 10)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="echo / ack-only / daemon rounds, interleaved; the median round is reported (default 3)",
    )
    parser.add_argument(
        "--calls", type=int, default=1000, help="calls the wrk turns spread over (default 1000)"
    )
    parser.add_argument("--fresh-rate", type=float, default=200, help="freshness run req/s (default 200)")
    parser.add_argument("--fresh-duration", type=float, default=10, help="freshness run seconds; 0 skips it")
    parser.add_argument(
        "--fresh-calls", type=int, default=100, help="calls of the freshness run (default 100)"
    )
    parser.add_argument("--drain-timeout", type=float, default=120, help="longest wait for export, s")
    parser.add_argument(
        "--state-parent", type=Path, help="where the daemon's temp state dir goes (default TMPDIR)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="sample each server with py-spy --gil during its wrk run"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the daemon of git revision REV (a temporary git worktree) in every round",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--skip-ack-only", action="store_true", help="skip the diagnostic run of the ack path alone"
    )
    parser.add_argument(
        "--only",
        choices=("ack-only",),
        help="ack-only: run only the echo and the ack-only diagnostic (quick, for the request path)",
    )
    parser.add_argument(
        "--ack-only-server",
        choices=("daemon", "plain"),
        default="daemon",
        help="the diagnostic's server: daemon = the daemon's, with the abusive-client limits "
        "(default); plain = uvicorn+httptools without them",
    )
    parser.add_argument(
        "--echo-mode",
        choices=("raw", "echo", "parse"),
        default="raw",
        help="baseline: raw = a raw ASGI app answering the received JSON (issue 20's, default); "
        "echo = the same through Starlette (earlier figures); "
        'parse = Starlette, parse and answer a fixed {"status": "ok"}',
    )
    parser.add_argument("--internal", choices=("echo", "receiver", "ack-only"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only == "ack-only" and args.skip_ack_only:
        parser.error("--only ack-only and --skip-ack-only exclude each other")
    if args.only == "ack-only" and args.baseline:
        parser.error("--baseline compares daemons: not with --only ack-only")
    if args.internal == "echo":
        run_echo(args.port, args.echo_mode)
        return 0
    if args.internal == "ack-only":
        run_ack_only(args.port, args.state, os.environ["BENCH_WEBHOOK_SECRET"], args.ack_only_server)
        return 0
    if args.internal == "receiver":
        run_receiver(sys.stdin, sys.stdout)
        return 0
    with code_roots(args.baseline, "otelbridge-bench-webhooks-code-") as codes:
        data = run(args, codes).as_dict()
    print(json.dumps(data, indent=2) if args.json else render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
