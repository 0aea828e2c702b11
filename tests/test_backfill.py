"""End to end: a real ``python -m otelbridge backfill`` subprocess against the Cartesia stand-in
(tests/support/cartesia_api.py) and a real OTLP/HTTP receiver, with ``kill -9`` and SIGINT.

Every run gets a fresh state directory, short export retry backoffs and an environment
without any ``OTELBRIDGE_*``/``OTEL_*`` variable of the test process. ``PYTHONPATH`` points at
this checkout, so the child runs the code under test whatever ``otelbridge`` is installed.
The spans a set of calls must give are computed here, independently of the bridge:
``map_call(parse_call(raw))`` of each call the stand-in serves.

Two product constants would make two tests slow, so those two run the same CLI through
``python -c`` with a seam set first (the command line, settings and code paths are the
real ones):

* API down: the client's retry count and backoff are not settings (6 retries, 0.5 s to 30 s:
  a closed port takes 16-32 s to give up); the seam gives the client 2 fast retries. So do
  the stand-in's 503s: their ``Retry-After: 0`` is a floor under the backoff, not a wait of 0.
* backend down: backfill waits for the spool to shrink for ``STALL_S`` = 60 s before it gives
  up; the seam sets 2 s.

Kills and interrupts land while the process waits on a List Calls page the stand-in holds
back and after the receiver holds every span of the pages stored so far: a kill during an
export in flight may re-send that one request on the next run (at-least-once between the
backend's 2xx and the spool deletion; docs/architecture.md, "Nothing lost, nothing doubled"),
which a backend de-duplicates by span id but which this test would count twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from otelbridge.cartesia.models import parse_call
from otelbridge.cartesia.timestamps import parse_rfc3339_ns
from otelbridge.mapping import conventions as c
from otelbridge.mapping import map_call
from tests.support.cartesia_api import CartesiaStandIn, PageServed, make_call
from tests.support.otlp_receiver import HttpOtlpReceiver, attributes
from tests.support.serve_process import clean_env, free_port

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk_car_backfill_e2e_7Hq2Lx9Vb4"
WRONG_KEY = "sk_car_backfill_wrong_3Zk8Pw1Rt6"
LIST = "/agents/calls"
RUN_TIMEOUT_S = 30.0
#: a page held back this long is, for the test, a page that never comes (released at teardown)
HOLD_S = 60.0
#: after a SIGINT, how long the process may take to unwind
INTERRUPT_TIMEOUT_S = 15.0

#: seams for the two slow product constants (see the module docstring)
FAST_CLIENT = (
    "import functools, otelbridge.backfill as b\n"
    "b.CartesiaClient = functools.partial(b.CartesiaClient, max_retries=2, initial_backoff_s=0.05,"
    " max_backoff_s=0.1)\n"
)
SHORT_STALL = "import otelbridge.backfill as b\nb.STALL_S = 2.0\n"


# --- running the command -----------------------------------------------------------------------
class Backfills:
    """Builds the environment of ``otelbridge backfill`` and runs it, to completion or in the
    background (output to files, so a killed process's output can still be read)."""

    def __init__(self, workdir: Path, api: CartesiaStandIn, receiver: HttpOtlpReceiver) -> None:
        self.workdir, self.api, self.receiver = workdir, api, receiver
        self.state_dir = workdir / "state"
        self.background: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []
        self._runs = 0

    def env(self, **extra: str | None) -> dict[str, str]:
        """The complete environment; ``NAME=None`` removes a variable."""
        values: dict[str, str | None] = {
            "OTELBRIDGE_CARTESIA_API_KEY": API_KEY,
            "OTELBRIDGE_CARTESIA_BASE_URL": self.api.url,
            "OTELBRIDGE_STATE_DIR": str(self.state_dir),
            "OTELBRIDGE_RETRY_INITIAL_BACKOFF": "0.05",
            "OTELBRIDGE_RETRY_MAX_BACKOFF": "0.3",
            **self.receiver.env(),
            **extra,
        }
        env = clean_env({k: v for k, v in values.items() if v is not None})
        env["PYTHONPATH"] = str(ROOT) + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")
        return env

    @staticmethod
    def argv(args: Sequence[str], seam: str | None) -> list[str]:
        if seam is None:
            return [sys.executable, "-m", "otelbridge", "backfill", *args]
        code = seam + "import sys\nfrom otelbridge.cli import main\nsys.exit(main(sys.argv[1:]))\n"
        return [sys.executable, "-c", code, "backfill", *args]

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        seam: str | None = None,
        timeout: float = RUN_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args, seam),
            env=dict(env if env is not None else self.env()),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> Background:
        self._runs += 1
        out = (self.workdir / f"backfill-{self._runs}.stdout").open("wb")
        err = (self.workdir / f"backfill-{self._runs}.stderr").open("wb")
        self._files += [out, err]
        with _sigint_not_ignored():
            proc = subprocess.Popen(
                self.argv(args, None),
                env=dict(env if env is not None else self.env()),
                cwd=self.workdir,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.background.append(proc)
        return Background(proc, Path(out.name), Path(err.name))

    def close(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for f in self._files:
            f.close()

    # --- the state directory ----------------------------------------------------------------
    def query(self, db: str, sql: str) -> list[tuple[Any, ...]]:
        path = self.state_dir / db
        if not path.exists():
            return []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def inbox_rows(self) -> int:
        return int(self.query("inbox.db", "SELECT COUNT(*) FROM inbox")[0][0])

    def backfill_rows(self) -> list[tuple[Any, ...]]:
        return self.query("state.db", "SELECT agent_id, range, cursor, done, calls FROM backfill")


class Background:
    def __init__(self, proc: subprocess.Popen[bytes], stdout: Path, stderr: Path) -> None:
        self.proc, self.stdout_path, self.stderr_path = proc, stdout, stderr

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"backfill still running {timeout:g}s later; stderr:\n{self.stderr}"
            ) from None


@contextlib.contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """A child inherits an *ignored* SIGINT (e.g. a test run started in the background by a
    shell), and Python then installs no KeyboardInterrupt handler: make it default for the
    spawn, as in a terminal."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def api() -> Iterator[CartesiaStandIn]:
    with CartesiaStandIn(api_key=API_KEY) as stand_in:
        yield stand_in


@pytest.fixture
def backfills(tmp_path: Path, api: CartesiaStandIn, receiver: HttpOtlpReceiver) -> Iterator[Backfills]:
    b = Backfills(tmp_path, api, receiver)
    try:
        yield b
    finally:  # before the stand-in and the receiver stop (this fixture depends on them)
        b.close()


# --- expectations ------------------------------------------------------------------------------
def calls_of(api: CartesiaStandIn, agent_id: str) -> list[dict[str, Any]]:
    """The agent's calls as the stand-in serves them, newest first."""
    return [api.get(call_id) for call_id in api.call_ids(agent_id)]


def expected_spans(calls: Iterable[Mapping[str, Any]]) -> set[str]:
    """The span ids (lower-case hex) the calls map to."""
    return {f"{span.span_id:016x}" for raw in calls for span in map_call(parse_call(dict(raw))).spans}


def expected_latencies(calls: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Span id (hex) -> response latency, of the calls' mapping."""
    return {
        f"{span.span_id:016x}": span.attributes[c.TURN_RESPONSE_LATENCY]
        for raw in calls
        for span in map_call(parse_call(dict(raw))).spans
        if c.TURN_RESPONSE_LATENCY in span.attributes
    }


def span_counts(receiver: HttpOtlpReceiver) -> Counter[str]:
    return Counter(span.span_id.hex() for span in receiver.spans())


def assert_exactly_once(receiver: HttpOtlpReceiver, expected: set[str]) -> None:
    counts = span_counts(receiver)
    missing = expected - counts.keys()
    extra = counts.keys() - expected
    twice = {span_id: n for span_id, n in counts.items() if n > 1}
    assert not missing, f"{len(missing)} of {len(expected)} expected spans never arrived"
    assert not extra, f"{len(extra)} spans arrived that no call maps to"
    assert not twice, f"{len(twice)} spans arrived more than once: {sorted(twice.items())[:5]}"


def list_requests_by_agent(api: CartesiaStandIn) -> Counter[str]:
    return Counter(r.query.get("agent_id", "?") for r in api.requests if r.path == LIST)


def get_call_requests(api: CartesiaStandIn) -> list[str]:
    return [r.path for r in api.requests if r.path.startswith(LIST + "/")]


def hold_page(api: CartesiaStandIn, after_page: int) -> None:
    """The List Calls request after page ``after_page`` is held back (``HOLD_S``)."""

    def callback(served: PageServed) -> None:
        if served.number == after_page:
            api.hang_next(1, HOLD_S, path=LIST)

    api.on_page(callback)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: Background) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.proc.poll() is not None:
            raise AssertionError(f"backfill exited ({proc.proc.returncode}) before {what}:\n{proc.stderr}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}; stderr:\n{proc.stderr}")
        time.sleep(0.02)


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    assert API_KEY not in text
    assert WRONG_KEY not in text


# --- the happy path ----------------------------------------------------------------------------
def test_two_agents_every_span_once_with_one_list_request_per_100_calls(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    for agent in ("agent_alpha", "agent_bravo"):
        api.add_synthetic_calls(agent, 150, turns=5, deployment_id=f"dep_{agent}")
    calls = calls_of(api, "agent_alpha") + calls_of(api, "agent_bravo")
    expected = expected_spans(calls)
    assert len(expected) == 300 * 6  # a root and five turns per call

    result = backfills.run(env=backfills.env(OTELBRIDGE_AGENT_IDS="agent_alpha,agent_bravo"))

    assert result.returncode == 0, result.stderr
    assert "300 calls stored" in result.stdout, result.stdout
    assert "2 agent(s) complete" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert_exactly_once(receiver, expected)
    # the response latency of each assistant turn answering the caller, as the whole call gives it
    latencies = {
        span.span_id.hex(): attrs[c.TURN_RESPONSE_LATENCY]
        for span in receiver.spans()
        if c.TURN_RESPONSE_LATENCY in (attrs := attributes(span.attributes))
    }
    assert latencies == expected_latencies(calls) and len(latencies) == 300 * 2
    points = [
        attributes(p.attributes)
        for m in receiver.metrics_by_name()[c.METRIC_RESPONSE_LATENCY]
        for p in m.histogram.data_points
    ]
    assert {(p[c.AGENT_ID], p[c.DEPLOYMENT_ID]) for p in points} == {
        ("agent_alpha", "dep_agent_alpha"),
        ("agent_bravo", "dep_agent_bravo"),
    }
    # ceil(150 / 100) = 2 list requests per agent, 100 a page with transcripts, no Get Call for
    # final calls and no agent discovery (the agents are configured)
    assert list_requests_by_agent(api) == {"agent_alpha": 2, "agent_bravo": 2}
    assert all(r.query.get("limit") == "100" and r.query.get("expand") == "transcript" for r in api.requests)
    assert get_call_requests(api) == []
    assert sum(api.counts.values()) == 4, dict(api.counts)
    # a final call leaves nothing to re-read
    assert backfills.query("state.db", "SELECT COUNT(*) FROM running_calls") == [(0,)]


def test_rerun_of_a_finished_range_asks_one_page_per_agent_and_exports_nothing_new(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    for agent in ("agent_alpha", "agent_bravo"):
        api.add_synthetic_calls(agent, 150, turns=5)
    expected = expected_spans(calls_of(api, "agent_alpha") + calls_of(api, "agent_bravo"))
    args = ("--agent-id", "agent_alpha", "--agent-id", "agent_bravo")
    first = backfills.run(*args)
    assert first.returncode == 0, first.stderr
    assert_exactly_once(receiver, expected)
    requests_before, traces_before = sum(api.counts.values()), len(receiver.trace_requests)
    assert all(done == 1 for _, _, _, done, _ in backfills.backfill_rows()), backfills.backfill_rows()

    again = backfills.run(*args)

    assert again.returncode == 0, again.stderr
    assert "0 calls stored" in again.stdout and "2 agent(s) complete" in again.stdout, again.stdout
    assert_exactly_once(receiver, expected)
    assert len(receiver.trace_requests) == traces_before
    # the ranges are done; an open range is caught up from the top back to its mark, which
    # is the first call of the first page when nothing is new: one request per agent
    assert sum(api.counts.values()) == requests_before + 2, dict(api.counts)
    assert list_requests_by_agent(api) == {"agent_alpha": 3, "agent_bravo": 3}


def test_calls_added_mid_backfill_leave_its_paging_alone_and_the_rerun_catches_them_up(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    api.add_synthetic_calls("agent_alpha", 250, turns=3)
    before = calls_of(api, "agent_alpha")
    added: list[str] = []

    def add_while_paging(served: PageServed) -> None:
        if served.number == 1 and not added:  # newer than every call: ahead of the cursor
            added.extend(api.add_synthetic_calls("agent_alpha", 30, first_index=1000, turns=3))

    api.on_page(add_while_paging)
    first = backfills.run("--agent-id", "agent_alpha")

    assert first.returncode == 0, first.stderr
    assert "250 calls stored" in first.stdout, first.stdout
    assert_exactly_once(receiver, expected_spans(before))  # none skipped or doubled by the shift
    assert list_requests_by_agent(api) == {"agent_alpha": 3}
    everything = calls_of(api, "agent_alpha")
    assert len(added) == 30 and len(everything) == 280

    again = backfills.run("--agent-id", "agent_alpha")

    assert again.returncode == 0, again.stderr
    assert "30 calls stored" in again.stdout, again.stdout
    assert_exactly_once(receiver, expected_spans(everything))
    # one page: the 30 new calls, then the call that was newest when the first run began
    assert list_requests_by_agent(api) == {"agent_alpha": 4}
    assert api.requests[-1].query.get("starting_after") is None

    third = backfills.run("--agent-id", "agent_alpha")

    assert third.returncode == 0, third.stderr
    assert "0 calls stored" in third.stdout, third.stdout
    assert list_requests_by_agent(api) == {"agent_alpha": 5}
    assert_exactly_once(receiver, expected_spans(everything))


def test_dry_run_counts_and_stores_or_exports_nothing(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    api.add_synthetic_calls("agent_alpha", 250, turns=5)

    try:
        result = backfills.run("--agent-id", "agent_alpha", "--dry-run", timeout=10)
    except subprocess.TimeoutExpired:
        cursors = Counter(r.query.get("starting_after") for r in api.requests if r.path == LIST)
        pytest.fail(
            f"--dry-run did not finish within 10s: {api.count(LIST)} List Calls requests for 3 pages "
            f"(starting_after values: {dict(cursors.most_common(3))})"
        )

    assert result.returncode == 0, result.stderr
    assert "250 calls found" in result.stdout, result.stdout
    assert api.count(LIST) == 3
    assert receiver.requests == []  # nothing exported, not even the bridge's own metrics
    assert backfills.inbox_rows() == 0
    for table in ("calls", "ledger", "spool"):
        assert backfills.query("state.db", f"SELECT COUNT(*) FROM {table}") == [(0,)], table
    assert backfills.backfill_rows() == []  # no cursor: a real run starts from the newest call

    real = backfills.run("--agent-id", "agent_alpha")
    assert real.returncode == 0, real.stderr
    assert "250 calls stored" in real.stdout, real.stdout
    assert_exactly_once(receiver, expected_spans(calls_of(api, "agent_alpha")))


def test_since_until_exports_only_calls_started_in_the_half_open_range(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    # agent_alpha: one call a minute from 2026-03-02T09:00Z (+ a fraction of a second)
    api.add_synthetic_calls("agent_alpha", 150, turns=5)
    # agent_bravo: calls exactly on the bounds and around them
    starts = ["2026-03-01T18:00:00", "2026-03-02T00:00:00", "2026-03-02T06:00:00", "2026-03-02T10:00:00",
              "2026-03-02T12:00:00"]  # fmt: skip
    api.add_calls(
        make_call("agent_bravo", i, turns=3, start=dt.datetime.fromisoformat(s)) for i, s in enumerate(starts)
    )
    since, until = "2026-03-02", "2026-03-02T10:00:00Z"
    since_ns, until_ns = parse_rfc3339_ns("2026-03-02T00:00:00Z"), parse_rfc3339_ns(until)
    in_range = [
        raw
        for agent in ("agent_alpha", "agent_bravo")
        for raw in calls_of(api, agent)
        if since_ns <= (parse_call(raw).start_time or 0) < until_ns
    ]
    assert len(in_range) == 60 + 2  # alpha 09:00..09:59; bravo 00:00 (== since) and 06:00

    result = backfills.run("--agent-id", "agent_alpha", "--agent-id", "agent_bravo",
                           "--since", since, "--until", until)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "62 calls stored" in result.stdout, result.stdout
    assert_exactly_once(receiver, expected_spans(in_range))
    # paging stops at the first call older than --since: alpha's two pages, bravo's one
    assert list_requests_by_agent(api) == {"agent_alpha": 2, "agent_bravo": 1}

    again = backfills.run("--agent-id", "agent_alpha", "--agent-id", "agent_bravo",
                          "--since", since, "--until", until)  # fmt: skip

    # a closed range that is done has nothing left to ask
    assert again.returncode == 0 and "0 calls stored" in again.stdout, again.stdout
    assert list_requests_by_agent(api) == {"agent_alpha": 2, "agent_bravo": 1}


# --- interruptions ---------------------------------------------------------------------------
def test_kill_9_mid_backfill_then_rerun_exports_every_span_once(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    api.add_synthetic_calls("agent_alpha", 600, turns=5)  # six pages
    calls = calls_of(api, "agent_alpha")
    hold_page(api, after_page=3)
    proc = backfills.start("--agent-id", "agent_alpha")

    # the 4th request is in (so pages 1-3 are stored and their cursor saved) and the pipeline
    # has exported those 300 calls and deleted their requests: kill while the process waits for
    # page 4. (A kill between the backend's 2xx and the delete would re-send that request:
    # the crash window docs/architecture.md states, not what this test is about.)
    first_pages = expected_spans(calls[:300])
    wait_for(lambda: api.count(LIST) >= 4, 20, "the 4th List Calls request", proc)
    wait_for(
        lambda: (
            first_pages <= span_counts(receiver).keys()
            and backfills.query("state.db", "SELECT COUNT(*) FROM spool WHERE signal='traces'") == [(0,)]
        ),
        20,
        "the first 300 calls exported and out of the spool",
        proc,
    )
    proc.proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    [(_, _, cursor, done, stored)] = backfills.backfill_rows()
    assert (cursor, done, stored) == (calls[299]["id"], 0, 300)

    result = backfills.run("--agent-id", "agent_alpha")

    assert result.returncode == 0, result.stderr
    assert "300 calls stored" in result.stdout, result.stdout
    assert_exactly_once(receiver, expected_spans(calls))
    # it resumed after page 3: pages 4-6, the first asked from the saved cursor
    resumed = [r for r in api.requests if r.path == LIST][4:]
    assert [r.query.get("starting_after") for r in resumed] == [calls[299]["id"], calls[399]["id"],
                                                                calls[499]["id"]]  # fmt: skip


def test_ctrl_c_exits_130_and_the_rerun_completes(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    api.add_synthetic_calls("agent_alpha", 400, turns=5)
    calls = calls_of(api, "agent_alpha")
    hold_page(api, after_page=2)
    proc = backfills.start("--agent-id", "agent_alpha")
    wait_for(lambda: api.count(LIST) >= 3, 20, "the 3rd List Calls request", proc)
    wait_for(
        lambda: expected_spans(calls[:200]) <= span_counts(receiver).keys(), 20, "200 calls exported", proc
    )

    proc.proc.send_signal(signal.SIGINT)

    assert proc.wait(INTERRUPT_TIMEOUT_S) == 130, proc.stderr
    assert "run the same command again to resume" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    result = backfills.run("--agent-id", "agent_alpha")
    assert result.returncode == 0, result.stderr
    assert "200 calls stored" in result.stdout, result.stdout
    assert_exactly_once(receiver, expected_spans(calls))


# --- failures ----------------------------------------------------------------------------------
def test_wrong_api_key_exits_1_naming_the_401_and_the_variable(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    api.add_synthetic_calls("agent_alpha", 10, turns=3)

    result = backfills.run(
        "--agent-id", "agent_alpha", env=backfills.env(OTELBRIDGE_CARTESIA_API_KEY=WRONG_KEY)
    )

    assert result.returncode == 1, result.stderr
    assert "401" in result.stderr, result.stderr
    assert "OTELBRIDGE_CARTESIA_API_KEY" in result.stderr, result.stderr
    assert_clean_failure(result)
    assert api.count(LIST) == 1  # a 401 is not retried
    assert receiver.spans() == []


def test_api_down_closed_port_exits_1_with_a_clear_message(
    receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    env = backfills.env(OTELBRIDGE_CARTESIA_BASE_URL=f"http://127.0.0.1:{free_port()}")

    result = backfills.run("--agent-id", "agent_alpha", env=env, seam=FAST_CLIENT)

    assert result.returncode == 1, result.stderr
    assert "could not be reached" in result.stderr, result.stderr
    assert "GET /agents/calls" in result.stderr, result.stderr
    assert "run the same command again" in result.stderr, result.stderr
    assert_clean_failure(result)
    assert receiver.spans() == []


def test_api_answering_503_exits_1_after_the_retries(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    """``Retry-After: 0`` is no wait of 0 (the backoff holds): the seam's 2 fast retries."""
    api.add_synthetic_calls("agent_alpha", 10, turns=3)
    api.fail_next(50, status=503, retry_after=0, path=LIST)

    started = time.monotonic()
    result = backfills.run("--agent-id", "agent_alpha", seam=FAST_CLIENT)
    took = time.monotonic() - started

    assert result.returncode == 1, result.stderr
    assert "503" in result.stderr and "kept failing" in result.stderr, result.stderr
    assert_clean_failure(result)
    assert api.count(LIST) == 3, "one request and 2 retries"
    assert took < 15, took
    assert receiver.spans() == []
    # the API is back: the same command does the job
    api.reset()
    api.add_synthetic_calls("agent_alpha", 10, turns=3)
    again = backfills.run("--agent-id", "agent_alpha")
    assert again.returncode == 0, again.stderr
    assert_exactly_once(receiver, expected_spans(calls_of(api, "agent_alpha")))


def test_no_api_key_exits_2(api: CartesiaStandIn, backfills: Backfills) -> None:
    result = backfills.run("--agent-id", "agent_alpha", env=backfills.env(OTELBRIDGE_CARTESIA_API_KEY=None))

    assert result.returncode == 2, result.stderr
    assert "OTELBRIDGE_CARTESIA_API_KEY" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sum(api.counts.values()) == 0


def test_backend_down_exits_1_keeps_the_requests_and_the_next_run_sends_them(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    api.add_synthetic_calls("agent_alpha", 150, turns=5)
    expected = expected_spans(calls_of(api, "agent_alpha"))
    receiver.fail_next(100_000, status=503)

    result = backfills.run("--agent-id", "agent_alpha", seam=SHORT_STALL)

    assert result.returncode == 1, result.stderr
    assert "not yet accepted by the backend" in result.stderr, result.stderr
    assert str(backfills.state_dir) in result.stderr, result.stderr
    assert "next otelbridge serve or backfill" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert receiver.spans() == []
    assert any(r.path == "/v1/traces" and r.answer == 503 for r in receiver.requests)
    spooled = backfills.query("state.db", "SELECT COUNT(*) FROM spool WHERE signal = 'traces'")
    assert spooled[0][0] > 0
    list_requests = api.count(LIST)

    receiver.clear_answers()  # the backend is back
    again = backfills.run("--agent-id", "agent_alpha")

    assert again.returncode == 0, again.stderr
    assert_exactly_once(receiver, expected)
    # the calls were stored: only the catch-up page of the finished open range, meeting its mark
    assert api.count(LIST) == list_requests + 1
    assert backfills.query("state.db", "SELECT COUNT(*) FROM spool") == [(0,)]


def test_metrics_exporter_none_exports_spans_only_and_exits_0(
    api: CartesiaStandIn, receiver: HttpOtlpReceiver, backfills: Backfills
) -> None:
    api.add_synthetic_calls("agent_alpha", 20, turns=3)
    expected = expected_spans(calls_of(api, "agent_alpha"))
    env = backfills.env(OTELBRIDGE_AGENT_IDS="agent_alpha", OTEL_METRICS_EXPORTER="none")
    result = backfills.run(env=env)
    assert result.returncode == 0, result.stderr
    assert_exactly_once(receiver, expected)
    assert {r.path for r in receiver.requests} == {"/v1/traces"}
    assert backfills.query("state.db", "SELECT COUNT(*) FROM spool") == [(0,)]
    assert backfills.query("state.db", "SELECT COUNT(*) FROM dead_letters") == [(0,)]
