"""The two processes of ``otelbridge serve`` (issue 12): the pipeline dies with the webhook
process, its environment holds no secret, liveness follows the webhook side, and a port in use
has its own exit code. Real subprocesses, real sockets on 127.0.0.1, real SQLite files."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.resources import Resource

from otelbridge.admin import build_admin_app
from otelbridge.cli import EXIT_IN_USE
from otelbridge.pipeline import WEBHOOK_SILENT_NS, Pipeline
from otelbridge.settings import load_settings
from tests.support.asgi_server import UvicornThread
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.serve_process import (
    Poster,
    ServeProcess,
    clean_env,
    expected_span_ids,
    free_port,
    run_cli,
    sample_deliveries,
)

SECRET = "whsec_processes_5tQ2mN8rLw"
API_KEY = "sk_car_processes_Vb7Kp3Xz9Q"


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Some thread of ``pid`` is not a zombie yet. Every thread, not only the process's: the
    main thread is a zombie while the others still exit and hold the open files (the admin
    socket); and an orphan's zombie may wait a while for its reaper."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        with contextlib.suppress(OSError):
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
    return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def silent_backend() -> Iterator[str]:
    """An OTLP endpoint that takes connections and never answers: every export (the start-up
    probe first) is in flight until its timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class Started:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[ServeProcess] = []

    def env(self, listen: int, admin: int, extra: dict[str, str]) -> dict[str, str]:
        return clean_env(
            {
                "OTELBRIDGE_STATE_DIR": str(self.tmp_path / "state"),
                "OTELBRIDGE_LISTEN_PORT": str(listen),
                "OTELBRIDGE_ADMIN_PORT": str(admin),
                "OTELBRIDGE_WEBHOOK_SECRET": SECRET,
                **extra,
            }
        )

    def start(self, extra: dict[str, str], listen: int = 0, admin: int = 0) -> ServeProcess:
        listen, admin = listen or free_port(), admin or free_port()
        process = ServeProcess(
            self.tmp_path, self.env(listen, admin, extra), listen_port=listen, admin_port=admin
        )
        self.processes.append(process)
        return process.start().wait_ready()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    s = Started(tmp_path)
    try:
        yield s
    finally:
        for process in s.processes:
            with contextlib.suppress(OSError):  # its pipeline, if a test left one behind
                for child in _children(process.pid):
                    os.kill(child, signal.SIGKILL)
            process.close()


def _pipeline_pid(daemon: ServeProcess) -> int:
    (pid,) = _children(daemon.pid)
    return pid


def test_kill_9_of_the_webhook_process_takes_the_pipeline_down_at_once(
    started: Started, silent_backend: str
) -> None:
    """Before: the orphaned pipeline kept the admin port, answering /healthz and /readyz 200,
    while an export was in flight (up to its timeout), and a restart exited "address in use"."""
    daemon = started.start(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": silent_backend, "OTEL_EXPORTER_OTLP_TIMEOUT": "30"}
    )
    pipeline = _pipeline_pid(daemon)
    time.sleep(0.3)  # the start-up probe is in flight to the silent backend
    assert daemon.kill() == -9
    killed = time.monotonic()
    while _alive(pipeline) and time.monotonic() - killed < 5:
        time.sleep(0.02)
    gone_after = time.monotonic() - killed
    assert not _alive(pipeline), "the pipeline outlived the webhook process by 5s"
    assert gone_after < 1.0, f"the pipeline took {gone_after:.2f}s to stop"
    assert _port_free(daemon.admin_port)
    # a supervisor's restart on the same ports starts at once
    again = started.start(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": silent_backend}, daemon.listen_port, daemon.admin_port
    )
    assert again.running


def test_the_pipeline_environment_holds_no_secret(started: Started, tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY)
    daemon = started.start(
        {
            "OTELBRIDGE_CARTESIA_API_KEY_FILE": str(key_file),
            "OTELBRIDGE_POLL_INTERVAL": "0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        }
    )
    environ = Path(f"/proc/{_pipeline_pid(daemon)}/environ").read_bytes()
    names = {item.split(b"=", 1)[0].decode() for item in environ.split(b"\0") if item}
    assert SECRET.encode() not in environ and API_KEY.encode() not in environ
    assert not {n for n in names if n.startswith("OTELBRIDGE_")}, names
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in names and "PATH" in names  # what the transport needs
    # the webhook process itself still has them (it checks X-Webhook-Secret)
    assert b"OTELBRIDGE_WEBHOOK_SECRET=" in Path(f"/proc/{daemon.pid}/environ").read_bytes()


def test_a_second_serve_on_the_same_state_dir_exits_in_use(started: Started, tmp_path: Path) -> None:
    started.start({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    result = run_cli(["serve"], started.env(free_port(), free_port(), {}), tmp_path)
    # a port in use: tests/test_serve.py::test_serve_names_a_port_in_use_and_the_fix
    assert result.returncode == EXIT_IN_USE == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "in use by another otelbridge serve" in result.stderr


def test_healthz_fails_when_the_webhook_side_has_not_reported(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Liveness follows the webhook path: the pipeline alone answering /healthz 200 while no
    webhook can be taken would keep a broken daemon from being restarted."""
    settings = load_settings(None, state_dir=tmp_path / "state", webhook_secret=SECRET)
    pipeline = Pipeline(settings, Resource({}))
    app = build_admin_app(pipeline.readiness, pipeline.metrics_text, pipeline.liveness)
    try:
        with UvicornThread(app) as server, httpx.Client(timeout=5) as client:
            assert client.get(f"{server.url}/healthz").status_code == 200  # just started
            pipeline.webhooks.heard_ns = time.time_ns() - WEBHOOK_SILENT_NS - 1_000_000_000
            silent = client.get(f"{server.url}/healthz")
            assert silent.status_code == 503
            assert "the webhook process has not reported for 10s" in silent.json()["reason"]
            pipeline.take('h {"inbox_error": null, "stopping": false}')
            assert client.get(f"{server.url}/healthz").status_code == 200
            # a drain after "stop" hears nothing more from the webhook side: still alive
            pipeline.webhooks.heard_ns = time.time_ns() - WEBHOOK_SILENT_NS - 1_000_000_000
            pipeline.take("stop")
            pipeline.stopping = True
            assert client.get(f"{server.url}/healthz").status_code == 200
    finally:
        pipeline.close()


def polled(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate()`` came to hold within ``timeout`` s, looking every 20 ms."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def test_an_export_acknowledged_while_state_db_is_locked_is_not_sent_again(
    started: Started, tmp_path: Path
) -> None:
    """The backend acknowledges an export while another connection holds state.db's write lock
    (as the processor does through a batch); ``kill -9``; restart: nothing is sent twice.
    Before, the sender's delete waited for the lock, and the restart re-sent the export."""
    deliveries = sample_deliveries()
    one_call = [d for d in deliveries if d.call_id == deliveries[0].call_id]
    expected = expected_span_ids(d.event for d in one_call)
    state = tmp_path / "state"
    with HttpOtlpReceiver() as receiver:
        env = {**receiver.env(), "OTEL_METRIC_EXPORT_INTERVAL": "60000"}  # no metrics writes
        daemon = started.start(env)
        assert receiver.wait_until(lambda: any(r.path == "/v1/traces" for r in receiver.requests))
        # every export fails (each retry 1.5 s later) until the whole call is spooled: a window
        # of one retry was too short for the pipeline on a loaded machine, and its retry then
        # delivered (and deleted) the first rows before the rest were spooled
        receiver.fail_next(1000, status=503, retry_after_s=1.5, path="/v1/traces")
        Poster(daemon.webhook_url, SECRET, threads=1).post_all(one_call)
        assert receiver.wait_until(lambda: any(r.answer == 503 for r in receiver.requests))

        def spool() -> tuple[int, int]:
            with contextlib.closing(sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)) as c:
                items, attempts = c.execute(
                    "SELECT COALESCE(SUM(items), 0), MAX(attempts) FROM spool"
                ).fetchone()
            return int(items), int(attempts or 0)

        # the spool is polled: the receiver's wait_until looks again only when a request comes
        assert polled(lambda: spool()[0] >= len(expected), 20.0), daemon.stderr
        receiver.clear_answers()  # the next retry is acknowledged
        failed = sum(r.answer == 503 for r in receiver.requests)
        # the sender records each 503 (attempts + 1) in state.db: the lock must come after the
        # last of those writes, or the sender waits for it instead of sending again
        assert polled(lambda: spool()[1] >= failed, 5.0)
        sent_before_lock = len(receiver.requests)
        holder = sqlite3.connect(state / "state.db", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            assert receiver.wait_until(lambda: expected <= receiver.span_ids(), 5), daemon.stderr
            # the acknowledged export left while the lock was held (not before it was taken)
            assert any(
                r.answer == 200 and r.path == "/v1/traces" for r in receiver.requests[sent_before_lock:]
            )
            time.sleep(0.3)  # the acknowledgement's record, if it does not wait for the lock
            assert daemon.kill() == -9
        finally:
            holder.close()
        again = started.start(env, daemon.listen_port, daemon.admin_port)
        time.sleep(0.5)
        again.terminate()
        assert again.wait(20) == 0, again.stderr
        counts = Counter(span.span_id.hex() for span in receiver.spans())
    assert set(counts) == expected
    assert {sid: n for sid, n in counts.items() if n > 1} == {}, "acknowledged spans were sent again"


def test_a_pipeline_whose_parent_is_already_gone_exits_at_once() -> None:
    """The parent may die before the child's prctl: the child then checks that its parent is
    still the process that started it."""
    script = (
        "import sys\nfrom otelbridge.pipeline import die_with_parent\n"
        "die_with_parent(int(sys.argv[1]))\nprint('ran')"
    )

    def run(parent: int) -> str:
        argv = [sys.executable, "-c", script, str(parent)]
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run(os.getpid()) == "ran"  # started by this process: it carries on
    assert run(os.getpid() + 1_000_000) == ""  # another parent than the one that started it


_WATCH_DUMPABLE = """
import ctypes, os, resource, sys, threading, time
out = sys.argv[1]
def watch():
    libc = ctypes.CDLL(None)
    while True:
        text = f"{libc.prctl(3, 0, 0, 0, 0)} {resource.getrlimit(resource.RLIMIT_CORE)[1]}"  # PR_GET_DUMPABLE
        with open(out + ".tmp", "w") as f:
            f.write(text)
        os.replace(out + ".tmp", out)
        time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
from otelbridge.cli import main
sys.exit(main(["serve"]))
"""


def _core_limit(pid: int) -> str:
    (line,) = [x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max core")]
    return " ".join(line.split()[4:6])  # soft, hard


def test_serve_makes_no_core_dumps(started: Started, tmp_path: Path) -> None:
    """A core file would hold the webhook secret, the API key and the OTLP headers."""
    listen, admin = free_port(), free_port()
    daemon = ServeProcess(
        tmp_path,
        started.env(
            listen,
            admin,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),  # this tree's otelbridge
            },
        ),
        listen_port=listen,
        admin_port=admin,
    )
    watched = tmp_path / "dumpable"
    daemon.argv = [sys.executable, "-c", _WATCH_DUMPABLE, str(watched)]
    started.processes.append(daemon)
    daemon.start().wait_ready()
    assert _core_limit(daemon.pid) == "0 0"
    assert _core_limit(_pipeline_pid(daemon)) == "0 0"  # inherited across fork and exec
    deadline = time.monotonic() + 5
    while not watched.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watched.read_text() == "0 0"  # PR_GET_DUMPABLE, hard RLIMIT_CORE of the daemon itself
