"""Debian's ``prometheus`` and ``promtool`` for the tests of the shipped alert rules and Grafana
dashboard (``pytest -m prometheus tests/deploy``).

:class:`PrometheusProcess` runs a real Prometheus on 127.0.0.1 (free port, storage in a temporary
directory, a generated configuration with 1 s scrape and evaluation intervals) and reads its HTTP
API. :func:`stack` is the session fixture the e2e and dashboard tests share, so that one
Prometheus and one ``otelbridge serve`` start per session: the daemon exports to an
:class:`HttpOtlpReceiver`, Prometheus scrapes its admin port with the shipped rule files loaded
(the alerts and the default SLOs' recording rules and alerts), and
the sample webhook stream (examples/webhooks.jsonl) plus one synthetic call with a string
LogMetric (the samples have none) have been posted and scraped when the fixture returns.

:func:`synthetic_call` builds the webhook bodies of a call with chosen TTFBs, in the shapes of the
samples' ``call_started`` / ``call_turn`` / ``call_completed`` events, timed to end now.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import pytest

from otelbridge.cartesia.webhooks import parse_webhook_event
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.serve_process import (
    Delivery,
    Poster,
    ServeProcess,
    free_port,
    post_webhook,
    sample_deliveries,
    serve_env,
)

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "otelbridge.rules.yaml"
#: the default SLOs' recording rules and burn-rate alerts, as the Helm chart renders them
SLO_RULES = REPO / "deploy" / "prometheus" / "otelbridge.slo.rules.yaml"
RULE_TESTS = sorted((REPO / "deploy" / "prometheus" / "tests").glob("*.yaml"))
DASHBOARD = REPO / "deploy" / "grafana" / "otelbridge-dashboard.json"
#: the scrape job's name: the rules' "daemon down" alerts match jobs named like this
JOB = "otelbridge"
SECRET = "whsec_prometheus_e2e_Z8kQ3vN1"
#: a sample agent; a synthetic call of it adds what the samples lack (a string LogMetric)
SAMPLE_AGENT = "agent_C3J27XDCG2LmlZGEONYlgC"
STRING_LOG_METRIC = ("call_outcome", "booked")
READY_TIMEOUT_S = 30.0

T = TypeVar("T")


def binary(name: str) -> str:
    """The path of a Prometheus tool; fails (not skips) when missing: these tests run only when
    asked for (``-m prometheus``), and then they must run."""
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).is_file():
        pytest.fail(f"{name} not found: install Debian's prometheus package", pytrace=False)
    return path


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call ``probe`` until it returns something not None (then return that) or fail after
    ``timeout`` seconds saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def alert_expr(name: str, rules_text: str | None = None) -> str:
    """The ``expr`` of alert ``name`` in the shipped rule file (read as text: the rule file is
    ours and regular, and the test extra has no YAML parser)."""
    text = RULES.read_text(encoding="utf-8") if rules_text is None else rules_text
    match = re.search(rf"- alert: {re.escape(name)}\n(.*?)(?=\n\s*- alert: |\Z)", text, re.S)
    assert match is not None, f"alert {name} not in {RULES}"
    expr = re.search(r"expr: (?:\|\n)?(.*?)\n\s*(?:for|labels):", match.group(1), re.S)
    assert expr is not None, f"no expr for {name}"
    return " ".join(expr.group(1).split())


# --- Prometheus -------------------------------------------------------------------------------
class PrometheusProcess:
    """A real ``prometheus`` server scraping ``targets`` (host:port) as job :data:`JOB`, with
    ``rule_files`` loaded, everything under ``workdir``; see the module docstring."""

    def __init__(
        self, workdir: Path, targets: Sequence[str], rule_files: Sequence[Path], interval_s: int = 1
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config_path = workdir / "prometheus.yml"
        config = {  # JSON is YAML: no YAML writer needed
            "global": {
                "scrape_interval": f"{interval_s}s",
                "scrape_timeout": f"{interval_s}s",
                "evaluation_interval": f"{interval_s}s",
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
        }
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.log_path = workdir / "prometheus.log"
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10.0)

    def start(self) -> PrometheusProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> PrometheusProcess:
        def ready() -> bool | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log}")
            try:
                return True if self.client.get("/-/ready").status_code == 200 else None
            except httpx.TransportError:
                return None

        wait_until(ready, timeout, "prometheus /-/ready")
        return self

    def api(self, path: str, **params: Any) -> Any:
        """``GET /api/v1/{path}``; the ``data`` of a ``success`` answer, else an AssertionError
        with Prometheus' error (a PromQL syntax error, say)."""
        response = self.client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {response.status_code} {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at now: the result as a list of ``{metric, value}`` (a scalar result
        becomes one element without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def evaluated_after(self, moment: datetime, rounds: int = 2, timeout: float = 15.0) -> None:
        """Wait until every rule group has been evaluated ``rounds`` times after ``moment``
        (evaluation interval = scrape interval here), so an alert state read next reflects data
        scraped before ``moment``."""
        deadline = moment + timedelta(seconds=rounds)

        def done() -> bool | None:
            groups = self.rule_groups()
            last = [datetime.fromisoformat(g["lastEvaluation"].replace("Z", "+00:00")) for g in groups]
            return True if groups and all(t >= deadline for t in last) else None

        wait_until(done, timeout, f"{rounds} rule evaluations after {moment.isoformat()}")

    def close(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


def scalar(result: list[dict[str, Any]]) -> float:
    """The value of a one-element query result (0 when empty)."""
    if not result:
        return 0.0
    assert len(result) == 1, result
    return float(result[0]["value"][1])


# --- synthetic webhooks -----------------------------------------------------------------------
def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def synthetic_call(
    call_id: str,
    agent_id: str,
    *,
    tts_ttfb: Sequence[float] = (),
    stt_ttfb: Sequence[float] = (),
    log_metrics: Sequence[tuple[str, float | str]] = (),
    turn_s: float = 2.0,
    answers: Sequence[float] = (),
    deployment_id: str | None = None,
    interrupted: int = 0,
) -> list[bytes]:
    """The webhook bodies of one finished call that ends now: ``call_started``, one ``call_turn``
    per TTFB (the assistant turns with ``tts_ttfb``, then the user turns with ``stt_ttfb``, each
    ``turn_s`` long), then per value of ``answers`` a caller's turn and the assistant turn that
    answers it that many seconds after its end (its response latency), and ``call_completed``
    with the whole transcript and ``log_metrics`` as system items, in the shapes of
    examples/webhooks.jsonl. The first ``interrupted`` assistant turns were cut off by the caller
    (``end_reason`` ``interrupted``, ``was_interrupted``: a barge-in). Every body is checked against
    the daemon's own webhook model."""
    turns: list[dict[str, Any]] = []
    offset = 0.5
    for role, key, values in (("assistant", "tts_ttfb", tts_ttfb), ("user", "stt_ttfb", stt_ttfb)):
        for value in values:
            turn: dict[str, Any] = {
                "role": role,
                "text": "Thanks, one moment." if role == "assistant" else "Yes, please.",
                "start_timestamp": round(offset, 6),
                "end_timestamp": round(offset + turn_s - 0.1, 6),
                "text_chunks": [{"text": "Thanks ", "start_timestamp": round(offset + value, 6)}],
                key: value,
            }
            if role == "assistant":
                cut = sum(1 for t in turns if t["role"] == "assistant") < interrupted
                turn["end_reason"] = "interrupted" if cut else "tts_completed"
                turn["was_interrupted"] = cut
            else:
                turn["vad_buffer_ms"] = 200
            turns.append(turn)
            offset += turn_s
    assert interrupted <= len(tts_ttfb), "only the turns of tts_ttfb can be interrupted"
    for latency in answers:
        user_end = round(offset + turn_s - 0.1, 6)
        turns.append({"role": "user", "text": "Where is my order?", "start_timestamp": round(offset, 6),
                      "end_timestamp": user_end, "stt_ttfb": 0.1, "vad_buffer_ms": 200})  # fmt: skip
        answer_at = round(user_end + latency, 6)
        turns.append({"role": "assistant", "text": "It ships today.", "start_timestamp": answer_at,
                      "end_timestamp": round(answer_at + turn_s - 0.1, 6), "tts_ttfb": 0.2,
                      "end_reason": "tts_completed"})  # fmt: skip
        offset = answer_at + turn_s
    total = offset + 0.5
    start = datetime.now(UTC) - timedelta(seconds=total)
    system = [
        {
            "role": "system",
            "start_timestamp": round(offset, 6),
            "end_timestamp": round(offset, 6),
            "log_metric": {"name": name, "value": value, "timestamp": round(offset, 6)},
        }
        for name, value in log_metrics
    ]
    head = {"call_id": call_id, "agent_id": agent_id, "webhook_id": f"agent_webhook_{agent_id[-8:]}"}
    call = {"id": call_id, "agent_id": agent_id, "agent_name": "synthetic", "start_time": _iso(start),
            "deployment_id": deployment_id}  # fmt: skip
    events: list[dict[str, Any]] = [
        {
            "type": "call_started",
            **head,
            "timestamp": _iso(start),
            "call": {**call, "status": "started", "transcript": []},
        }
    ]
    for turn in turns:
        at = start + timedelta(seconds=turn["end_timestamp"])
        events.append({"type": "call_turn", **head, "timestamp": _iso(at), "turn": turn})
    end = start + timedelta(seconds=total)
    events.append(
        {
            "type": "call_completed",
            **head,
            "timestamp": _iso(end),
            "call": {
                **call,
                "end_time": _iso(end),
                "status": "completed",
                "end_reason": "agent_hangup",
                "transcript": turns + system,
            },
        }
    )
    for event in events:
        parse_webhook_event(event)  # a shape error here is the test's, not the daemon's
    return [json.dumps(event).encode() for event in events]


# --- the shared stack -------------------------------------------------------------------------
@dataclass
class Stack:
    """One ``otelbridge serve`` exporting to ``receiver``, scraped by ``prometheus`` with the
    shipped rules loaded."""

    workdir: Path
    receiver: HttpOtlpReceiver
    serve: ServeProcess
    prometheus: PrometheusProcess
    posted: int = 0  # webhooks acknowledged so far

    def post(self, bodies: Sequence[bytes]) -> None:
        """Post bodies one after another (one call's events in order); each must be accepted."""
        with httpx.Client(timeout=10.0) as client:
            for body in bodies:
                status = post_webhook(client, self.serve.webhook_url, body, SECRET)
                assert status in {200, 202}, f"webhook answered {status}:\n{self.serve.stderr}"
                self.posted += 1

    def post_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        poster = Poster(self.serve.webhook_url, SECRET, threads=4)
        poster.post_all(deliveries)
        refused = {i: s for i, s in poster.answers.items() if i not in poster.acked}
        assert not refused, f"refused deliveries {refused}:\n{self.serve.stderr}"
        self.posted += len(deliveries)

    def wait_scraped(self, timeout: float = 30.0) -> None:
        """Wait until Prometheus has scraped the processing of every webhook posted so far."""

        def processed() -> bool | None:
            done = scalar(self.prometheus.query(f'sum(otelbridge_events_total{{job="{JOB}"}})'))
            return True if done >= self.posted else None

        wait_until(processed, timeout, f"{self.posted} processed events scraped by prometheus")


def _start_stack(workdir: Path) -> Generator[Stack, None, None]:
    with HttpOtlpReceiver() as receiver:
        listen_port, admin_port = free_port(), free_port()
        env = serve_env(workdir / "state", listen_port, admin_port, SECRET, receiver.env())
        serve = ServeProcess(workdir, env, listen_port=listen_port, admin_port=admin_port)
        prometheus = PrometheusProcess(workdir, [f"127.0.0.1:{admin_port}"], [RULES, SLO_RULES])
        try:
            serve.start()
            prometheus.start()
            serve.wait_ready(READY_TIMEOUT_S)
            prometheus.wait_ready()
            stack = Stack(workdir, receiver, serve, prometheus)
            wait_until(
                lambda: True if scalar(prometheus.query(f'up{{job="{JOB}"}}')) == 1 else None,
                READY_TIMEOUT_S,
                "prometheus to scrape otelbridge",
            )
            feed_samples(stack)
            # the SLO recording rules (and the alerts reading them) have seen the samples
            prometheus.evaluated_after(datetime.now(UTC))
            yield stack
        finally:
            prometheus.close()
            serve.close()


def feed_samples(stack: Stack) -> None:
    """The sample stream in two halves (by call), each scraped before the next, then one synthetic
    call of :data:`SAMPLE_AGENT` with every numeric LogMetric of the samples and a string one:
    series born in one step grow in the next, so the dashboard's rates and quantiles have values
    (a series that first appears with its total has no increase in Prometheus' eyes)."""
    deliveries = sample_deliveries()
    calls = list(dict.fromkeys(d.call_id for d in deliveries))
    first = set(calls[: len(calls) // 2])
    stack.post_deliveries([d for d in deliveries if d.call_id in first])
    stack.wait_scraped()
    stack.post_deliveries([d for d in deliveries if d.call_id not in first])
    stack.wait_scraped()
    numeric = sorted(
        {
            item["log_metric"]["name"]
            for d in deliveries
            for item in (d.event.get("call") or {}).get("transcript", [])
            if isinstance((item.get("log_metric") or {}).get("value"), int | float)
        }
    )
    assert numeric, "the samples have no numeric LogMetric"
    stack.post(
        synthetic_call(
            "ac_sid_DashboardExtras000000001",
            SAMPLE_AGENT,
            tts_ttfb=[0.2],
            stt_ttfb=[0.1],
            log_metrics=[STRING_LOG_METRIC, *[(name, 250.0) for name in numeric]],
        )
    )
    stack.wait_scraped()


_STASH = pytest.StashKey[Stack]()


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Stack:
    """The shared :class:`Stack`, started once per session. Test modules import this fixture,
    which gives each module a fixture of its own: the config stash makes them share one stack,
    stopped at the end of the session."""
    existing = request.config.stash.get(_STASH, None)
    if existing is not None:
        return existing
    workdir = Path(tempfile.mkdtemp(prefix="otelbridge-prometheus-"))
    running = _start_stack(workdir)
    try:
        started = next(running)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise

    def stop() -> None:
        running.close()  # runs the generator's finally: prometheus and serve stopped
        shutil.rmtree(workdir, ignore_errors=True)

    request.session.config.add_cleanup(stop)
    request.config.stash[_STASH] = started
    return started
