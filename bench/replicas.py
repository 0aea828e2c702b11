"""Benchmark: acked ``call_turn`` webhooks per second of two ``otelbridge serve`` replicas sharing
one PostgreSQL, against one replica on SQLite, in the same run on this machine.

    python bench/replicas.py [-c 32] [-d 10] [--rounds 3] [--replicas 2] [--json] [--profile]

Every process runs on this machine, on loopback only:

* ``sqlite``: one ``python -m otelbridge serve`` with a fresh ``OTELBRIDGE_STATE_DIR`` (the
  embedded engine);
* ``postgres``: two ``otelbridge serve`` replicas, each with ``OTELBRIDGE_DATABASE_URL`` naming
  one fresh database on one throwaway PostgreSQL server (``tests/support/postgres.py``'s
  ``PostgresServer``: Debian's binaries, run as the postgres user, a free loopback port), each
  with its own state directory and ports; both receive, one leads (processes and exports);
* a local OTLP/HTTP receiver in this process (``tests/support/otlp_receiver.py``), answering
  200 and counting the turn spans that arrive.

PostgreSQL runs with ``fsync = on`` (``--pg-fsync off`` for the test suite's setting), so a
2xx means the webhook is on disk in both engines (SQLite: ``synchronous=FULL``).

Load: two ``wrk`` processes at the same time, each with half of ``--connections`` (``-t1``
each). Against ``sqlite`` both go to the one replica; against ``postgres`` each goes to its own
replica. Both engines get the same total connection count, the same client processes and the
same generated Lua script, which makes every request a new, unique turn (its own call id out of
``--calls`` and its own start time) built from a ``call_turn`` of the sample stream
(``sample_deliveries()``), with the webhook secret: the PostgreSQL engine acknowledges a body it
already holds without storing it again, so identical bodies would not measure storing. The
calls are announced beforehand (``call_started``, untimed) so the leader maps each turn at once.
Acked/s is the sum of both wrk's 2xx answers per second; wrk counts answers with status >= 400
as errors (otelbridge answers 2xx, 4xx or 5xx), reported as non-2xx with the socket errors.
Ack latency p50/p99 merge the two wrk latency histograms (each wrk prints a percentile grid;
wrk is closed-loop, so at saturation the latency includes queueing).

``pgbench`` (PostgreSQL's) then measures the same server's ceiling for one-row commits with the
same client count: ``INSERT INTO t (v) VALUES (:r)`` on a one-column table, ``-c N -j 2 -n``.

Rounds are interleaved (sqlite, postgres, pgbench, sqlite, ...; fresh servers, state and
database every round) so that the shared machine's noise hits all alike; the medians are
reported with the ratio postgres/sqlite. Goal: >= 0.6x, with the postgres ack p99 <= 50 ms.

Where the time goes: CPU time per acked webhook of every process group during the wrk run
(webhook processes, pipeline processes, PostgreSQL's backends by whom they serve, wrk, this
process, kernel threads, everything else on the machine) from /proc, the machine's busy share;
the database's commits and WAL flushes (``pg_stat_database``, ``pg_stat_wal``), and
``pg_stat_statements`` (loaded into the throwaway server; ``--no-statements`` leaves it out):
calls, mean time, rows per call; pgbench's server CPU per commit. ``--replicas 1`` puts one
replica on PostgreSQL (a diagnostic: the engine without the second process). ``--profile``
also samples one webhook process per round with ``py-spy --gil``.

Replicas are stopped with SIGKILL once measured (their process groups): a SIGTERM would drain
the backlog first, which is not what is measured and takes long.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, cpu_seconds, log, start_profiler, summarize_profile

from tests.support.otlp_receiver import HttpOtlpReceiver, ReceivedRequest
from tests.support.postgres import PostgresServer, find_postgres_bin
from tests.support.serve_process import (
    WEBHOOK_PATH,
    Delivery,
    Poster,
    ServeProcess,
    free_port,
    sample_deliveries,
    serve_env,
)

SECRET_HEADER = "X-Webhook-Secret"
GOAL_RATIO = 0.6
GOAL_P99_MS = 50.0
WRK_MARK = "WRKJSON "
FIRST_TURN_S = 0.5
TURN_SPACING_S = 5.0  # longer than the sample turn, so a call's turns never overlap
PROFILE_RATE = 200
TURN_SPAN_NAMES = ("user_turn", "assistant_turn")
PGBENCH_TABLE_DB = "pgbench_ceiling"
LANES = ("a", "b")  # one wrk per lane, at the same time
#: where a webhook process's GIL-holding samples belong (py-spy --gil)
PROFILE_AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("inbox commit: psycopg and its pool (PostgreSQL)", ("psycopg",)),
    ("inbox commit: SQLite", ("store/sqlite",)),
    ("inbox committer thread, the rest", ("GroupCommitInbox._",)),
    ("webhook handler: secret, JSON, validation, append", ("_WebhookReceiver",)),
    ("HTTP server: uvicorn + Starlette", ("httptools_impl", "starlette/", "httplimits")),
)


# --- the request bodies ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Bodies:
    """A sample ``call_turn`` as a printf format (the same in Lua and Python): ``%s`` is the call
    id, each ``%.6f`` a time, the turn's start plus ``offsets[i]``; and a ``call_started`` to
    announce each call with."""

    fmt: str
    offsets: tuple[float | None, ...]  # None: the call id
    started: dict[str, Any]
    anchor: str  # every bench call's start time and the turns' envelope timestamp

    @classmethod
    def from_samples(cls) -> Bodies:
        from otelbridge.cartesia.timestamps import format_rfc3339_ns

        deliveries = sample_deliveries()
        turn_event = next(
            d.event
            for d in deliveries
            if d.event["type"] == "call_turn" and d.event["turn"].get("text_chunks")
        )
        started = next(
            d.event
            for d in deliveries
            if d.event["type"] == "call_started" and d.event["agent_id"] == turn_event["agent_id"]
        )
        anchor = format_rfc3339_ns(time.time_ns() - 120 * 1_000_000_000)
        body = json.loads(json.dumps(turn_event))
        turn = body["turn"]
        s0 = float(turn["start_timestamp"])
        offsets: list[float | None] = []

        def mark(value: float) -> str:
            offsets.append(round(float(value) - s0, 6))
            return f"@@{len(offsets) - 1}@@"

        body["call_id"] = "@@C@@"
        body["timestamp"] = anchor
        turn["start_timestamp"] = mark(s0)
        if turn.get("end_timestamp") is not None:
            turn["end_timestamp"] = mark(turn["end_timestamp"])
        for chunk in turn.get("text_chunks") or []:
            chunk["start_timestamp"] = mark(chunk["start_timestamp"])
        text = json.dumps(body, separators=(",", ":")).replace("%", "%%")
        order: list[float | None] = []

        def placeholder(match: re.Match[str]) -> str:
            if match.group(1) == "C":
                order.append(None)
                return '"%s"'
            order.append(offsets[int(match.group(1))])
            return "%.6f"

        fmt = re.sub(r'"@@(C|\d+)@@"', placeholder, text)
        return cls(fmt, tuple(order), started, anchor)

    def turn(self, call_id: str, start: float) -> bytes:
        values: list[object] = [call_id if s is None else start + s for s in self.offsets]
        return (self.fmt % tuple(values)).encode()

    def call_started(self, call_id: str) -> bytes:
        body = json.loads(json.dumps(self.started))
        body["call_id"] = body["call"]["id"] = call_id
        body["timestamp"] = body["call"]["start_time"] = self.anchor
        return json.dumps(body, separators=(",", ":")).encode()


def lane_calls(prefix: str, lane: str, calls: int) -> list[str]:
    return [f"{prefix}{lane}{i:06d}" for i in range(calls)]


def lua_script(bodies: Bodies, *, prefix: str, calls: int, threads: int, secret: str) -> str:
    """Request k of wrk thread t is turn ``seq = k * threads + t`` of the lane: call
    ``seq % calls``, starting at ``FIRST + (seq // calls) * SPACING``; ``wrk.lua`` gets the lane
    letter as its first argument (after ``--``)."""
    assert "]==]" not in bodies.fmt
    offsets = ", ".join('"c"' if s is None else repr(s) for s in bodies.offsets)
    return f"""-- generated by bench/replicas.py: every request a new call_turn (unique body)
local PREFIX = "{prefix}"
local NCALLS = {calls}
local NTHREADS = {threads}
local FIRST, SPACING = {FIRST_TURN_S!r}, {TURN_SPACING_S!r}
local FMT = [==[{bodies.fmt}]==]
local OFFSETS = {{{offsets}}}
local counter = 0
local created = 0

function setup(thread)
  thread:set("tid", created)
  created = created + 1
end

function init(args)
  lane = args[1] or "a"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["{SECRET_HEADER}"] = "{secret}"
end

function request()
  local seq = counter * NTHREADS + tid
  counter = counter + 1
  local call_id = string.format("%s%s%06d", PREFIX, lane, seq % NCALLS)
  local start = FIRST + math.floor(seq / NCALLS) * SPACING
  local values = {{}}
  for i, s in ipairs(OFFSETS) do
    if s == "c" then values[i] = call_id else values[i] = start + s end
  end
  return wrk.format(nil, "{WEBHOOK_PATH}", nil, string.format(FMT, unpack(values)))
end

function done(summary, latency, requests)
  local ps = {{}}
  for i = 1, 198 do ps[#ps + 1] = i * 0.5 end
  for i = 1, 9 do ps[#ps + 1] = 99 + i * 0.1 end
  ps[#ps + 1] = 99.95
  ps[#ps + 1] = 99.99
  local grid = {{}}
  for i, p in ipairs(ps) do
    grid[i] = string.format("[%.2f,%.0f]", p, latency:percentile(p))
  end
  local e = summary.errors
  io.write(string.format(
    '{WRK_MARK}{{"requests":%.0f,"duration_us":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,' ..
    '"status":%.0f,"timeout":%.0f,"max_us":%.0f,"grid":[%s]}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.max, table.concat(grid, ",")))
end
"""


# --- load ------------------------------------------------------------------------------------
@dataclass(slots=True)
class LaneResult:
    """One wrk's summary."""

    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: dict[str, int]
    max_us: float
    grid: list[tuple[float, float]]  # (percentile, latency in us)

    @property
    def acked(self) -> int:
        return self.requests - self.non_2xx


def merged_percentile(lanes: Sequence[LaneResult], p: float) -> float:
    """The ``p``-th percentile (us) of the lanes' latencies together: the smallest latency on
    any lane's grid at or below which ``p`` % of all requests lie (each lane's share read as a
    step function of its grid)."""
    lanes = [lane for lane in lanes if lane.requests]
    total = sum(lane.requests for lane in lanes)
    if not total:
        return float("nan")

    def below(lane: LaneResult, x: float) -> float:
        return max((q for q, v in lane.grid if v <= x), default=0.0)

    for x in sorted({v for lane in lanes for _, v in lane.grid}):
        if sum(lane.requests * below(lane, x) for lane in lanes) / total >= p:
            return x
    return max(lane.max_us for lane in lanes)


def run_lanes(
    script: Path, targets: Sequence[str], connections: int, threads: int, duration: int, timeout: int
) -> list[LaneResult]:
    """One wrk per lane at the same time, ``connections // lanes`` connections each; lane i
    loads ``targets[i]``. Each wrk stops after ``duration`` s (killed ``timeout + 30`` s later)."""
    per_lane = connections // len(LANES)
    procs = []
    for lane, url in zip(LANES, targets, strict=True):
        command = [
            *("wrk", f"-t{threads}", f"-c{per_lane}", f"-d{duration}s", f"--timeout={timeout}s"),
            *("-s", str(script), url, "--", lane),
        ]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=duration + timeout + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {err or out}")
        mark = next((line for line in out.splitlines() if line.startswith(WRK_MARK)), None)
        if mark is None:
            raise RuntimeError(f"wrk printed no summary:\n{out}\n{err}")
        data = json.loads(mark[len(WRK_MARK) :])
        results.append(
            LaneResult(
                requests=int(data["requests"]),
                duration_s=data["duration_us"] / 1e6,
                non_2xx=int(data["status"]),
                socket_errors={k: int(data[k]) for k in ("connect", "read", "write", "timeout")},
                max_us=float(data["max_us"]),
                grid=[(float(p) / 100, float(v)) for p, v in data["grid"]],
            )
        )
    return results


# --- CPU accounting ----------------------------------------------------------------------------
def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children(parents: set[int]) -> set[int]:
    """Processes whose parent is one of ``parents`` (one level)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _ppid(int(entry.name)) in parents:
            found.add(int(entry.name))
    return found


def _cpu(pids: set[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[pid] = cpu_seconds(pid)
    return out


def _machine() -> tuple[int, int, int]:
    """(busy, stolen, total) jiffies of all CPUs so far (/proc/stat; guest time is already in
    user time)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - fields[3] - fields[4] - fields[7], fields[7], total


class CpuMeter:
    """CPU seconds per process group between :meth:`start` and :meth:`stop`; a group is a
    function giving its pids (asked at both ends: processes that ended between are missed).
    Besides the groups: wrk (this process's children that ended meanwhile), this process, the
    kernel's threads (fsync journal commits, softirq work) and every other process."""

    def __init__(self, groups: dict[str, Any], client: str | None = "wrk") -> None:
        self.groups = groups
        self.client = client
        self._before: dict[str, dict[int, float]] = {}
        self._all: dict[int, float] = {}
        self._machine = (0, 0, 0)
        self._rusage = (0.0, 0.0)

    @staticmethod
    def _usage() -> tuple[float, float]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime

    @staticmethod
    def _everyone() -> set[int]:
        return {int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()} - {os.getpid()}

    def start(self) -> None:
        self._before = {name: _cpu(pids()) for name, pids in self.groups.items()}
        self._all = _cpu(self._everyone())
        self._machine = _machine()
        self._rusage = self._usage()

    def stop(self) -> dict[str, float]:
        out = {}
        known = {pid for before in self._before.values() for pid in before}
        for name, pids in self.groups.items():
            now = _cpu(pids())
            known |= now.keys()
            out[name] = round(sum(v - self._before[name].get(pid, 0.0) for pid, v in now.items()), 2)
        me, kids = self._usage()
        if self.client is not None:  # the only children that end meanwhile
            out[self.client] = round(kids - self._rusage[1], 2)
        out["bench (OTLP receiver)"] = round(me - self._rusage[0], 2)
        kernel = other = 0.0
        for pid, v in _cpu(self._everyone() - known).items():
            delta = v - self._all.get(pid, 0.0)
            if pid == 2 or _ppid(pid) == 2:
                kernel += delta
            else:
                other += delta
        out["kernel threads"] = round(kernel, 2)
        out["other processes"] = round(other, 2)
        busy, stolen, total = _machine()
        span = max(total - self._machine[2], 1)
        out["machine busy share"] = round((busy - self._machine[0]) / span, 3)
        out["machine stolen share"] = round((stolen - self._machine[1]) / span, 3)
        return out


# --- servers ----------------------------------------------------------------------------------
class CountingReceiver(HttpOtlpReceiver):
    """The OTLP/HTTP receiver, keeping counts only (not every decoded request)."""

    def __init__(self) -> None:
        super().__init__()
        self.turn_spans = 0
        self.exports = 0

    def _record(self, request: ReceivedRequest, accepted: bool) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        message = request.message
        if not (accepted and isinstance(message, ExportTraceServiceRequest)):
            return
        with self._lock:
            self.exports += 1
            for rs in message.resource_spans:
                for ss in rs.scope_spans:
                    self.turn_spans += sum(1 for s in ss.spans if s.name in TURN_SPAN_NAMES)


@contextlib.contextmanager
def replicas(
    count: int, secret: str, receiver: CountingReceiver, database_url: str | None, timeout: float
) -> Iterator[list[ServeProcess]]:
    """``count`` ``otelbridge serve`` processes, each with its own state directory and ports,
    all on ``database_url`` (None: SQLite); killed (whole process groups) at the end."""
    with tempfile.TemporaryDirectory(prefix="otelbridge-bench-replicas-") as tmp:
        procs: list[ServeProcess] = []
        try:
            for n in range(count):
                work = Path(tmp) / f"replica{n}"
                work.mkdir()
                port, admin = free_port(), free_port()
                extra: dict[str, str | None] = {
                    "OTELBRIDGE_LOG_LEVEL": "warning",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_METRIC_EXPORT_INTERVAL": None,  # the daemon's default
                    "PYTHONPATH": str(ROOT),
                }
                if database_url is not None:
                    extra["OTELBRIDGE_DATABASE_URL"] = database_url
                env = serve_env(
                    work / "state",
                    port,
                    admin,
                    secret,
                    {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url},
                    extra,
                    fast_retries=False,
                )
                procs.append(ServeProcess(work, env, listen_port=port, admin_port=admin).start())
            for proc in procs:
                proc.wait_ready(timeout)
            yield procs
        finally:
            for proc in procs:
                if proc.running:
                    with contextlib.suppress(ProcessLookupError):
                        proc.signal_group(signal.SIGKILL)
                proc.close()
            problems = [
                line
                for proc in procs
                for line in proc.stderr.splitlines()
                if re.search(r"\b(ERROR|CRITICAL|Traceback|lease was lost)\b", line)
            ]
            for line in problems[:10]:
                print(f"warning: replica stderr: {line}", file=sys.stderr)


def announce(url: str, secret: str, bodies: Bodies, call_ids: Sequence[str]) -> None:
    """``call_started`` for every call (untimed); any non-2xx fails the run."""
    deliveries = [Delivery(i, bodies.call_started(c), {}, c) for i, c in enumerate(call_ids)]
    poster = Poster(url, secret, threads=8)
    poster.post_all(deliveries)
    if len(poster.acked) != len(deliveries):
        bad = {s for s in poster.answers.values() if s is None or not 200 <= s < 300}
        raise SystemExit(f"FAILED: announcing calls: {len(deliveries) - len(poster.acked)} not acked ({bad})")


class Postgres:
    """The throwaway server, with ``fsync`` as asked and ``pg_stat_statements`` loaded."""

    def __init__(self, fsync: bool, statements: bool) -> None:
        bin_dir = find_postgres_bin()
        if bin_dir is None:
            raise SystemExit("PostgreSQL's binaries not found: apt-get install -y postgresql")
        self.bin_dir = bin_dir
        self.statements = statements
        self.server = PostgresServer(bin_dir)
        try:
            self.server.start()
            settings = [f"fsync = {'on' if fsync else 'off'}", "track_wal_io_timing = on"]
            if statements:
                settings.append("shared_preload_libraries = 'pg_stat_statements'")
            with self.admin() as conn:
                for setting in settings:
                    conn.execute(f"ALTER SYSTEM SET {setting}")
            self.server.stop()  # shared_preload_libraries takes a restart
            self.server.start()
            with self.admin() as conn:
                if statements:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                row = conn.execute("SELECT version(), current_setting('fsync')").fetchone()
            assert row is not None
            self.version, self.fsync = str(row[0]), str(row[1])
            self.server.create_database(PGBENCH_TABLE_DB)
            import psycopg

            with psycopg.connect(self.server.database_url(PGBENCH_TABLE_DB), autocommit=True) as conn:
                conn.execute("CREATE TABLE t (v bigint)")
        except BaseException:
            self.server.close()
            raise

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.server.admin_url, autocommit=True, connect_timeout=10)

    def postmaster_pids(self) -> set[int]:
        """The postmaster and its children (backends, walwriter, checkpointer, ...)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.server.data_dir / "postmaster.pid").read_text().splitlines()[0])
            return {pid} | children({pid})
        return set()

    def backends(self) -> dict[str, set[int]]:
        """The server's processes by whom they serve: the replicas' webhook processes (their
        inbox pools), their pipeline processes (the leader's work, the follower's lease tries),
        and the rest (postmaster, WAL writer, checkpointer, autovacuum, this bench's queries)."""
        with self.admin() as conn:
            rows = conn.execute("SELECT pid, application_name FROM pg_stat_activity").fetchall()
        out: dict[str, set[int]] = {"receivers": set(), "pipelines": set()}
        for pid, name in rows:
            if str(name).startswith("otelbridge-receiver"):
                out["receivers"].add(int(pid))
            elif str(name).startswith("otelbridge-pipeline"):
                out["pipelines"].add(int(pid))
        out["other"] = self.postmaster_pids() - out["receivers"] - out["pipelines"]
        return out

    def counters(self, database: str) -> dict[str, float]:
        """Commits in ``database`` and the server's WAL flushes so far (``pg_stat_database``,
        ``pg_stat_wal``; ``track_wal_io_timing`` is on)."""
        with self.admin() as conn:
            row = conn.execute(
                "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = %s),"
                " wal_sync, wal_sync_time, wal_write, wal_records FROM pg_stat_wal",
                (database,),
            ).fetchone()
        assert row is not None
        keys = ("commits", "wal_syncs", "wal_sync_ms", "wal_writes", "wal_records")
        return {k: float(v or 0) for k, v in zip(keys, row, strict=True)}

    def reset_statements(self) -> None:
        if self.statements:
            with self.admin() as conn:
                conn.execute("SELECT pg_stat_statements_reset()")

    def read_statements(self, database: str) -> list[dict[str, Any]]:
        if not self.statements:
            return []
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT query, calls, rows, total_exec_time FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)",
                (database,),
            ).fetchall()
        return [
            {"query": " ".join(str(q).split()), "calls": int(c), "rows": int(r), "total_ms": float(t)}
            for q, c, r, t in rows
        ]

    def pgbench(self, clients: int, seconds: int, workdir: Path) -> dict[str, Any]:
        script = workdir / "insert.sql"
        script.write_text("\\set r random(1, 1000000000)\nINSERT INTO t (v) VALUES (:r);\n")
        command = [
            str(self.bin_dir / "pgbench"),
            *("-n", "-c", str(clients), "-j", str(min(2, clients)), "-T", str(seconds)),
            *("-f", str(script), self.server.database_url(PGBENCH_TABLE_DB)),
        ]
        # pgbench's backends end with it: their CPU is read just before its end
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        meter = CpuMeter({"postgres": self.postmaster_pids, "pgbench": lambda: {proc.pid}}, client=None)
        started = time.monotonic()
        meter.start()
        time.sleep(max(seconds - 0.5, 0.5))
        cpu = meter.stop()
        metered_s = time.monotonic() - started
        try:
            stdout, stderr = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        done = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr or done.stdout}")
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
        latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
        if tps is None:
            raise RuntimeError(f"pgbench printed no tps:\n{done.stdout}")
        commits = float(tps.group(1)) * metered_s
        return {
            "tps": float(tps.group(1)),
            "cpu_s": cpu,
            "server_cpu_us_per_commit": round(cpu["postgres"] * 1e6 / max(commits, 1), 1),
            "latency_avg_ms": float(latency.group(1)) if latency else None,
            "failed": int(failed.group(1)) if failed else 0,
            "command": "pgbench " + " ".join(command[1:-1]) + " URL",
        }

    def close(self) -> None:
        self.server.close()


# --- the run ----------------------------------------------------------------------------------
@dataclass(slots=True)
class EngineRound:
    """One engine's wrk run in one round."""

    engine: str
    lanes: list[LaneResult]
    cpu: dict[str, float]
    exported_turns: int
    statements: list[dict[str, Any]] = field(default_factory=list)
    inbox_rows_inserted: int | None = None
    #: postgres: commits in the round's database and WAL flushes during the wrk run
    commit_stats: dict[str, float] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max(lane.duration_s for lane in self.lanes)

    @property
    def acked(self) -> int:
        return sum(lane.acked for lane in self.lanes)

    @property
    def rps(self) -> float:
        return sum(lane.acked / lane.duration_s for lane in self.lanes if lane.duration_s)

    def summary(self) -> dict[str, Any]:
        requests = sum(lane.requests for lane in self.lanes)
        errors: dict[str, int] = {}
        for lane in self.lanes:
            for key, value in lane.socket_errors.items():
                errors[key] = errors.get(key, 0) + value
        return {
            "engine": self.engine,
            "acked_per_s": round(self.rps, 1),
            "acked": self.acked,
            "requests": requests,
            "non_2xx": sum(lane.non_2xx for lane in self.lanes),
            "socket_errors": errors,
            "per_wrk_acked_per_s": [round(lane.acked / lane.duration_s, 1) for lane in self.lanes],
            "latency_ms": {
                "p50": round(merged_percentile(self.lanes, 0.50) / 1000, 2),
                "p90": round(merged_percentile(self.lanes, 0.90) / 1000, 2),
                "p99": round(merged_percentile(self.lanes, 0.99) / 1000, 2),
                "max": round(max(lane.max_us for lane in self.lanes) / 1000, 2),
            },
            "cpu_s": self.cpu,
            "cpu_us_per_acked": {
                k: round(v * 1e6 / max(self.acked, 1), 1) for k, v in self.cpu.items() if "share" not in k
            },
            "exported_turn_spans_by_wrk_end": self.exported_turns,
            "inbox_rows_inserted": self.inbox_rows_inserted,
            "postgres_during_wrk": {
                "commits_per_s": round(self.commit_stats["commits"] / self.duration_s, 1),
                "wal_flushes_per_s": round(self.commit_stats["wal_syncs"] / self.duration_s, 1),
                "wal_flush_mean_ms": round(
                    self.commit_stats["wal_sync_ms"] / max(self.commit_stats["wal_syncs"], 1), 3
                ),
                "wal_records_per_s": round(self.commit_stats["wal_records"] / self.duration_s, 1),
            }
            if self.commit_stats
            else None,
        }


def engine_round(
    engine: str,
    args: argparse.Namespace,
    script: Path,
    bodies: Bodies,
    secret: str,
    prefix: str,
    pg: Postgres | None,
    database: str | None,
    profiles: dict[str, Any],
    tag: str,
) -> EngineRound:
    receiver = CountingReceiver().start()
    try:
        url = pg.server.create_database(database) if pg is not None and database is not None else None
        count = 1 if url is None else args.replicas
        try:
            with replicas(count, secret, receiver, url, args.start_timeout) as procs:
                targets = [procs[i % count].webhook_url for i in range(len(LANES))]
                for lane, target in zip(LANES, targets, strict=True):
                    announce(target, secret, bodies, lane_calls(prefix, lane, args.calls // len(LANES)))
                time.sleep(1.0)  # let the leader take the announcements before the load
                serve_pids = {p.pid for p in procs}
                groups: dict[str, Any] = {
                    "webhook processes": lambda: serve_pids,
                    "pipeline processes": lambda: children(serve_pids),
                }
                counters: dict[str, float] = {}
                if pg is not None and database is not None:
                    for who in ("receivers", "pipelines", "other"):
                        groups[f"postgres: {who}"] = lambda who=who: pg.backends()[who]
                    pg.reset_statements()
                    counters = pg.counters(database)
                meter = CpuMeter(groups)
                profiler, out = None, Path(tempfile.gettempdir()) / f"otelbridge-bench-replicas-{engine}.txt"
                if args.profile:
                    out.unlink(missing_ok=True)
                    profiler = start_profiler(procs[0].pid, out, PROFILE_RATE, args.duration)
                log(f"{engine}{tag}: 2 x wrk -t{args.threads} -c{args.connections // 2} -d{args.duration}s "
                    f"against {count} replica(s)")  # fmt: skip
                meter.start()
                lanes = run_lanes(
                    script, targets, args.connections, args.threads, args.duration, args.timeout
                )
                cpu = meter.stop()
                exported = receiver.turn_spans
                commit_stats: dict[str, float] = {}
                statements: list[dict[str, Any]] = []
                if pg is not None and database is not None:
                    after = pg.counters(database)
                    commit_stats = {k: after[k] - counters[k] for k in after}
                    statements = pg.read_statements(database)
                if profiler is not None:
                    profiler.wait()
                    if out.exists():
                        profiles[engine + tag] = summarize_profile(
                            out, args.duration, PROFILE_RATE, PROFILE_AREAS, "event loop, other"
                        )
            result = EngineRound(engine, lanes, cpu, exported, statements, commit_stats=commit_stats)
            if pg is not None and database is not None:
                result.inbox_rows_inserted = inbox_inserts(pg, database)
        finally:
            if pg is not None and database is not None:
                pg.server.drop_database(database)
    finally:
        receiver.stop()
    summary = result.summary()
    log(
        f"{engine}{tag}: {summary['acked_per_s']:,.0f} acked/s, p50 {summary['latency_ms']['p50']} ms, "
        f"p99 {summary['latency_ms']['p99']} ms, non-2xx {summary['non_2xx']}, "
        f"socket errors {summary['socket_errors']}"
    )
    return result


def inbox_inserts(pg: Postgres, database: str) -> int | None:
    """Rows ever inserted into ``inbox`` of ``database`` (the replicas are gone: their counts
    are flushed); a re-delivered body skipped by ``ON CONFLICT`` is not counted."""
    import psycopg

    time.sleep(0.5)
    with psycopg.connect(pg.server.database_url(database), autocommit=True) as conn:
        row = conn.execute("SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'inbox'").fetchone()
    return int(row[0]) if row else None


def environment(pg: Postgres) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    tmp = Path(tempfile.gettempdir())
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp)], capture_output=True, text=True, check=False)
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "nproc": os.cpu_count(),
        "memory_kib": int(mem.group(1)) if mem else None,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "postgres": pg.version,
        "postgres_fsync": pg.fsync,
        "wrk": ((wrk.stdout or wrk.stderr).splitlines() or ["?"])[0].strip(),
        "tmp_fs": f"{tmp} ({fs.stdout.strip()})",
    }


def statement_summary(rounds: Sequence[EngineRound], seconds: float) -> list[dict[str, Any]]:
    """The postgres rounds' statements together, by total time: calls/s, mean ms, rows/call."""
    merged: dict[str, dict[str, float]] = {}
    for r in rounds:
        for s in r.statements:
            # a multi-row INSERT's text differs with its row count: one entry for all
            query = re.sub(r"VALUES \(\$1,[^)]*\)(, \([^)]*\))*", "VALUES (...), ...", s["query"])
            m = merged.setdefault(query, {"calls": 0, "rows": 0, "total_ms": 0.0})
            for key in ("calls", "rows", "total_ms"):
                m[key] += s[key]
    top = sorted(merged.items(), key=lambda kv: -kv[1]["total_ms"])[:10]
    n = max(len(rounds), 1)
    return [
        {
            "query": query[:110],
            "calls_per_s": round(m["calls"] / n / seconds, 1),
            "mean_ms": round(m["total_ms"] / max(m["calls"], 1), 3),
            "rows_per_call": round(m["rows"] / max(m["calls"], 1), 1),
            "time_share_of_wrk_run": round(m["total_ms"] / n / 1000 / seconds, 3),
        }
        for query, m in top
    ]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    bodies = Bodies.from_samples()
    secret = "whsec_" + secrets.token_urlsafe(18)
    prefix = "ac_sid_benchrepl"
    statements = "on" if args.statements else "off"
    log(f"starting PostgreSQL (initdb, fsync {args.pg_fsync}, pg_stat_statements {statements})")
    pg = Postgres(args.pg_fsync == "on", args.statements)
    rounds: list[dict[str, Any]] = []
    engine_rounds: dict[str, list[EngineRound]] = {"sqlite": [], "postgres": []}
    pgbench: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    deadline = time.monotonic() + args.max_minutes * 60
    try:
        env = environment(pg)
        with tempfile.TemporaryDirectory(prefix="otelbridge-bench-replicas-lua-") as tmp:
            script = Path(tmp) / "call_turn.lua"
            script.write_text(
                lua_script(
                    bodies, prefix=prefix, calls=args.calls // len(LANES), threads=args.threads, secret=secret
                )
            )
            for number in range(1, args.rounds + 1):
                if time.monotonic() > deadline:
                    log(f"--max-minutes {args.max_minutes:g} reached: stopping after {number - 1} rounds")
                    break
                tag = f" (round {number}/{args.rounds})"
                sqlite = engine_round(
                    "sqlite", args, script, bodies, secret, prefix, None, None, profiles, tag
                )
                postgres = engine_round(
                    "postgres", args, script, bodies, secret, prefix, pg, f"round{number}", profiles, tag
                )
                engine_rounds["sqlite"].append(sqlite)
                engine_rounds["postgres"].append(postgres)
                bench = None
                if args.pgbench_duration > 0:
                    log(f"pgbench{tag}: -c {args.connections} -j 2 -T {args.pgbench_duration}")
                    bench = pg.pgbench(args.connections, args.pgbench_duration, Path(tmp))
                    pgbench.append(bench)
                    log(f"pgbench{tag}: {bench['tps']:,.0f} commits/s")
                rounds.append({
                    "sqlite": sqlite.summary(),
                    "postgres": postgres.summary(),
                    "ratio": round(postgres.rps / sqlite.rps, 3) if sqlite.rps else None,
                    "pgbench": bench,
                })  # fmt: skip
    finally:
        pg.close()

    def med(engine: str, key: str, sub: str | None = None) -> float:
        values = [r[engine][key][sub] if sub else r[engine][key] for r in rounds]
        return median(values)

    sqlite_rps, pg_rps = med("sqlite", "acked_per_s"), med("postgres", "acked_per_s")
    ratio = pg_rps / sqlite_rps if sqlite_rps else float("nan")
    pg_p99 = med("postgres", "latency_ms", "p99")
    cpu_mean: dict[str, dict[str, float]] = {}
    for engine, results in engine_rounds.items():
        keys = {k for r in results for k in r.cpu}
        cpu_mean[engine] = {k: round(statistics.fmean(r.cpu.get(k, 0.0) for r in results), 3) for k in keys}
    order = (
        "webhook processes",
        "pipeline processes",
        "postgres: receivers",
        "postgres: pipelines",
        "postgres: other",
        "wrk",
        "bench (OTLP receiver)",
        "kernel threads",
        "other processes",
    )
    cpu_us: dict[str, dict[str, float]] = {}
    for engine in engine_rounds:
        per = [r[engine]["cpu_us_per_acked"] for r in rounds]
        cpu_us[engine] = {
            k: round(statistics.fmean(p.get(k, 0.0) for p in per), 1) for k in order if k in per[0]
        }
    return {
        "load": {
            "wrk": f"2 x wrk -t{args.threads} -c{args.connections // 2} -d{args.duration}s "
            f"--timeout={args.timeout}s -s call_turn.lua URL -- LANE (at the same time)",
            "connections_total": args.connections,
            "replicas": args.replicas,
            "calls": args.calls,
        },
        "median": {
            "sqlite": {
                "acked_per_s": sqlite_rps,
                "p50_ms": med("sqlite", "latency_ms", "p50"),
                "p99_ms": med("sqlite", "latency_ms", "p99"),
            },
            "postgres": {
                "acked_per_s": pg_rps,
                "p50_ms": med("postgres", "latency_ms", "p50"),
                "p99_ms": pg_p99,
            },
            "pgbench_tps": median([b["tps"] for b in pgbench]) if pgbench else None,
        },
        "ratio": round(ratio, 3),
        "ratio_range": [min(r["ratio"] for r in rounds), max(r["ratio"] for r in rounds)] if rounds else None,
        "non_2xx": sum(r[e]["non_2xx"] for r in rounds for e in ("sqlite", "postgres")),
        "socket_errors": sum(
            v for r in rounds for e in ("sqlite", "postgres") for v in r[e]["socket_errors"].values()
        ),
        # each acked turn a row of its own (unique bodies: nothing skipped as a re-delivery)
        "every_ack_stored": all(
            (r["postgres"]["inbox_rows_inserted"] or 0) >= r["postgres"]["acked"] + args.calls for r in rounds
        ),
        "goal": {"ratio": GOAL_RATIO, "p99_ms": GOAL_P99_MS},
        "meets_ratio": ratio >= GOAL_RATIO,
        "meets_p99": pg_p99 <= GOAL_P99_MS,
        "rounds": rounds,
        "other_share": round(
            statistics.fmean(
                r.cpu.get("other processes", 0.0) / r.duration_s / (os.cpu_count() or 1)
                for results in engine_rounds.values()
                for r in results
            ),
            3,
        )
        if rounds
        else 0.0,
        "cpu_s_mean": cpu_mean,
        "cpu_us_mean": cpu_us,
        "statements": statement_summary(engine_rounds["postgres"], args.duration),
        "pgbench": pgbench,
        "profiles": profiles,
        "environment": env,
    }


def render(data: dict[str, Any]) -> str:
    env, m = data["environment"], data["median"]
    lines = [
        f"machine: {env['cpu_model']}, nproc {env['nproc']}, {env['memory_kib'] / 2**20:.1f} GiB, "
        f"Python {env['python']}, {env['wrk']}",
        f"PostgreSQL: {env['postgres'].split(' on ')[0]}, fsync={env['postgres_fsync']}; "
        f"state on {env['tmp_fs']}",
        f"load: {data['load']['wrk']}, {data['load']['connections_total']} connections in all",
        "",
        f"{'engine':<28} {'acked/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f"   (median of {len(data['rounds'])} rounds)",
        f"{'sqlite, 1 replica':<28} {m['sqlite']['acked_per_s']:>9,.0f} {m['sqlite']['p50_ms']:>8.2f} "
        f"{m['sqlite']['p99_ms']:>8.2f}",
        f"{'postgres, ' + str(data['load']['replicas']) + ' replica(s)':<28} "
        f"{m['postgres']['acked_per_s']:>9,.0f} {m['postgres']['p50_ms']:>8.2f} "
        f"{m['postgres']['p99_ms']:>8.2f}",
    ]
    if m["pgbench_tps"] is not None:
        lines.append(f"{'pgbench one-row INSERT':<28} {m['pgbench_tps']:>9,.0f}   (commits/s, same clients)")
    lines += [
        "",
        f"ratio postgres/sqlite: {data['ratio']:.2f} (rounds {data['ratio_range'][0]:.2f}-"
        f"{data['ratio_range'][1]:.2f}); goal >= {data['goal']['ratio']}: "
        f"{'met' if data['meets_ratio'] else 'NOT met'}",
        f"postgres ack p99: {m['postgres']['p99_ms']:.1f} ms; goal <= {data['goal']['p99_ms']:g} ms: "
        f"{'met' if data['meets_p99'] else 'NOT met'}",
        f"non-2xx answers: {data['non_2xx']}; socket errors: {data['socket_errors']}; postgres stored a "
        f"row for every acked turn: {'yes' if data['every_ack_stored'] else 'NO'}",
        f"other processes on the machine (not this bench's) used {data['other_share']:.0%} of its CPU "
        "during the wrk runs" + (": a shared machine, expect noise" if data["other_share"] > 0.05 else ""),
        "",
        "rounds:",
    ]
    for n, r in enumerate(data["rounds"], 1):
        s, p = r["sqlite"], r["postgres"]
        bench = (
            f", pgbench {r['pgbench']['tps']:,.0f}/s ({r['pgbench']['server_cpu_us_per_commit']:g} us "
            "server CPU a commit)"
            if r["pgbench"]
            else ""
        )
        lines.append(
            f"  {n}: sqlite {s['acked_per_s']:,.0f}/s (p99 {s['latency_ms']['p99']} ms), "
            f"postgres {p['acked_per_s']:,.0f}/s (p99 {p['latency_ms']['p99']} ms; per wrk "
            f"{' + '.join(f'{v:,.0f}' for v in p['per_wrk_acked_per_s'])}) = {r['ratio']:.2f}x{bench}; "
            f"inbox rows inserted {p['inbox_rows_inserted']:,} for {p['acked']:,} acked + the announcements; "
            f"turn spans exported by wrk's end: sqlite {s['exported_turn_spans_by_wrk_end']:,}, "
            f"postgres {p['exported_turn_spans_by_wrk_end']:,}"
        )
        if p["postgres_during_wrk"]:
            w = p["postgres_during_wrk"]
            lines.append(
                f"     postgres during wrk: {w['commits_per_s']:,.0f} commits/s in the database, "
                f"{w['wal_flushes_per_s']:,.0f} WAL flushes/s (mean {w['wal_flush_mean_ms']} ms), "
                f"{w['wal_records_per_s']:,.0f} WAL records/s"
            )
    lines += [
        "",
        "CPU during a wrk run, us per acked webhook (mean of the rounds), and the machine's share busy:",
    ]
    for engine, cpu in data["cpu_us_mean"].items():
        share = data["cpu_s_mean"][engine]
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in cpu.items())
        lines.append(
            f"  {engine}: {parts}; all {sum(cpu.values()):,.0f} us; machine busy "
            f"{share.get('machine busy share', 0.0):.0%}, "
            f"stolen {share.get('machine stolen share', 0.0):.0%}"
        )
    if data["statements"]:
        lines += [
            "",
            "pg_stat_statements of the postgres rounds, by total time (calls per second of wrk, mean "
            "execution ms, rows per call, execution time / wrk time; COMMIT's WAL flush is not in it):",
        ]
        for s in data["statements"]:
            lines.append(
                f"  {s['calls_per_s']:>9,.1f} calls/s {s['mean_ms']:>8.3f} ms {s['rows_per_call']:>7.1f} rows"
                f"  {s['time_share_of_wrk_run']:>6.1%}  {s['query']}"
            )
    for name, profile in data["profiles"].items():
        lines += [
            "",
            f"py-spy --gil of replica 0's webhook process, {name}: {profile['samples']} samples, "
            f"GIL held {profile['gil_busy']:.0%}",
        ]
        for title in ("areas", "self"):
            lines.append(f"  {title}:")
            lines += [f"    {share:5.1f}%  {fn}" for fn, share in profile[title][:10]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Everything on 127.0.0.1; every load run stops by itself after --duration s.",
    )
    parser.add_argument(
        "-c",
        "--connections",
        type=int,
        default=32,
        help="wrk connections in all, split over 2 wrk (default 32)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        choices=(1, 2),
        default=2,
        help="replicas on PostgreSQL (default 2; 1 is a diagnostic: the engine without a second process)",
    )
    parser.add_argument("-t", "--threads", type=int, default=1, help="threads of each wrk (default 1)")
    parser.add_argument("-d", "--duration", type=int, default=10, help="seconds of each wrk run (default 10)")
    parser.add_argument("--timeout", type=int, default=10, help="wrk request timeout, s (default 10)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved sqlite/postgres/pgbench rounds (default 3)"
    )
    parser.add_argument("--calls", type=int, default=1000, help="calls the turns spread over (default 1000)")
    parser.add_argument(
        "--pgbench-duration",
        type=int,
        default=10,
        help="seconds of each pgbench run; 0 skips it (default 10)",
    )
    parser.add_argument(
        "--pg-fsync",
        choices=("on", "off"),
        default="on",
        help="PostgreSQL's fsync (default on, durable like SQLite's synchronous=FULL; the tests use off)",
    )
    parser.add_argument(
        "--no-statements",
        dest="statements",
        action="store_false",
        help="do not load pg_stat_statements into the server",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy --gil of one webhook process during each wrk run"
    )
    parser.add_argument("--start-timeout", type=float, default=60, help="longest wait for a replica, s")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=15,
        help="start no new round after this many minutes (default 15)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.connections < len(LANES) or args.connections % len(LANES):
        parser.error("--connections must be an even number >= 2 (half for each wrk)")
    if args.connections // len(LANES) < args.threads:
        parser.error("each wrk needs at least as many connections as threads")
    if not 1 <= args.duration <= 600 or not 1 <= args.rounds <= 20:
        parser.error("--duration 1-600 s and --rounds 1-20")
    if args.calls < len(LANES):
        parser.error("--calls must be >= 2")
    data = run(args)
    print(json.dumps(data, indent=2) if args.json else render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
