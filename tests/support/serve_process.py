"""A real ``otelbridge serve`` subprocess for end-to-end tests, plus the sample webhook stream.

:class:`ServeProcess` runs ``python -m otelbridge serve`` (or any other subcommand) with an
environment built from scratch: the test process's ``OTELBRIDGE_*`` and ``OTEL_*`` variables
are removed first, so a developer's shell cannot change what a test sees. The listener and
admin ports are picked free on 127.0.0.1; stdout and stderr go to files (never to a pipe
nobody reads: a daemon logging a retry storm would block on a full pipe), so that a test can
read them at any time, including after a ``kill -9``.

The child is started with ``cwd`` set to the test's own directory, so a relative
``OTELBRIDGE_STATE_DIR`` (or the default ``otelbridge-state``) never lands in the repository.
:meth:`ServeProcess.close` kills whatever is still running; tests call it from a fixture's
teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from otelbridge.cartesia.webhooks import parse_webhook_event
from otelbridge.ingest.assembly import CallAssembler
from otelbridge.mapping import map_call
from tests.support.samples import WEBHOOKS

WEBHOOK_PATH = "/webhooks/cartesia"
SECRET_HEADER = "X-Webhook-Secret"


# --- the sample stream ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook delivery of the sample stream: its position, raw body and call."""

    index: int
    body: bytes
    event: dict[str, Any]
    call_id: str


def sample_deliveries(path: Path = WEBHOOKS) -> list[Delivery]:
    deliveries: list[Delivery] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        call_id = parse_webhook_event(event).resolved_call_id
        assert call_id is not None
        deliveries.append(Delivery(len(deliveries), line.encode(), event, call_id))
    return deliveries


def expected_span_ids(events: Iterable[Mapping[str, Any]]) -> set[str]:
    """The span ids (lower-case hex) the whole stream maps to, each call assembled from all its
    events: what ``replay`` would export (as ``_expected_span_ids`` in tests/ingest)."""
    assembler = CallAssembler()
    for event in events:
        assembler.add(parse_webhook_event(dict(event)))
    ids = set()
    for built in assembler.calls():
        for span in map_call(built.call, fallback_end_ns=built.fallback_end_ns).spans:
            ids.add(span.span_id.to_bytes(8, "big").hex())
    return ids


# --- environment ------------------------------------------------------------------------------
def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (bound to 0, read back, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without any ``OTELBRIDGE_*``/``OTEL_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("OTELBRIDGE_", "OTEL_"))}
    env.update(extra or {})
    return env


def serve_env(
    state_dir: Path | None,
    listen_port: int,
    admin_port: int,
    secret: str,
    receiver: Mapping[str, str],
    extra: Mapping[str, str | None] | None = None,
    *,
    metric_interval_ms: int = 1000,
    fast_retries: bool = True,
) -> dict[str, str]:
    """The complete environment of a test ``otelbridge serve`` (over :func:`clean_env`): its
    state directory (``None``: unset), ports and secret, a metric export interval in ms, the
    receiver's ``OTEL_*`` variables, retry backoffs short enough for a test (``fast_retries``),
    then ``extra``, where ``None`` removes a variable."""
    values: dict[str, str | None] = {
        "OTELBRIDGE_STATE_DIR": str(state_dir) if state_dir is not None else None,
        "OTELBRIDGE_LISTEN_PORT": str(listen_port),
        "OTELBRIDGE_ADMIN_PORT": str(admin_port),
        "OTELBRIDGE_WEBHOOK_SECRET": secret,
        "OTEL_METRIC_EXPORT_INTERVAL": str(metric_interval_ms),
        **receiver,
    }
    if fast_retries:
        values |= {"OTELBRIDGE_RETRY_INITIAL_BACKOFF": "0.05", "OTELBRIDGE_RETRY_MAX_BACKOFF": "0.3"}
    values |= extra or {}
    return clean_env({k: v for k, v in values.items() if v is not None})


def run_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m otelbridge ARGS`` to completion (``check``, or a ``serve`` that must not
    start), capturing its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "otelbridge", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- the daemon -------------------------------------------------------------------------------
class ServeProcess:
    """``python -m otelbridge serve`` in a subprocess; see the module docstring.

    ``env`` is the complete environment (build it with :func:`clean_env`). ``listen_port`` and
    ``admin_port`` are where the test expects the listeners (they are not set in ``env`` by
    this class)."""

    _counter = 0
    _counter_lock = threading.Lock()

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str],
        *,
        listen_port: int,
        admin_port: int,
        args: Sequence[str] = (),
        command: str = "serve",
    ) -> None:
        with ServeProcess._counter_lock:
            ServeProcess._counter += 1
            number = ServeProcess._counter
        self.workdir = workdir
        self.env = dict(env)
        self.listen_port = listen_port
        self.admin_port = admin_port
        self.argv = [sys.executable, "-m", "otelbridge", command, *args]
        self.stdout_path = workdir / f"{command}-{number}.stdout"
        self.stderr_path = workdir / f"{command}-{number}.stderr"
        self._files: list[IO[bytes]] = []
        self.proc: subprocess.Popen[bytes] | None = None

    # --- where ----------------------------------------------------------------------------
    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}{WEBHOOK_PATH}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> ServeProcess:
        assert self.proc is None, "already started"
        stdout = self.stdout_path.open("wb")
        stderr = self.stderr_path.open("wb")
        self._files = [stdout, stderr]
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.workdir,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: see signal_group
        )
        return self

    def wait_ready(self, timeout: float = 15.0) -> ServeProcess:
        """Poll ``GET /readyz`` until it answers 200; fail with the daemon's stderr otherwise."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"otelbridge serve exited with {self.proc.returncode} before it was ready; "
                        f"stderr:\n{self.stderr}"
                    )
                try:
                    response = client.get(f"{self.admin_url}/readyz")
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 200:
                        return self
                    last = f"{response.status_code}: {response.text}"
                time.sleep(0.05)
        raise AssertionError(
            f"otelbridge serve not ready within {timeout:g}s (last: {last}); stderr:\n{self.stderr}"
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> int:
        """``kill -9``: no shutdown code runs. Returns once the process is gone."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM: the daemon's graceful shutdown (use :meth:`wait` for its exit code)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def signal_group(self, signum: int) -> None:
        """``signum`` to every process of the daemon's group, as Ctrl-C in a terminal or a
        systemd stop (``KillMode=control-group``) delivers it: the pipeline process gets it too."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        """The exit code; fails (with stderr) if the process is still running after ``timeout``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"otelbridge serve still running {timeout:g}s later; stderr:\n{self.stderr}"
            ) from None

    def close(self) -> None:
        """Kill the process if it still runs and close the output files (fixture teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for f in self._files:
            f.close()
        self._files = []

    # --- output ---------------------------------------------------------------------------
    @property
    def stderr(self) -> str:
        return (
            self.stderr_path.read_text(encoding="utf-8", errors="replace")
            if self.stderr_path.exists()
            else ""
        )

    @property
    def stdout(self) -> str:
        return (
            self.stdout_path.read_text(encoding="utf-8", errors="replace")
            if self.stdout_path.exists()
            else ""
        )


# --- posting webhooks -------------------------------------------------------------------------
def post_webhook(client: httpx.Client, url: str, body: bytes, secret: str | None) -> int | None:
    """POST one delivery; the status code, or ``None`` when no answer came (connection refused
    or reset: the daemon is down)."""
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    try:
        return client.post(url, content=body, headers=headers).status_code
    except httpx.TransportError:
        return None


class Poster:
    """Post deliveries from several threads at once, as Cartesia would: each call's events in
    order on one thread, the calls spread over ``threads`` threads (so calls interleave).

    ``acked`` holds the indices of the deliveries answered 2xx (durably stored); ``answers``
    every status seen (``None`` for no answer). ``reached(n)`` is set once ``n`` acks are in."""

    def __init__(self, url: str, secret: str | None, *, threads: int = 4, pace_s: float = 0.0) -> None:
        """``pace_s``: pause after each post in a thread (a stream that takes a while, so a
        ``kill -9`` can land in the middle of it)."""
        self.url, self.secret, self.threads, self.pace_s = url, secret, threads, pace_s
        self.acked: set[int] = set()
        self.answers: dict[int, int | None] = {}
        self._lock = threading.Lock()
        self._marks: list[tuple[int, threading.Event]] = []

    def reached(self, count: int) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._marks.append((count, event))
            if len(self.acked) >= count:
                event.set()
        return event

    def post_all(self, deliveries: Sequence[Delivery]) -> None:
        """Post every delivery (returns when every thread is done)."""
        lanes: list[list[Delivery]] = [[] for _ in range(self.threads)]
        calls: dict[str, int] = {}
        for d in deliveries:
            lane = calls.setdefault(d.call_id, len(calls) % self.threads)
            lanes[lane].append(d)
        workers = [threading.Thread(target=self._lane, args=(lane,)) for lane in lanes if lane]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)

    def start(self, deliveries: Sequence[Delivery]) -> threading.Thread:
        """:meth:`post_all` in the background."""
        thread = threading.Thread(target=self.post_all, args=(list(deliveries),))
        thread.start()
        return thread

    def _lane(self, lane: list[Delivery]) -> None:
        with httpx.Client(timeout=10.0) as client:
            for d in lane:
                status = post_webhook(client, self.url, d.body, self.secret)
                with self._lock:
                    self.answers[d.index] = status
                    if status is not None and 200 <= status < 300:
                        self.acked.add(d.index)
                    for count, event in self._marks:
                        if len(self.acked) >= count:
                            event.set()
                if self.pace_s:
                    time.sleep(self.pace_s)
