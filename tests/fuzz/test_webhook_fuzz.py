"""Fuzzing the webhook endpoint of a real ``otelbridge serve`` over real HTTP (issue 12).

One daemon for the module (fresh state directory, exporting to a real OTLP/HTTP receiver,
``OTELBRIDGE_MAX_BODY_BYTES`` = 256 KiB so that the 413 boundary is cheap); Hypothesis draws
requests (tests/fuzz/strategies.py) and posts them over one keep-alive client. Every answer
must be one of docs/webhooks.md's statuses and below 500, JSON, in the documented shape, and among the
statuses allowed for what was sent (a 422 names the field that was made wrong). After each
test's examples, the daemon must still be whole:

* every event answered ``accepted`` was processed: the pipeline's ``otelbridge_events_total``
  reaches the number of ``accepted`` answers, with ``otelbridge_processing_errors_total`` at 0,
  and the daemon counted every request exactly once in ``otelbridge_webhooks_total``;
* a whole sample call, sent under a fresh call id, is accepted and every span it maps to
  reaches the OTLP receiver;
* no ``Traceback`` and no ERROR line in the log, the pipeline process is the one that started
  (never restarted), ``/readyz`` answers 200, and both processes' RSS stays under
  :data:`MAX_RSS_BYTES`.

Two profiles: ``fast`` (the default run: 250 examples in all, derandomized so that the default
run is the same every time) and ``slow`` (10,000 examples, a fresh random seed per run, marked
``fuzz``: ``pytest -m fuzz``). A failure prints the request (bytes, headers, allowed statuses)
and, in the slow profile, the blob that reproduces it (``@reproduce_failure``).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic_core import from_json

from otelbridge.cartesia.errors import field_path
from otelbridge.cartesia.models import (
    AgentCall,
    LogEvent,
    LogMetric,
    TelephonyParams,
    TextChunk,
    ToolCall,
    TranscriptItem,
)
from otelbridge.cartesia.webhooks import WebhookEvent, parse_webhook_event
from tests.fuzz.strategies import (
    ENVELOPE_RULES,
    HOSTILE_KINDS,
    MAX_BODY_BYTES,
    NEAR_VALID_KINDS,
    SAMPLES,
    VALID_KINDS,
    Request,
    expected_statuses,
    field_paths,
    header_requests,
    hostile_requests,
    model_fields,
    near_valid_requests,
    nested_models,
    valid_requests,
)
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.serve_process import (
    SECRET_HEADER,
    ServeProcess,
    expected_span_ids,
    free_port,
    sample_deliveries,
    serve_env,
)

SECRET: Final = "whsec_fuzz_3Jq8RtV2mL6pZ9sW"
WRONG_SECRET: Final = "whsec_fuzz_not_it_Xc4Hy7Kd"
#: every status docs/webhooks.md's table lists for POST /webhooks/cartesia, with the ``error`` code of its
#: JSON answer (503 is documented too, but a daemon with a healthy disk must never need it)
ERROR_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
}
DOCUMENTED: Final = frozenset({200, *ERROR_CODES})
#: RSS bound for each of the two processes (the webhook process and the pipeline)
MAX_RSS_BYTES: Final = 300 * 1024 * 1024
#: requests between two samples of the processes' RSS
RSS_EVERY: Final = 100
#: requests between two clearings of what the OTLP receiver holds
CLEAR_EVERY: Final = 500
#: time for the pipeline (lowest CPU priority) to catch up with what was accepted
CATCH_UP_TIMEOUT_S: Final = 60.0
#: the sample call the health check re-sends under a fresh id (ten deliveries, every type)
CANARY_CALL: Final = "ac_sid_hHWWwd2fnqLrZY8BP3xzfs"

settings.register_profile(
    "otelbridge-fuzz-fast",
    deadline=None,
    derandomize=True,  # the default run posts the same requests every time: never flaky in CI
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
settings.register_profile(
    "otelbridge-fuzz-slow",
    deadline=None,
    database=None,
    print_blob=True,  # a failure found by a random seed prints how to reproduce it
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
#: examples per profile, shared out among the tests below
EXAMPLES: Final = {"fast": 250, "slow": 10_000}
SHARES: Final = {"valid": 0.3, "near_valid": 0.3, "hostile": 0.3, "headers": 0.1}
PROFILES: Final = [pytest.param("fast", id="fast"), pytest.param("slow", id="slow", marks=pytest.mark.fuzz)]


# --- the daemon and the client --------------------------------------------------------------------
def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _metric_sum(metrics: str, name: str, *, having: str = "") -> float:
    """The sum of every sample of ``name`` (whose labels contain ``having``) in Prometheus text."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")) and having in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _chunks(body: bytes) -> Iterator[bytes]:
    """The body in pieces of at most 8 KiB (httpx sends an iterator chunked, without a length)."""
    for start in range(0, len(body), 8192):
        yield body[start : start + 8192]


@dataclass(frozen=True, slots=True)
class Counts:
    """The daemon's own counters (``/metrics``): events processed and failed, requests counted."""

    processed: float
    errors: float
    counted: float
    acked: float


class Fuzzer:
    """Posts requests to one daemon, checks each answer, and keeps the tallies the health check
    compares with the daemon's own counters."""

    def __init__(self, serve: ServeProcess, receiver: HttpOtlpReceiver) -> None:
        self.serve = serve
        self.receiver = receiver
        self.client = httpx.Client(timeout=30.0)
        self.posted = 0
        self.accepted = 0
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.max_rss = {"serve": 0, "pipeline": 0}
        self.canaries = 0
        #: processing errors and log characters already reported by an earlier check
        self._counts_before = Counts(0.0, 0.0, 0.0, 0.0)
        self._sent_before = (0, 0)
        self._log_from = 0
        #: the start of the last accepted body of each call: the culprit of a processing error
        #: is looked up here by the call id the log names
        self.accepted_bodies: dict[str, bytes] = {}
        (self.pipeline_pid,) = _children(serve.pid)

    def close(self) -> None:
        self.client.close()

    # --- one request --------------------------------------------------------------------------
    def post(self, request: Request) -> httpx.Response:
        headers: dict[str, str] = {}
        if request.content_type is not None:
            headers["Content-Type"] = request.content_type
        if request.secret != "missing":
            headers[SECRET_HEADER] = SECRET if request.secret == "right" else WRONG_SECRET
        content = _chunks(request.body) if request.chunked else request.body
        self.posted += 1
        return self.client.post(self.serve.webhook_url, content=content, headers=headers)

    def send(self, request: Request) -> int:
        """Post ``request`` and check the answer (counted before anything is asserted); the status."""
        response = self.post(request)
        status = response.status_code
        self.statuses[(_family(request), status)] += 1
        if self.posted % RSS_EVERY == 0:
            self._sample_rss()
        if status == 200 and response.content == b'{"status":"accepted"}':
            self.accepted += 1
            call_id = parse_webhook_event(from_json(request.body)).resolved_call_id
            self.accepted_bodies[str(call_id)] = request.body[:3000]
        self.check_answer(request, response)
        return status

    def check_answer(self, request: Request, response: httpx.Response) -> None:
        status = response.status_code
        assert status < 500 and status in DOCUMENTED, f"{status}: {response.text[:500]}"
        assert response.headers["content-type"] == "application/json"
        data = json.loads(response.content)
        assert isinstance(data, dict)
        if status == 200:
            assert data in ({"status": "accepted"}, {"status": "ignored", "message": data.get("message")})
            if data["status"] == "ignored":
                assert isinstance(data["message"], str) and data["message"].startswith("unknown event type ")
        else:
            assert set(data) == {"error", "message"}, data
            assert data["error"] == ERROR_CODES[status], data
            message = data["message"]
            assert isinstance(message, str) and message and "\n" not in message, data
            if status == 422 and request.field is not None:
                named = field_path(request.field)
                assert named in message or message.startswith(ENVELOPE_RULES), (named, message)
        assert SECRET not in response.text and WRONG_SECRET not in response.text
        allowed, answer = expected_statuses(request)
        assert status in allowed, f"{status} not in {sorted(allowed)}: {response.text[:500]}"
        if answer is not None:
            assert data["status"] == answer, data

    # --- the daemon as a whole ----------------------------------------------------------------
    def check_healthy(self) -> None:
        """See the module docstring: accounting, a canary call end to end, log, processes,
        memory. Each check judges what happened since the previous one (counters and log), so
        that one bug fails one test, not every later one too."""
        try:
            self._check_processes()
            self._send_canary()
            self._check_processed()
            self._check_processes()
        finally:  # what was logged until now is this check's, pass or fail
            stderr = self.serve.stderr
            log, self._log_from = stderr[self._log_from :], len(stderr)
        self._check_log(log)
        assert self.client.get(f"{self.serve.admin_url}/readyz").status_code == 200
        self._sample_rss()
        for name, rss in self.max_rss.items():
            assert rss < MAX_RSS_BYTES, f"{name} RSS reached {rss / 2**20:.0f} MiB"

    def _sample_rss(self) -> None:
        """The highest RSS seen of each process (sampled every :data:`RSS_EVERY` requests)."""
        for name, pid in (("serve", self.serve.pid), ("pipeline", self.pipeline_pid)):
            self.max_rss[name] = max(self.max_rss[name], _rss_bytes(pid))

    def _check_processes(self) -> None:
        """The daemon runs, and its pipeline is the process it started with (a restarted one
        would have died: its log says why)."""
        problems = self._logged_errors()
        assert self.serve.running, f"serve exited; its errors:\n{problems}"
        assert _children(self.serve.pid) == [self.pipeline_pid], f"the pipeline was restarted:\n{problems}"

    def _send_canary(self) -> None:
        """The ten deliveries of a sample call under a call id never used before: all accepted,
        and every span they map to reaches the OTLP receiver."""
        self.canaries += 1
        self.receiver.clear()  # only the canary's spans matter now (and memory stays flat)
        call_id = f"ac_fuzz_canary_{self.canaries}"
        deliveries = [d for d in sample_deliveries() if d.call_id == CANARY_CALL]
        bodies = [d.body.replace(CANARY_CALL.encode(), call_id.encode()) for d in deliveries]
        for body in bodies:
            self.send(Request("canary", body, frozenset({200}), "accepted"))
        expected = expected_span_ids(json.loads(b) for b in bodies)
        assert len(expected) >= 10
        arrived = self.receiver.wait_until(lambda: expected <= self.receiver.span_ids(), CATCH_UP_TIMEOUT_S)
        assert arrived, f"{len(expected - self.receiver.span_ids())} canary spans never arrived"

    def _counts(self) -> Counts:
        metrics = self.client.get(f"{self.serve.admin_url}/metrics").text
        return Counts(
            processed=_metric_sum(metrics, "otelbridge_events_total"),
            errors=_metric_sum(metrics, "otelbridge_processing_errors_total"),
            counted=_metric_sum(metrics, "otelbridge_webhooks_total"),
            acked=_metric_sum(metrics, "otelbridge_webhooks_total", having='outcome="accepted"'),
        )

    def _check_processed(self) -> None:
        """Since the last check: as many events processed as were answered ``accepted``, none
        failed, and every request counted once by the daemon."""
        before, (accepted, posted) = self._counts_before, self._sent_before
        accepted, posted = self.accepted - accepted, self.posted - posted
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while True:
            now = self._counts()
            done = now.processed - before.processed + now.errors - before.errors >= accepted
            if (done and now.counted - before.counted >= posted) or time.monotonic() > deadline:
                break
            self._check_processes()
            time.sleep(0.2)
        self._counts_before, self._sent_before = now, (self.accepted, self.posted)
        errors = now.errors - before.errors
        assert errors == 0, f"{errors:g} accepted events failed processing:\n{self._culprits()}"
        seen = (now.processed - before.processed, now.acked - before.acked, now.counted - before.counted)
        assert seen == (accepted, accepted, posted), (
            f"processed, acked, counted {seen} for {accepted} accepted of {posted} requests; "
            f"errors logged meanwhile:\n{self._logged_errors()}"
        )

    def _logged_errors(self) -> str:
        return "\n".join(line for line in self.serve.stderr[self._log_from :].split("\n") if _is_error(line))[
            :5000
        ]

    def _check_log(self, log: str) -> None:
        """No traceback and no ERROR line in ``log`` (what the daemon logged since the last check)."""
        bad = [line for line in log.split("\n") if _is_error(line)]
        assert "Traceback" not in log and not bad, (
            "\n".join(bad[:10])[:5000] + f"\nculprits:\n{self._culprits()}"
        )

    def _culprits(self, limit: int = 3) -> str:
        """The accepted bodies of the calls the log names as not processed (shortened)."""
        named = re.findall(r"call (.+?): \w+ event could not be processed", self.serve.stderr)
        found = [self.accepted_bodies[c].decode(errors="replace") for c in named if c in self.accepted_bodies]
        return "\n".join(found[:limit]) or f"(no accepted body found for {sorted(set(named))[:5]})"


def _family(request: Request) -> str:
    """``valid:current``, ``near:wrong_type``, ``hostile:deep``, ``headers:wrong``…"""
    return ":".join(request.kind.split(":", 2)[:2])


def _is_error(line: str) -> bool:
    """A JSON log line at ERROR or CRITICAL (any other line is not otelbridge's)."""
    if not line.strip():
        return False
    try:
        record: Any = json.loads(line)
    except ValueError:
        return True  # not a JSON record: a crash printed by the interpreter, or worse
    return not isinstance(record, dict) or record.get("level") in ("error", "critical")


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    workdir = tmp_path_factory.mktemp("fuzz")
    with HttpOtlpReceiver() as receiver:
        listen_port, admin_port = free_port(), free_port()
        extra = {"OTELBRIDGE_MAX_BODY_BYTES": str(MAX_BODY_BYTES), "OTELBRIDGE_LOG_FORMAT": "json"}
        env = serve_env(workdir / "state", listen_port, admin_port, SECRET, receiver.env(), extra)
        serve = ServeProcess(workdir, env, listen_port=listen_port, admin_port=admin_port)
        try:
            serve.start().wait_ready(30.0)
            fuzz = Fuzzer(serve, receiver)
            try:
                yield fuzz
            finally:
                fuzz.close()
                print(  # shown with -s / -rP: what the run covered
                    f"\nfuzz: {fuzz.posted} requests, {fuzz.accepted} accepted, max RSS "
                    + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in fuzz.max_rss.items())
                    + "\n"
                    + "\n".join(f"  {k} {s}: {n}" for (k, s), n in sorted(fuzz.statuses.items()))
                )
        finally:
            serve.close()


def _fuzz(
    fuzz: Fuzzer,
    profile: str,
    share: str,
    requests: Callable[..., st.SearchStrategy[Request]],
    kinds: tuple[str, ...] = (),
) -> None:
    """Post ``share`` of the profile's examples drawn from ``requests``, the same number of each
    of ``kinds`` (passed to ``requests``; a skewed draw would leave some out of the fast run),
    then check the daemon as a whole."""
    runs: list[str | None] = list(kinds) or [None]
    examples = max(3, round(EXAMPLES[profile] * SHARES[share] / len(runs)))
    for kind in runs:

        @settings(settings.get_profile(f"otelbridge-fuzz-{profile}"), max_examples=examples)
        @given(request=requests(kind) if kind else requests())
        def post(request: Request) -> None:
            if fuzz.posted % CLEAR_EVERY == 0:
                fuzz.receiver.clear()  # what the fuzzed calls export is not checked: keep memory flat
            status = fuzz.send(request)
            event(f"{_family(request)} -> {status}")  # pytest --hypothesis-show-statistics

        post()
    fuzz.check_healthy()


# --- the properties -------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_valid_deliveries_are_accepted_or_ignored_and_processed(fuzzer: Fuzzer, profile: str) -> None:
    """Model-valid events of every type, current and legacy shape, and unknown types."""
    _fuzz(fuzzer, profile, "valid", valid_requests, VALID_KINDS)


@pytest.mark.parametrize("profile", PROFILES)
def test_one_wrong_field_is_refused_by_name_or_accepted_and_processed(fuzzer: Fuzzer, profile: str) -> None:
    """Every field of every event type (from the models): another kind, null, removed, huge
    numbers, NaN, lone surrogates, deep nesting, very long strings."""
    _fuzz(fuzzer, profile, "near_valid", near_valid_requests, NEAR_VALID_KINDS)


@pytest.mark.parametrize("profile", PROFILES)
def test_hostile_bodies_get_a_4xx_and_leave_the_daemon_whole(fuzzer: Fuzzer, profile: str) -> None:
    """Invalid UTF-8, duplicate keys, truncated, not an object, nested thousands deep, garbage,
    a byte-order mark, trailing bytes, at and over the size limit."""
    _fuzz(fuzzer, profile, "hostile", hostile_requests, HOSTILE_KINDS)


@pytest.mark.parametrize("profile", PROFILES)
def test_secret_and_content_type_come_first_whatever_the_body(fuzzer: Fuzzer, profile: str) -> None:
    """Any body above with a wrong or missing secret (401), a Content-Type that is not JSON
    (415), chunked or with a length."""
    _fuzz(fuzzer, profile, "headers", header_requests)


def test_the_near_valid_bodies_reach_every_field_of_every_model() -> None:
    """The fields a near-valid body may get wrong are read from the models: over the sample
    deliveries they are every field of WebhookEvent and of every model inside it (a model
    change that hid fields from the fuzzer, a TypedDict not recognised as one, fails here)."""
    models: list[type] = [WebhookEvent]
    for model in models:
        for annotation in model_fields(model).values():
            models += [m for m in nested_models(annotation) if m not in models]
    assert {AgentCall, TranscriptItem, TextChunk, ToolCall, LogEvent, LogMetric, TelephonyParams} <= set(
        models
    )
    every = {name for model in models for name in model_fields(model)}
    reached = {str(path[-1]) for event in SAMPLES for path in field_paths(event)}
    assert every - reached == set()
